package caddymodule

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/smart-imaging/smart_imaging/internal/delay"
)

// holdBack answers 503 with Retry-After to searches and WADO-RS retrieves
// while the route's delay holds them (issue 18 item 3). It reports whether
// it answered.
func (h *Handler) holdBack(w http.ResponseWriter, r *http.Request, path string) (bool, error) {
	if h.gate == nil {
		return false, nil
	}
	var left time.Duration
	what := ""
	switch {
	case path == "/fhir/ImagingStudy" || path == "/fhir/ImagingStudy/_search":
		left, what = h.gate.Lookup(time.Now()), "searches"
	case strings.HasPrefix(path, "/wado/"):
		left, what = h.gate.Retrieve(time.Now()), "retrieves"
	}
	if left == 0 {
		return false, nil
	}
	secs := strconv.Itoa(int(left / time.Second))
	return true, h.fail(w, r, &problem{Status: http.StatusServiceUnavailable, Code: "transient", RetryAfter: left,
		Message: "the image archive is not ready for " + what + " yet (this route's delay): retry after " + secs + " s"})
}

// unmarshalDelay reads
//
//	delay {
//		lookup_until <RFC 3339 instant | duration after start>
//		retrieve_until <RFC 3339 instant | duration after start>
//	}
func unmarshalDelay(d *caddyfile.Dispenser) (*delay.Config, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	c := &delay.Config{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var dst *string
		switch d.Val() {
		case "lookup_until":
			dst = &c.LookupUntil
		case "retrieve_until":
			dst = &c.RetrieveUntil
		default:
			return nil, d.Errf("unrecognized delay option '%s' (known: lookup_until, retrieve_until)", d.Val())
		}
		opt := d.Val()
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		*dst = d.Val()
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		if _, err := delay.ParseUntil(*dst, time.Now()); err != nil {
			return nil, d.Errf("delay %s: %v", opt, err)
		}
	}
	if c.LookupUntil == "" && c.RetrieveUntil == "" {
		return nil, d.Err("delay needs lookup_until or retrieve_until")
	}
	return c, nil
}

// provisionDelay builds the route's gate; durations count from now.
func (h *Handler) provisionDelay() error {
	if h.Delay == nil {
		return nil
	}
	g, err := delay.New(*h.Delay, time.Now())
	if err != nil {
		return fmt.Errorf("delay: %w", err)
	}
	h.gate = g
	return nil
}
