package caddymodule

import (
	"context"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/metacache"
)

// MetadataCacheConfig turns on the route's metadata cache
// (imagesource/metacache): WADO-RS metadata and study searches kept in
// memory, served only after the request passed every check.
type MetadataCacheConfig struct {
	// Size bounds the bytes held. Default 256MiB.
	Size int64 `json:"size,omitempty"`
	// TTL is how long an entry is served before the source is asked again
	// (a revalidation for metadata). Default 30s.
	TTL caddy.Duration `json:"ttl,omitempty"`
}

// unmarshalMetadataCache reads
//
//	metadata_cache {
//		size <bytes, e.g. 256MiB>
//		ttl <duration>
//	}
//
// An empty block (or none) takes the defaults.
func unmarshalMetadataCache(d *caddyfile.Dispenser) (*MetadataCacheConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	c := &MetadataCacheConfig{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt != "size" && opt != "ttl" {
			return nil, d.Errf("unrecognized metadata_cache option '%s' (known: size, ttl)", opt)
		}
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		v := d.Val()
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		switch opt {
		case "size":
			n, err := humanize.ParseBytes(v)
			if err != nil || n < metacache.MinSize || n > 1<<40 {
				return nil, d.Errf("metadata_cache size: want a size from 1MiB to 1TiB such as 256MiB, got %q", v)
			}
			c.Size = int64(n)
		case "ttl":
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return nil, d.Errf("metadata_cache ttl: want a positive duration such as 30s, got %q", v)
			}
			c.TTL = caddy.Duration(dur)
		}
	}
	return c, nil
}

// provisionMetadataCache puts the cache in front of h.source when the
// route's config asks for it. It runs after the source is loaded; the
// handler's checks all stay in front of it.
func (h *Handler) provisionMetadataCache() error {
	if h.MetadataCache == nil {
		return nil
	}
	c, err := metacache.New(h.source, metacache.Config{Size: h.MetadataCache.Size, TTL: time.Duration(h.MetadataCache.TTL)})
	if err != nil {
		return err
	}
	h.source = c
	h.metaCache = c
	liveCaches.add(h.cacheLabel(), c)
	return nil
}

// closeMetadataCache releases the cache's memory (Cleanup).
func (h *Handler) closeMetadataCache() {
	if h.metaCache != nil {
		liveCaches.remove(h.metaCache)
		_ = h.metaCache.Close()
	}
}

// cacheLabel is the route label of the cache's metrics.
func (h *Handler) cacheLabel() string {
	switch {
	case h.metricsRoute != "":
		return h.metricsRoute
	case h.RouteID != "":
		return h.RouteID
	case h.BaseURL != "":
		return h.BaseURL
	}
	return "default"
}

// StudyVersion lets the metadata cache revalidate with one QIDO-RS study
// query (metacache.Versioner).
func (m *DICOMwebImages) StudyVersion(ctx context.Context, studyUID string) (string, error) {
	return m.src.StudyVersion(ctx, studyUID)
}

// StudyVersion answers from the folder's index (metacache.Versioner).
func (f *FolderImages) StudyVersion(ctx context.Context, studyUID string) (string, error) {
	return f.src.StudyVersion(ctx, studyUID)
}

// StudyVersion asks the PACS with one study C-FIND (metacache.Versioner).
func (m *DIMSEImages) StudyVersion(ctx context.Context, studyUID string) (string, error) {
	return m.src.StudyVersion(ctx, studyUID)
}

// cacheRegistry holds the provisioned caches for the metrics collector.
type cacheRegistry struct {
	mu     sync.Mutex
	caches map[*metacache.Source]string
}

var liveCaches = &cacheRegistry{caches: map[*metacache.Source]string{}}

func (r *cacheRegistry) add(label string, c *metacache.Source) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.caches[c] = label
}

func (r *cacheRegistry) remove(c *metacache.Source) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.caches, c)
}

// The metadata cache's metrics, by route. A config reload makes new caches:
// their counters start again from zero.
var (
	descCacheLookups = prometheus.NewDesc("caddy_smart_imaging_metadata_cache_lookups_total",
		"Metadata cache lookups by result: hit, miss, revalidated (a stale entry the source confirmed).",
		[]string{"route", "result"}, nil)
	descCacheBytes = prometheus.NewDesc("caddy_smart_imaging_metadata_cache_bytes",
		"Bytes the metadata cache holds.", []string{"route"}, nil)
)

// Describe implements prometheus.Collector.
func (r *cacheRegistry) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCacheLookups
	ch <- descCacheBytes
}

// Collect implements prometheus.Collector: the caches of one route label
// are summed.
func (r *cacheRegistry) Collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	sums := map[string]*metacache.Stats{}
	for c, label := range r.caches {
		st := c.Stats()
		s := sums[label]
		if s == nil {
			s = &metacache.Stats{}
			sums[label] = s
		}
		s.Hits += st.Hits
		s.Misses += st.Misses
		s.Revalidations += st.Revalidations
		s.Bytes += st.Bytes
	}
	r.mu.Unlock()
	for label, s := range sums {
		ch <- prometheus.MustNewConstMetric(descCacheLookups, prometheus.CounterValue, float64(s.Hits), label, "hit")
		ch <- prometheus.MustNewConstMetric(descCacheLookups, prometheus.CounterValue, float64(s.Misses), label, "miss")
		ch <- prometheus.MustNewConstMetric(descCacheLookups, prometheus.CounterValue, float64(s.Revalidations), label, "revalidated")
		ch <- prometheus.MustNewConstMetric(descCacheBytes, prometheus.GaugeValue, float64(s.Bytes), label)
	}
}

// Interface guards
var (
	_ prometheus.Collector = (*cacheRegistry)(nil)
	_ metacache.Versioner  = (*DICOMwebImages)(nil)
	_ metacache.Versioner  = (*FolderImages)(nil)
	_ metacache.Versioner  = (*DIMSEImages)(nil)
	_ imagesource.Source   = (*metacache.Source)(nil)
)
