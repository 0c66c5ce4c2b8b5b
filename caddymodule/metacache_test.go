package caddymodule

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestCaddyfileMetadataCache(t *testing.T) {
	parse := func(body string) (Handler, error) {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("smart_imaging {\n" + body + "\n}"))
		return h, err
	}
	h, err := parse("metadata_cache {\n size 64MiB\n ttl 10s\n}")
	if err != nil || h.MetadataCache == nil || h.MetadataCache.Size != 64<<20 || h.MetadataCache.TTL != caddy.Duration(10*time.Second) {
		t.Fatalf("%+v, %v", h.MetadataCache, err)
	}
	if h, err := parse("metadata_cache"); err != nil || h.MetadataCache == nil || *h.MetadataCache != (MetadataCacheConfig{}) {
		t.Fatalf("a bare metadata_cache (defaults): %+v, %v", h.MetadataCache, err)
	}
	h, err = parse("dynamic_config {\n allow_hosts pacs:8042\n metadata_cache {\n ttl 5s\n }\n}")
	if err != nil || h.Dynamic.MetadataCache == nil || h.MetadataCache != nil {
		t.Fatalf("dynamic_config metadata_cache: %+v, %v", h.Dynamic, err)
	}
	for bad, says := range map[string]string{
		"metadata_cache {\n size 10KiB\n}":    "size",
		"metadata_cache {\n size lots\n}":     "size",
		"metadata_cache {\n ttl 0s\n}":        "ttl",
		"metadata_cache {\n ttl -1s\n}":       "ttl",
		"metadata_cache {\n ttl\n}":           "argument",
		"metadata_cache {\n ttl 1s 2s\n}":     "argument",
		"metadata_cache {\n max_entries 5\n}": "known: size, ttl",
		"metadata_cache on":                   "argument",
		"metadata_cache\nmetadata_cache":      "already set",
	} {
		if _, err := parse(bad); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%q: error %v, want one that says %q", bad, err, says)
		}
	}
}
