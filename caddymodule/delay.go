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
	if err := delaySubdirectives(c).parseBlock(d, "delay"); err != nil {
		return nil, err
	}
	if c.LookupUntil == "" && c.RetrieveUntil == "" {
		return nil, d.Err("delay needs lookup_until or retrieve_until")
	}
	return c, nil
}

// delaySubdirectives is the table of the delay block's options.
func delaySubdirectives(c *delay.Config) subdirectives {
	return subdirectives{
		{"lookup_until", until(&c.LookupUntil)},
		{"retrieve_until", until(&c.RetrieveUntil)},
	}
}

// until reads an instant or a duration after start into dst.
func until(dst *string) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		opt := d.Val()
		if err := oneArg(dst)(d); err != nil {
			return err
		}
		if _, err := delay.ParseUntil(*dst, time.Now()); err != nil {
			return d.Errf("delay %s: %v", opt, err)
		}
		return nil
	}
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
