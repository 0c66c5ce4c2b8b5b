package caddymodule

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestDIMSEImagesCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`dimse pacs.internal:104 {
		called_ae PACS
		calling_ae SMART-IMAGING
		retrieve c-move
		move_destination SMART-IMAGING-RX
		listen :11112
		cache_dir /var/cache/smart-imaging
		cache_size 20GiB
		cache_ttl 30m
		timeout 10s
		lookup all-studies
	}`)
	var m DIMSEImages
	if err := m.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if m.Addr != "pacs.internal:104" || m.CalledAE != "PACS" || m.CallingAE != "SMART-IMAGING" || m.Config.Retrieve != "c-move" ||
		m.MoveDestination != "SMART-IMAGING-RX" || m.Listen != ":11112" || m.CacheDir != "/var/cache/smart-imaging" ||
		m.CacheSize != 20<<30 || time.Duration(m.CacheTTL) != 30*time.Minute || time.Duration(m.Timeout) != 10*time.Second ||
		m.Lookup != "all-studies" {
		t.Errorf("parsed %+v", m)
	}
	for bad, want := range map[string]string{
		`dimse`:                       "host:port",
		`dimse a:104 extra`:           "",
		`dimse a:104 { called_ae P }`: "calling_ae",
		`dimse a:104 { called_ae P; calling_ae G; retrieve c-find }`: "c-get or c-move",
		`dimse a:104 { called_ae P; calling_ae G; cache_size lots }`: "cache_size",
		`dimse a:104 { called_ae P; calling_ae G; cache_ttl -1s }`:   "cache_ttl",
		`dimse a:104 { called_ae P; calling_ae G; no_such 1 }`:       "known: called_ae",
		`dimse a:104 { called_ae }`:                                  "",
	} {
		var m DIMSEImages
		err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(strings.NewReplacer(";", "\n", " }", "\n}").Replace(bad)))
		if err == nil {
			t.Errorf("accepted %q", bad)
		} else if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want it to say %q", bad, err, want)
		}
	}
}
