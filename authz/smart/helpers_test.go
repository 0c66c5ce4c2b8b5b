package smart

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

const (
	routeBase = "https://imaging.example.org/ehr/fhir"
	mrnSystem = "http://hospital.example.org/mrn"
	gatewayID = "imaging-gateway"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	t      *testing.T
	ehr    *testehr.EHR
	a      *Authorizer
	clock  *fakeClock
	key    jwk.Key // the gateway's private key
	logs   *observer.ObservedLogs
	mu     sync.Mutex
	tokens []string // every token issued, none of which may be logged
}

// setup starts a test EHR with the gateway registered (private_key_jwt,
// RS384) and patient 123 (MRN-123 in mrnSystem, type MR), and builds an
// introspection Authorizer; mutate adjusts the Config first.
func setup(t *testing.T, mutate func(*Config, *testehr.EHR)) *fixture {
	t.Helper()
	ehr := testehr.New(t)
	key := testehr.GenerateKey(t, jwa.RS384, "gw-1")
	ehr.RegisterClient(testehr.Client{ID: gatewayID, Secret: "s3cret&/=", Keys: testehr.PublicSet(t, key)})
	ehr.AddPatient("123", testehr.Identifier{System: mrnSystem, Value: "MRN-123", TypeCode: "MR"})
	keyJSON, err := json.Marshal(key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		FHIRBaseURL: ehr.FHIRBase(),
		ClientID:    gatewayID,
		PrivateKey:  string(keyJSON),
		Audience:    []string{routeBase},
	}
	if mutate != nil {
		mutate(&cfg, ehr)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	a, err := New(t.Context(), cfg, nil, zap.New(core))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	clock := &fakeClock{t: time.Now()}
	a.now = clock.Now
	f := &fixture{t: t, ehr: ehr, a: a, clock: clock, key: key, logs: logs}
	t.Cleanup(f.checkLogs)
	return f
}

// issue mints a token at the test EHR, remembering it for the log check.
func (f *fixture) issue(spec testehr.TokenSpec) string {
	tok := f.ehr.IssueToken(spec)
	f.remember(tok)
	return tok
}

func (f *fixture) remember(tok string) {
	f.mu.Lock()
	f.tokens = append(f.tokens, tok)
	f.mu.Unlock()
}

// checkLogs fails the test if any log line carries an access token.
func (f *fixture) checkLogs() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		for _, tok := range f.tokens {
			if len(tok) >= 8 && strings.Contains(line, tok) {
				f.t.Errorf("a log line carries an access token: %q", e.Message)
			}
		}
	}
}

func request(token string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "https://imaging.example.org/ehr/fhir/ImagingStudy?patient=123", nil)
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	return r
}

func (f *fixture) authorize(token string) (*authz.Principal, *authz.Error) {
	f.t.Helper()
	p, err := f.a.Authorize(request(token))
	return p, asErr(f.t, err)
}

// allow authorizes token and fails the test on a refusal.
func (f *fixture) allow(token string) *authz.Principal {
	f.t.Helper()
	p, err := f.authorize(token)
	return mustAllow(f.t, p, err)
}

func asErr(t *testing.T, err error) *authz.Error {
	t.Helper()
	if err == nil {
		return nil
	}
	var ae *authz.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error is %T, not *authz.Error: %v", err, err)
	}
	return ae
}

func mustAllow(t *testing.T, p *authz.Principal, err *authz.Error) *authz.Principal {
	t.Helper()
	if err != nil {
		t.Fatalf("refused with %d: %v", err.Status, err)
	}
	if p == nil {
		t.Fatal("nil principal without an error")
	}
	return p
}

func mustRefuse(t *testing.T, err *authz.Error, status int, challenge string) {
	t.Helper()
	if err == nil {
		t.Fatalf("allowed, want %d", status)
	}
	if err.Status != status {
		t.Fatalf("status %d (%v), want %d", err.Status, err, status)
	}
	if challenge != "" && !strings.Contains(err.Challenge, challenge) {
		t.Fatalf("WWW-Authenticate %q lacks %q", err.Challenge, challenge)
	}
	if (status == 503 || status == 504) && err.RetryAfter <= 0 {
		t.Fatalf("status %d without Retry-After", status)
	}
}

func (f *fixture) calls() map[testehr.Endpoint]int64 {
	m := map[testehr.Endpoint]int64{}
	for _, ep := range []testehr.Endpoint{testehr.Discovery, testehr.Token, testehr.Introspect, testehr.JWKS, testehr.Patient} {
		m[ep] = f.ehr.Calls(ep)
	}
	return m
}

func (f *fixture) wantCalls(ep testehr.Endpoint, n int64) {
	f.t.Helper()
	if got := f.ehr.Calls(ep); got != n {
		f.t.Fatalf("%s endpoint called %d times, want %d", ep, got, n)
	}
}

// jwtMode configures local JWT validation against the test EHR's JWKS.
func jwtMode(c *Config, e *testehr.EHR) {
	c.JWKSURL = e.JWKSURL()
}
