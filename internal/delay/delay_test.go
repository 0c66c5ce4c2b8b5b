package delay

import (
	"errors"
	"testing"
	"time"
)

func TestGate(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	g, err := New(Config{LookupUntil: "30s", RetrieveUntil: "2026-01-01T00:01:00Z"}, start)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		at               time.Duration
		lookup, retrieve time.Duration
	}{
		{0, 30 * time.Second, 60 * time.Second},
		// Seconds left are rounded up: a client that waits Retry-After
		// seconds is never early.
		{29*time.Second + time.Millisecond, time.Second, 31 * time.Second},
		{29500 * time.Millisecond, time.Second, 31 * time.Second},
		{30 * time.Second, 0, 30 * time.Second},
		{61 * time.Second, 0, 0},
	} {
		now := start.Add(c.at)
		if got := g.Lookup(now); got != c.lookup {
			t.Errorf("at +%s: Lookup = %s, want %s", c.at, got, c.lookup)
		}
		if got := g.Retrieve(now); got != c.retrieve {
			t.Errorf("at +%s: Retrieve = %s, want %s", c.at, got, c.retrieve)
		}
	}
	var none *Gate
	if none.Lookup(start) != 0 || none.Retrieve(start) != 0 {
		t.Error("a nil gate holds requests back")
	}
}

func TestParseUntilRefusesGarbage(t *testing.T) {
	for _, s := range []string{"tomorrow", "-5s", "2123-01-01", "4833623642"} {
		if _, err := ParseUntil(s, time.Now()); !errors.Is(err, ErrBadInstant) {
			t.Errorf("ParseUntil(%q) = %v, want ErrBadInstant", s, err)
		}
	}
}
