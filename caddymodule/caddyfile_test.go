package caddymodule

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestCaddyfileMaxRenderSize(t *testing.T) {
	parse := func(body string) (Handler, error) {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("smart_imaging {\n" + body + "\n}"))
		return h, err
	}
	if h, err := parse("max_render_size 128"); err != nil || h.Validate() != nil {
		t.Errorf("max_render_size 128 (the smallest): %v", err)
	}
	h, err := parse("max_render_size 1024")
	if err != nil || h.MaxRenderSize != 1024 {
		t.Fatalf("max_render_size 1024: %+v, %v", h.MaxRenderSize, err)
	}
	if h.maxRenderSize() != 1024 {
		t.Errorf("maxRenderSize() = %d, want 1024", h.maxRenderSize())
	}
	if (&Handler{}).maxRenderSize() != 2048 {
		t.Errorf("the default bound is %d, want 2048", (&Handler{}).maxRenderSize())
	}
	for _, bad := range []string{"max_render_size", "max_render_size 0", "max_render_size 127", "max_render_size -5", "max_render_size 65536",
		"max_render_size 2k", "max_render_size 512 512"} {
		if _, err := parse(bad); err == nil {
			t.Errorf("%q accepted", bad)
		} else if !strings.Contains(err.Error(), "max_render_size") && !strings.Contains(err.Error(), "argument") {
			t.Errorf("%q: error %q does not say what is wrong", bad, err)
		}
	}
	for _, n := range []int{-1, 64, 65536} {
		if err := (&Handler{MaxRenderSize: n}).Validate(); err == nil {
			t.Errorf("Validate accepted max_render_size %d", n)
		}
	}
}

func TestCaddyfileMockMRNSystem(t *testing.T) {
	var m MockAuthz
	err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser("mock {\n\tpatient p1 mrn M1 M2\n\tmrn_system urn:example:mrn\n}"))
	if err != nil || m.MRNSystem != "urn:example:mrn" || len(m.MRN) != 2 {
		t.Fatalf("parsed %+v, %v", m.Config, err)
	}
	for _, bad := range []string{"mock {\n\tmrn_system\n}", "mock {\n\tmrn_system a b\n}"} {
		var m MockAuthz
		if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
