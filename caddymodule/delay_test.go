package caddymodule

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestCaddyfileDelay(t *testing.T) {
	parse := func(body string) (Handler, error) {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("smart_imaging {\n" + body + "\n}"))
		return h, err
	}
	h, err := parse("delay {\nlookup_until 2123-01-01T00:00:00Z\nretrieve_until 30s\n}")
	if err != nil || h.Delay == nil || h.Delay.LookupUntil != "2123-01-01T00:00:00Z" || h.Delay.RetrieveUntil != "30s" {
		t.Fatalf("delay: %+v, %v", h.Delay, err)
	}
	if err := h.provisionDelay(); err != nil || h.gate == nil {
		t.Fatalf("provisionDelay: %v", err)
	}
	for bad, says := range map[string]string{
		"delay {\nlookup_until tomorrow\n}":       "lookup_until",
		"delay {\nlookup_until\n}":                "argument",
		"delay {\nsearch_until 30s\n}":            "known: lookup_until, retrieve_until",
		"delay {\n}":                              "lookup_until or retrieve_until",
		"delay 30s":                               "argument",
		"delay {\nretrieve_until 1s 2s\n}":        "argument",
		"delay {\nlookup_until 1s\n}\ndelay {\n}": "already set",
	} {
		if _, err := parse(bad); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%q: error %v, want one saying %q", bad, err, says)
		}
	}
}
