package dwroot

import (
	"context"
	"sync"
	"time"
)

// Owners caches which studies a caller was found to own, so WADO-RS under
// the root costs one ownership lookup per study and token, not one per
// frame. Only positive answers are kept: a study that was not found is
// looked up again next time (it may have arrived since).
type Owners struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	entries map[ownerKey]time.Time
	now     func() time.Time
}

type ownerKey struct{ caller, study string }

// NewOwners returns a cache that keeps an answer for ttl (and never past
// the caller's token expiry) and at most max answers.
func NewOwners(ttl time.Duration, max int) *Owners {
	return &Owners{ttl: ttl, max: max, entries: map[ownerKey]time.Time{}, now: time.Now}
}

// Lookup decides whether the study is the caller's.
type Lookup func(ctx context.Context, studyUID string) (bool, error)

// Owns reports whether caller (a key naming the access token and its
// patient, never the token itself) owns the study, asking lookup on a
// miss. expires is the token's expiry (zero: unknown).
func (o *Owners) Owns(ctx context.Context, caller, studyUID string, expires time.Time, lookup Lookup) (bool, error) {
	k := ownerKey{caller, studyUID}
	now := o.now()
	o.mu.Lock()
	exp, hit := o.entries[k]
	o.mu.Unlock()
	if hit && now.Before(exp) {
		return true, nil
	}
	owned, err := lookup(ctx, studyUID)
	if err != nil || !owned {
		return false, err
	}
	until := now.Add(o.ttl)
	if !expires.IsZero() && expires.Before(until) {
		until = expires
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.entries) >= o.max {
		for key, e := range o.entries {
			if !now.Before(e) {
				delete(o.entries, key)
			}
		}
		if len(o.entries) >= o.max {
			// Still full: start over rather than grow.
			clear(o.entries)
		}
	}
	o.entries[k] = until
	return true, nil
}
