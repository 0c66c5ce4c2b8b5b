package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestCaddyfileDICOMwebRoot(t *testing.T) {
	parse := func(body string) (Handler, error) {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("smart_imaging {\n" + body + "\n}"))
		return h, err
	}
	h, err := parse("")
	if err != nil || h.DICOMwebRoot {
		t.Fatalf("off unless configured: %v, %v", h.DICOMwebRoot, err)
	}
	if b, _ := json.Marshal(h); strings.Contains(string(b), "dicomweb_root") {
		t.Errorf("JSON of a route without the root names it: %s", b)
	}
	h, err = parse("dicomweb_root")
	if err != nil || !h.DICOMwebRoot {
		t.Fatalf("dicomweb_root: %v, %v", h.DICOMwebRoot, err)
	}
	if _, err := parse("dicomweb_root on"); err == nil {
		t.Error("dicomweb_root takes no argument")
	}
	if _, err := parse("dicomweb_rot"); err == nil || !strings.Contains(err.Error(), "dicomweb_root") {
		t.Errorf("a misspelt option's error lists dicomweb_root among the known ones: %v", err)
	}
}
