package smart

import (
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// An authorization server that keeps saying active after exp is not
// believed, on the first request or on a cached decision.
func TestExpiredButActiveRefused(t *testing.T) {
	f := setup(t, nil)
	tok := f.issue(testehr.TokenSpec{Patient: "123", Exp: time.Now().Add(-time.Minute), ActiveAfterExp: true})
	_, err := f.authorize(tok)
	mustRefuse(t, err, 401, `error="invalid_token"`)

	// Within the JWT leeway, a JWT past its exp is still refused.
	g := setup(t, jwtMode)
	jwt := g.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase},
		Exp: g.clock.Now().Add(-5 * time.Second)})
	_, err = g.authorize(jwt)
	mustRefuse(t, err, 401, `error="invalid_token"`)
}

// A cached principal is checked against its exp on every request: the
// clock passing exp refuses the token even when nothing was introspected
// again.
func TestCachedPrincipalExpires(t *testing.T) {
	f := setup(t, jwtMode)
	tok := f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase},
		Exp: f.clock.Now().Add(20 * time.Second)})
	f.allow(tok)
	f.clock.Advance(21 * time.Second)
	_, err := f.authorize(tok)
	mustRefuse(t, err, 401, `error="invalid_token"`)
}

// A token whose introspection has no exp lives cache_ttl, never forever:
// its principal says so (study tokens are bounded by it) and it is
// introspected again after.
func TestMissingExpBoundedByCacheTTL(t *testing.T) {
	ttl := caddy.Duration(time.Minute)
	f := setup(t, func(c *Config, _ *testehr.EHR) { c.CacheTTL = &ttl })
	tok := f.issue(testehr.TokenSpec{Patient: "123", OmitExp: true})
	p := f.allow(tok)
	if want := f.clock.Now().Add(time.Minute); !p.Expires.Equal(want) {
		t.Fatalf("Expires %v, want %v (cache_ttl from now)", p.Expires, want)
	}
	f.clock.Advance(time.Minute)
	f.ehr.Revoke(tok)
	_, err := f.authorize(tok)
	mustRefuse(t, err, 401, "")
	f.wantCalls(testehr.Introspect, 2)
}

// cache_ttl 0: every request is introspected, so a revocation takes
// effect on the next request; concurrent requests still share one call.
func TestCacheTTLZero(t *testing.T) {
	zero := caddy.Duration(0)
	f := setup(t, func(c *Config, _ *testehr.EHR) { c.CacheTTL = &zero })
	tok := f.issue(testehr.TokenSpec{Patient: "123"})
	f.allow(tok)
	f.allow(tok)
	f.wantCalls(testehr.Introspect, 2)
	f.ehr.Revoke(tok)
	_, err := f.authorize(tok)
	mustRefuse(t, err, 401, `error="invalid_token"`)

	tok2 := f.issue(testehr.TokenSpec{Patient: "123"})
	before := f.ehr.Calls(testehr.Introspect)
	release := f.ehr.Stall(testehr.Introspect)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.a.Authorize(request(tok2))
			errs <- err
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.a.waiting.Load() < n {
		if time.Now().After(deadline) {
			release()
			t.Fatalf("only %d of %d requests waiting", f.a.waiting.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := f.ehr.Calls(testehr.Introspect) - before; got != 1 {
		t.Fatalf("%d concurrent requests made %d introspection calls, want 1", n, got)
	}
	// Nothing was cached: the next request asks again.
	f.allow(tok2)
	if got := f.ehr.Calls(testehr.Introspect) - before; got != 2 {
		t.Fatalf("introspection calls %d, want 2", got)
	}
}
