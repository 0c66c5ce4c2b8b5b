package caddymodule

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/metacache"
	"github.com/smart-imaging/smart_imaging/pacskey"
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

func TestMetadataCacheMetrics(t *testing.T) {
	c, err := metacache.New(stubSource{}, metacache.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"P1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"P1"}}); err != nil {
		t.Fatal(err)
	}
	reg := &cacheRegistry{caches: map[*metacache.Source]string{}}
	reg.add("ehr", c)
	pr := prometheus.NewPedanticRegistry()
	pr.MustRegister(reg)
	families, err := pr.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					name += "/" + l.GetValue()
				}
			}
			got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	if got["caddy_smart_imaging_metadata_cache_lookups_total/hit"] != 1 || got["caddy_smart_imaging_metadata_cache_lookups_total/miss"] != 1 ||
		got["caddy_smart_imaging_metadata_cache_bytes"] <= 0 {
		t.Fatalf("metrics %v", got)
	}
	reg.remove(c)
	if families, _ := pr.Gather(); len(families) != 0 {
		t.Fatalf("a released cache still reports: %v", families)
	}
}

// stubSource finds one study for any patient key.
type stubSource struct{}

func (stubSource) FindStudies(_ context.Context, q imagesource.Query) ([]imagesource.Study, error) {
	return []imagesource.Study{{Attributes: dicomjson.Dataset{dicomjson.TagStudyInstanceUID: {VR: "UI", Value: []any{"1.2.3"}}}}}, nil
}

func (stubSource) Retrieve(http.ResponseWriter, *http.Request, imagesource.Retrieval) error {
	return imagesource.Errorf(http.StatusNotFound, "not-found", "nothing here")
}
