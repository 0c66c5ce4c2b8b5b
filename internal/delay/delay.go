// Package delay holds an archive back on purpose: searches and WADO-RS
// retrieves are answered "503 Service Unavailable, Retry-After: n" until a
// configured instant, so that clients can be tested against a slow or
// warming-up archive (the reference server's images.delay knob).
package delay

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrBadInstant: an until value is neither RFC 3339 nor a duration.
var ErrBadInstant = errors.New("want an RFC 3339 instant (2123-01-01T00:00:00Z) or a duration after start (30s)")

// Config is the delay of a route: lookup_until holds searches back,
// retrieve_until WADO-RS retrieves. Each is an RFC 3339 instant or a
// duration counted from the moment the route starts.
type Config struct {
	LookupUntil   string `json:"lookup_until,omitempty"`
	RetrieveUntil string `json:"retrieve_until,omitempty"`
}

// Gate answers whether a search or a retrieve must wait, and how long.
// It is immutable and safe for concurrent use.
type Gate struct {
	lookup, retrieve time.Time
}

// ParseUntil reads one until value: an RFC 3339 instant, or a duration
// after start.
func ParseUntil(s string, start time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return start.Add(d), nil
	}
	return time.Time{}, fmt.Errorf("%q: %w", s, ErrBadInstant)
}

// New checks c and returns its gate, durations counted from start.
func New(c Config, start time.Time) (*Gate, error) {
	l, err := ParseUntil(c.LookupUntil, start)
	if err != nil {
		return nil, fmt.Errorf("lookup_until %w", err)
	}
	r, err := ParseUntil(c.RetrieveUntil, start)
	if err != nil {
		return nil, fmt.Errorf("retrieve_until %w", err)
	}
	return &Gate{lookup: l, retrieve: r}, nil
}

// Lookup is how long searches must still wait at now, rounded up to whole
// seconds; 0 when they may run. A nil gate never waits.
func (g *Gate) Lookup(now time.Time) time.Duration {
	if g == nil {
		return 0
	}
	return left(g.lookup, now)
}

// Retrieve is how long retrieves must still wait at now, rounded up to
// whole seconds; 0 when they may run. A nil gate never waits.
func (g *Gate) Retrieve(now time.Time) time.Duration {
	if g == nil {
		return 0
	}
	return left(g.retrieve, now)
}

func left(until, now time.Time) time.Duration {
	if until.IsZero() || !now.Before(until) {
		return 0
	}
	d := until.Sub(now)
	return (d + time.Second - 1).Truncate(time.Second)
}
