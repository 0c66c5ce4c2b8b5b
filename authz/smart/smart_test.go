package smart

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

func TestNewDoesNoNetworkIO(t *testing.T) {
	for _, mode := range []string{ValidationIntrospection, ValidationJWT} {
		t.Run(mode, func(t *testing.T) {
			f := setup(t, func(c *Config, e *testehr.EHR) {
				c.Validation = mode
			})
			for ep, n := range f.calls() {
				if n != 0 {
					t.Errorf("New called the %s endpoint %d times", ep, n)
				}
			}
		})
	}
}

func TestMissingToken(t *testing.T) {
	f := setup(t, nil)
	_, err := f.authorize("")
	mustRefuse(t, err, 401, "Bearer")
	if strings.Contains(err.Challenge, "invalid_token") {
		t.Errorf("a request without a token should get a bare challenge, got %q", err.Challenge)
	}
	r := request("")
	r.Header.Set("Authorization", "Basic Zm9vOmJhcg==")
	_, e := f.a.Authorize(r)
	mustRefuse(t, asErr(t, e), 401, "Bearer")
	for ep, n := range f.calls() {
		if n != 0 {
			t.Errorf("%s endpoint called %d times for a request without a token", ep, n)
		}
	}
}

func TestIntrospectionValid(t *testing.T) {
	f := setup(t, nil)
	exp := time.Now().Add(30 * time.Minute).Truncate(time.Second)
	tok := f.issue(testehr.TokenSpec{Patient: "123", FHIRUser: "Practitioner/9", Exp: exp,
		Scope: "launch/patient patient/ImagingStudy.rs openid", Aud: []string{routeBase}})
	p := f.allow(tok)
	if p.Patient != "123" || p.PatientReference != f.ehr.FHIRBase()+"/Patient/123" {
		t.Errorf("patient %q reference %q", p.Patient, p.PatientReference)
	}
	if p.ClientID != "app" || p.User != "Practitioner/9" || !p.Expires.Equal(exp) {
		t.Errorf("client %q user %q expires %v (want %v)", p.ClientID, p.User, p.Expires, exp)
	}
	if p.TokenHash != authz.HashToken(tok) || p.Unrestricted {
		t.Errorf("token hash %q unrestricted %v", p.TokenHash, p.Unrestricted)
	}
	if !slices.Contains(p.Scopes, "patient/ImagingStudy.rs") {
		t.Errorf("scopes %v", p.Scopes)
	}
	f.wantCalls(testehr.Discovery, 1)
	f.wantCalls(testehr.Token, 1)
	f.wantCalls(testehr.Introspect, 1)
	f.wantCalls(testehr.JWKS, 0)
	// Mutating the returned principal must not change the cached one.
	p.Patient, p.Scopes[0] = "999", "patient/*.*"
	p2 := f.allow(tok)
	if p2.Patient != "123" || p2.Scopes[0] != "launch/patient" {
		t.Errorf("cached principal was changed through a returned copy: %+v", p2)
	}
}

func TestJWTValid(t *testing.T) {
	for _, alg := range []jwa.SignatureAlgorithm{jwa.RS256, jwa.ES256} {
		t.Run(alg.String(), func(t *testing.T) {
			f := setup(t, jwtMode)
			if f.a.Validation() != ValidationJWT {
				t.Fatalf("jwks_url set: validation %q, want jwt", f.a.Validation())
			}
			tok := f.issue(testehr.TokenSpec{Format: testehr.JWT, Alg: alg, Patient: "123",
				Aud: []string{routeBase}, FHIRUser: "Patient/123"})
			p := f.allow(tok)
			if p.Patient != "123" || p.ClientID != "app" || p.User != "Patient/123" || p.Expires.IsZero() {
				t.Errorf("principal %+v", p)
			}
			f.wantCalls(testehr.Introspect, 0)
			f.wantCalls(testehr.Token, 0)
			f.wantCalls(testehr.JWKS, 1)
			// A second token costs no JWKS fetch.
			tok2 := f.issue(testehr.TokenSpec{Format: testehr.JWT, Alg: alg, Patient: "123", Aud: []string{routeBase + "/"}})
			f.allow(tok2)
			f.wantCalls(testehr.JWKS, 1)
		})
	}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func claimsJSON(f *fixture, extra map[string]any) string {
	m := map[string]any{
		"iss": f.ehr.Issuer(), "aud": routeBase, "sub": "user-1", "patient": "123",
		"scope": "patient/ImagingStudy.rs", "client_id": "app",
		"exp": time.Now().Add(time.Hour).Unix(),
	}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func hmacToken(header, payload string, secret []byte) string {
	in := b64(header) + "." + b64(payload)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func TestJWTRefused(t *testing.T) {
	f := setup(t, jwtMode)
	pub := f.ehr.PublicJWKS()
	rsaPub, _ := pub.LookupKeyID("ehr-rs-1")
	var raw any
	if err := rsaPub.Raw(&raw); err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(raw)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	pubJWK, _ := json.Marshal(rsaPub)
	// A key the EHR does not publish, under a kid it does.
	forger := testehr.GenerateKey(t, jwa.RS256, "forger")
	_ = forger.Set(jwk.KeyIDKey, "ehr-rs-1")
	forged, err := jwt.Sign(mustBuild(t, f, nil), jwt.WithKey(jwa.RS256, forger))
	if err != nil {
		t.Fatal(err)
	}
	valid := f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase}})
	parts := strings.Split(valid, ".")
	tampered := parts[0] + "." + b64(claimsJSON(f, map[string]any{"patient": "456"})) + "." + parts[2]
	esParts := strings.Split(f.issue(testehr.TokenSpec{Format: testehr.JWT, Alg: jwa.ES256, Patient: "123", Aud: []string{routeBase}}), ".")

	cases := map[string]string{
		"expired": f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase},
			Exp: time.Now().Add(-2 * time.Minute)}),
		"not yet valid": f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase},
			Nbf: time.Now().Add(10 * time.Minute)}),
		"wrong audience": f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{"https://other.example.org/fhir"}}),
		"no audience":    f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123"}),
		"wrong issuer": f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase},
			Iss: "https://evil.example.org"}),
		"alg none":               b64(`{"alg":"none","typ":"JWT"}`) + "." + b64(claimsJSON(f, nil)) + ".",
		"alg none kid":           b64(`{"alg":"none","kid":"ehr-rs-1"}`) + "." + b64(claimsJSON(f, nil)) + ".",
		"HS256 with PEM":         hmacToken(`{"alg":"HS256","kid":"ehr-rs-1"}`, claimsJSON(f, nil), pubPEM),
		"HS256 with JWK":         hmacToken(`{"alg":"HS256","kid":"ehr-rs-1"}`, claimsJSON(f, nil), pubJWK),
		"HS256 without kid":      hmacToken(`{"alg":"HS256"}`, claimsJSON(f, nil), pubPEM),
		"unpublished key":        string(forged),
		"tampered payload":       tampered,
		"not a JWT":              "opaque-token-value",
		"garbage segments":       "a.b.c",
		"RS256 header on EC key": b64(`{"alg":"RS256","kid":"ehr-es-1"}`) + "." + esParts[1] + "." + esParts[2],
	}
	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			f.remember(tok)
			_, err := f.authorize(tok)
			mustRefuse(t, err, 401, `error="invalid_token"`)
		})
	}
	f.wantCalls(testehr.Introspect, 0)
}

func mustBuild(t *testing.T, f *fixture, extra map[string]any) jwt.Token {
	t.Helper()
	b := jwt.NewBuilder().Issuer(f.ehr.Issuer()).Audience([]string{routeBase}).Subject("u").
		Expiration(time.Now().Add(time.Hour)).Claim("patient", "123").Claim("scope", "patient/ImagingStudy.rs")
	for k, v := range extra {
		b = b.Claim(k, v)
	}
	tok, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestIntrospectionRefused(t *testing.T) {
	f := setup(t, func(c *Config, e *testehr.EHR) { c.Issuer = e.Issuer() })
	revoked := f.issue(testehr.TokenSpec{Patient: "123"})
	f.ehr.Revoke(revoked)
	cases := map[string]string{
		"unknown":        "never-issued-token",
		"revoked":        revoked,
		"expired":        f.issue(testehr.TokenSpec{Patient: "123", Exp: time.Now().Add(-time.Minute)}),
		"wrong audience": f.issue(testehr.TokenSpec{Patient: "123", Aud: []string{"https://other.example.org/fhir"}}),
		"wrong issuer":   f.issue(testehr.TokenSpec{Patient: "123", Iss: "https://evil.example.org"}),
		"control chars":  "abc\x01def",
	}
	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			f.remember(tok)
			_, err := f.authorize(tok)
			mustRefuse(t, err, 401, `error="invalid_token"`)
		})
	}
	// The audience matches with or without a trailing slash.
	ok := f.issue(testehr.TokenSpec{Patient: "123", Aud: []string{"https://x.example/fhir", routeBase + "/"}})
	f.allow(ok)
}

// requestFor is request(token) served by the route whose public FHIR base
// is routeFHIRBase, as the handler says through the context.
func requestFor(token, routeFHIRBase string) *http.Request {
	r := request(token)
	return r.WithContext(authz.WithRouteFHIRBase(r.Context(), routeFHIRBase))
}

// TestIntrospectionAudienceOfTheRoute: with no audience configured (no
// audience, no base_url), an introspected token whose aud names another
// server was accepted. The route's own FHIR base, derived by the handler
// from the request, is now what aud must name.
func TestIntrospectionAudienceOfTheRoute(t *testing.T) {
	f := setup(t, func(c *Config, _ *testehr.EHR) { c.Audience = nil })
	const otherRoute = "https://imaging.example.org/other/fhir"
	try := func(tok, routeFHIRBase string) (*authz.Principal, *authz.Error) {
		t.Helper()
		p, err := f.a.Authorize(requestFor(tok, routeFHIRBase))
		return p, asErr(t, err)
	}

	for name, aud := range map[string][]string{
		"another server":                     {"https://other.example.org/fhir"},
		"this host, another route":           {otherRoute},
		"this route without /fhir":           {"https://imaging.example.org/ehr"},
		"this route over http":               {"http://imaging.example.org/ehr/fhir"},
		"a prefix of this route's base":      {"https://imaging.example.org"},
		"this route's base with a suffix":    {routeBase + "x"},
		"several, none of them this route's": {"https://a.example.org/fhir", "https://b.example.org/fhir"},
	} {
		t.Run("refused: "+name, func(t *testing.T) {
			_, err := try(f.issue(testehr.TokenSpec{Patient: "123", Aud: aud}), routeBase)
			mustRefuse(t, err, 401, `error="invalid_token"`)
			if !strings.Contains(err.Message, "aud") {
				t.Errorf("message %q does not name the audience", err.Message)
			}
		})
	}
	for name, aud := range map[string][]string{
		"this route's FHIR base":      {routeBase},
		"with a trailing slash":       {routeBase + "/"},
		"among others":                {"https://other.example.org/fhir", routeBase},
		"no aud in the introspection": nil,
	} {
		t.Run("accepted: "+name, func(t *testing.T) {
			_, err := try(f.issue(testehr.TokenSpec{Patient: "123", Aud: aud}), routeBase)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}

	t.Run("a cached decision is re-checked against each request's route", func(t *testing.T) {
		tok := f.issue(testehr.TokenSpec{Patient: "123", Aud: []string{routeBase}})
		before := f.ehr.Calls(testehr.Introspect)
		if _, err := try(tok, routeBase); err != nil {
			t.Fatal(err)
		}
		_, err := try(tok, otherRoute)
		mustRefuse(t, err, 401, `error="invalid_token"`)
		if _, err := try(tok, routeBase); err != nil {
			t.Fatalf("refused on its own route after a refusal elsewhere: %v", err)
		}
		if n := f.ehr.Calls(testehr.Introspect) - before; n != 1 {
			t.Errorf("%d introspections, want 1 (the decision is cached, the audience checked per request)", n)
		}
	})

	t.Run("no route known: a token with aud is refused", func(t *testing.T) {
		_, err := f.authorize(f.issue(testehr.TokenSpec{Patient: "123", Aud: []string{routeBase}}))
		mustRefuse(t, err, 401, `error="invalid_token"`)
		f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	})
}

func TestIntrospectionConfiguredAudienceWins(t *testing.T) {
	// A configured audience (or base_url) is what aud must name, whatever
	// the request looks like.
	f := setup(t, nil)
	if _, err := f.a.Authorize(requestFor(f.issue(testehr.TokenSpec{Patient: "123", Aud: []string{routeBase}}), "http://localhost:9080/ehr/fhir")); err != nil {
		t.Errorf("token for the configured audience refused: %v", err)
	}
	_, err := f.a.Authorize(requestFor(f.issue(testehr.TokenSpec{Patient: "123", Aud: []string{"http://localhost:9080/ehr/fhir"}}), "http://localhost:9080/ehr/fhir"))
	mustRefuse(t, asErr(t, err), 401, `error="invalid_token"`)
}

func TestIntrospectionActiveButExpired(t *testing.T) {
	// An EHR that says active for a token whose exp has passed is not
	// believed.
	f := setup(t, nil)
	f.ehr.Garble(testehr.Introspect, 200, fmt.Sprintf(
		`{"active":true,"scope":"patient/ImagingStudy.rs","patient":"123","exp":%d}`, time.Now().Add(-time.Hour).Unix()))
	_, err := f.authorize("some-token")
	mustRefuse(t, err, 401, `error="invalid_token"`)
}

func TestScopes(t *testing.T) {
	f := setup(t, func(c *Config, _ *testehr.EHR) { c.AcceptScopes = []string{"patient/DiagnosticReport.read"} })
	cases := []struct {
		scope string
		ok    bool
	}{
		{"patient/ImagingStudy.rs", true},
		{"patient/ImagingStudy.read", true},
		{"launch/patient patient/*.rs", true},
		{"patient/*.read", true},
		{"patient/*.*", true},
		{"patient/ImagingStudy.cruds", true},
		{"patient/DiagnosticReport.read", true}, // accept_scopes
		{"user/ImagingStudy.read", false},
		{"system/ImagingStudy.rs", false},
		{"system/*.read", false},
		{"patient/Observation.read", false},
		{"patient/ImagingStudy.c", false},
		{"patient/ImagingStudy.r", false},
		{"patient/ImagingStudy.rs?category=x", false},
		{"launch/patient openid fhirUser", false},
		{"patient/DiagnosticReport.rs", false},
	}
	for _, c := range cases {
		t.Run(c.scope, func(t *testing.T) {
			tok := f.issue(testehr.TokenSpec{Patient: "123", Scope: c.scope})
			p, err := f.authorize(tok)
			if c.ok {
				mustAllow(t, p, err)
				return
			}
			mustRefuse(t, err, 403, `error="insufficient_scope"`)
		})
	}
}

func TestPatientContext(t *testing.T) {
	t.Run("missing patient is refused, not system access", func(t *testing.T) {
		f := setup(t, nil)
		for _, scope := range []string{"patient/ImagingStudy.rs", "system/*.read patient/*.read"} {
			tok := f.issue(testehr.TokenSpec{Patient: "123", OmitPatient: true, Scope: scope, FHIRUser: "Patient/123"})
			_, err := f.authorize(tok)
			mustRefuse(t, err, 403, "")
			if !strings.Contains(err.Message, "no patient") {
				t.Errorf("message %q", err.Message)
			}
		}
	})
	t.Run("malformed patient", func(t *testing.T) {
		f := setup(t, nil)
		for _, pat := range []string{"Observation/1", "12 3", "a/b", "https://other.example.org/fhir/Patient/123"} {
			_, err := f.authorize(f.issue(testehr.TokenSpec{Patient: pat}))
			mustRefuse(t, err, 403, "")
		}
	})
	t.Run("fhirUser", func(t *testing.T) {
		f := setup(t, func(c *Config, _ *testehr.EHR) { c.PatientClaim = "fhirUser" })
		cases := []struct {
			user, want string
		}{
			{"Patient/123", "123"},
			{f.ehr.FHIRBase() + "/Patient/123", "123"},
			{"Practitioner/9", ""},
			{f.ehr.FHIRBase() + "/RelatedPerson/7", ""},
			{"https://other.example.org/fhir/Patient/123", ""},
			{"123", ""},
		}
		for _, c := range cases {
			tok := f.issue(testehr.TokenSpec{Patient: "999", OmitPatient: true, FHIRUser: c.user})
			p, err := f.authorize(tok)
			if c.want == "" {
				mustRefuse(t, err, 403, "")
				continue
			}
			if p = mustAllow(t, p, err); p.Patient != c.want {
				t.Errorf("fhirUser %q: patient %q, want %q", c.user, p.Patient, c.want)
			}
		}
		// "patient" wins over fhirUser.
		p := f.allow(f.issue(testehr.TokenSpec{Patient: "123", FHIRUser: "Patient/456"}))
		if p.Patient != "123" {
			t.Errorf("patient %q, want the patient claim 123", p.Patient)
		}
	})
	t.Run("sub", func(t *testing.T) {
		f := setup(t, func(c *Config, _ *testehr.EHR) { c.PatientClaim = "sub" })
		tok := f.issue(testehr.TokenSpec{Patient: "1", OmitPatient: true, Sub: f.ehr.FHIRBase() + "/Patient/123"})
		if p := f.allow(tok); p.Patient != "123" {
			t.Errorf("patient %q", p.Patient)
		}
		tok = f.issue(testehr.TokenSpec{Patient: "1", OmitPatient: true, Sub: f.ehr.FHIRBase() + "/Practitioner/1"})
		_, err := f.authorize(tok)
		mustRefuse(t, err, 403, "")
	})
	t.Run("jwt fhirUser", func(t *testing.T) {
		f := setup(t, func(c *Config, e *testehr.EHR) { jwtMode(c, e); c.PatientClaim = "fhirUser" })
		tok := f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "1", OmitPatient: true,
			FHIRUser: "Patient/123", Aud: []string{routeBase}})
		if p := f.allow(tok); p.Patient != "123" {
			t.Errorf("patient %q", p.Patient)
		}
	})
}

func TestPatientBindingEndToEnd(t *testing.T) {
	f := setup(t, nil)
	p := f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	base := f.a.FHIRBaseURL()
	for _, v := range []string{"123", "Patient/123", base + "/Patient/123"} {
		if err := authz.CheckPatientParam(p, v, base); err != nil {
			t.Errorf("?patient=%s refused: %v", v, err)
		}
	}
	for _, v := range []string{"456", "Patient/456", "https://other.example.org/fhir/Patient/123", "", "12*", "123,456"} {
		err := asErr(t, authz.CheckPatientParam(p, v, base))
		if err == nil || err.Status != 403 {
			t.Errorf("?patient=%q: %v, want 403", v, err)
		}
	}
	keys, err := f.a.PatientKeys(t.Context(), p)
	if err != nil || !slices.Equal(keys, []pacskey.PatientKey{"MRN-123"}) {
		t.Fatalf("keys %v, %v", keys, err)
	}
}

func TestEHRDown(t *testing.T) {
	t.Run("cold introspection", func(t *testing.T) {
		f := setup(t, nil)
		f.ehr.Close()
		_, err := f.authorize("any-token")
		mustRefuse(t, err, 502, "")
	})
	t.Run("cold jwt", func(t *testing.T) {
		f := setup(t, jwtMode)
		tok := f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase}})
		f.ehr.Close()
		_, err := f.authorize(tok)
		mustRefuse(t, err, 502, "")
	})
	t.Run("warm", func(t *testing.T) {
		f := setup(t, nil)
		a := f.issue(testehr.TokenSpec{Patient: "123"})
		b := f.issue(testehr.TokenSpec{Patient: "123"})
		p := f.allow(a)
		if _, err := f.a.PatientKeys(t.Context(), p); err != nil {
			t.Fatal(err)
		}
		f.ehr.Close()
		// Known token and patient: served from the caches, no EHR needed.
		p = f.allow(a)
		if _, err := f.a.PatientKeys(t.Context(), p); err != nil {
			t.Fatalf("cached patient keys: %v", err)
		}
		_, err := f.authorize(b)
		mustRefuse(t, err, 502, "")
	})
}

func TestEHRSlow(t *testing.T) {
	short := func(c *Config, _ *testehr.EHR) { c.Timeout = caddy.Duration(300 * time.Millisecond) }
	// Each stalled endpoint is released only when the test ends: getting an
	// answer at all shows the wait is bounded.
	t.Run("introspection", func(t *testing.T) {
		f := setup(t, short)
		f.ehr.Stall(testehr.Introspect)
		_, err := f.authorize(f.issue(testehr.TokenSpec{Patient: "123"}))
		mustRefuse(t, err, 504, "")
	})
	t.Run("discovery", func(t *testing.T) {
		f := setup(t, short)
		f.ehr.Stall(testehr.Discovery)
		_, err := f.authorize("tok")
		mustRefuse(t, err, 504, "")
	})
	t.Run("token", func(t *testing.T) {
		f := setup(t, short)
		f.ehr.Stall(testehr.Token)
		_, err := f.authorize("tok")
		mustRefuse(t, err, 504, "")
	})
	t.Run("jwks", func(t *testing.T) {
		f := setup(t, func(c *Config, e *testehr.EHR) { short(c, e); jwtMode(c, e) })
		f.ehr.Stall(testehr.JWKS)
		_, err := f.authorize(f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase}}))
		mustRefuse(t, err, 504, "")
	})
	t.Run("patient read", func(t *testing.T) {
		f := setup(t, short)
		p := f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
		f.ehr.Stall(testehr.Patient)
		_, err := f.a.PatientKeys(t.Context(), p)
		mustRefuse(t, asErr(t, err), 504, "")
	})
	t.Run("caller gives up", func(t *testing.T) {
		f := setup(t, func(c *Config, _ *testehr.EHR) { c.Timeout = caddy.Duration(10 * time.Minute) })
		release := f.ehr.Stall(testehr.Introspect)
		defer release()
		ctx, cancel := context.WithCancel(t.Context())
		r := request(f.issue(testehr.TokenSpec{Patient: "123"})).WithContext(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := f.a.Authorize(r)
			done <- err
		}()
		cancel()
		if err := <-done; err == nil {
			t.Fatal("allowed after the caller went away")
		}
	})
	t.Run("recovers", func(t *testing.T) {
		f := setup(t, short)
		release := f.ehr.Stall(testehr.Introspect)
		tok := f.issue(testehr.TokenSpec{Patient: "123"})
		_, err := f.authorize(tok)
		mustRefuse(t, err, 504, "")
		release()
		// The failure was not cached.
		f.allow(tok)
	})
}

func TestGarbage(t *testing.T) {
	cases := []struct {
		name   string
		ep     testehr.Endpoint
		status int
		body   string
		want   int
	}{
		{"introspection html", testehr.Introspect, 200, "<html>hello</html>", 502},
		{"introspection active string", testehr.Introspect, 200, `{"active":"true","patient":"123"}`, 502},
		{"introspection no active", testehr.Introspect, 200, `{"patient":"123"}`, 502},
		{"introspection array", testehr.Introspect, 200, `[{"active":true}]`, 502},
		{"introspection exp string", testehr.Introspect, 200, `{"active":true,"scope":"patient/*.rs","patient":"123","exp":"soon"}`, 502},
		{"introspection 500", testehr.Introspect, 500, `oops`, 502},
		{"introspection 503", testehr.Introspect, 503, ``, 503},
		{"introspection refuses gateway", testehr.Introspect, 401, `{"error":"invalid_client"}`, 502},
		{"discovery not json", testehr.Discovery, 200, `not json`, 502},
		{"discovery 404", testehr.Discovery, 404, `{}`, 502},
		{"discovery without endpoints", testehr.Discovery, 200, `{"issuer":"x"}`, 502},
		{"token without access_token", testehr.Token, 200, `{"token_type":"bearer","expires_in":300}`, 502},
		{"token mac type", testehr.Token, 200, `{"access_token":"x","token_type":"mac"}`, 502},
		{"token refuses client", testehr.Token, 401, `{"error":"invalid_client"}`, 502},
		{"token html", testehr.Token, 200, `<html>`, 502},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := setup(t, nil)
			f.ehr.Garble(c.ep, c.status, c.body)
			_, err := f.authorize(f.issue(testehr.TokenSpec{Patient: "123"}))
			mustRefuse(t, err, c.want, "")
		})
	}
	t.Run("jwks", func(t *testing.T) {
		f := setup(t, jwtMode)
		f.ehr.Garble(testehr.JWKS, 200, `[1,2,3]`)
		_, err := f.authorize(f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase}}))
		mustRefuse(t, err, 502, "")
	})
	for name, body := range map[string]string{
		"not a patient": `{"resourceType":"Observation","id":"123"}`,
		"other id":      `{"resourceType":"Patient","id":"456"}`,
		"html":          `<html>`,
	} {
		t.Run("patient "+name, func(t *testing.T) {
			f := setup(t, nil)
			p := f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
			f.ehr.Garble(testehr.Patient, 200, body)
			_, err := f.a.PatientKeys(t.Context(), p)
			mustRefuse(t, asErr(t, err), 502, "")
		})
	}
}

func TestDiscoveryRefreshedAfterFailure(t *testing.T) {
	f := setup(t, nil)
	tok := f.issue(testehr.TokenSpec{Patient: "123"})
	f.ehr.Garble(testehr.Discovery, 200, `garbage`)
	_, err := f.authorize(tok)
	mustRefuse(t, err, 502, "")
	f.ehr.Restore(testehr.Discovery)
	f.allow(tok)
	f.wantCalls(testehr.Discovery, 2)
	// Cached from then on.
	for i := 0; i < 5; i++ {
		f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	}
	f.wantCalls(testehr.Discovery, 2)
}

func TestConfiguredEndpointsSkipDiscovery(t *testing.T) {
	f := setup(t, func(c *Config, e *testehr.EHR) {
		c.TokenEndpoint = e.TokenEndpoint()
		c.IntrospectionEndpoint = e.IntrospectionEndpoint()
	})
	p := f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	if _, err := f.a.PatientKeys(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	f.wantCalls(testehr.Discovery, 0)
}

func TestConcurrentMissesCollapse(t *testing.T) {
	f := setup(t, nil)
	tok := f.issue(testehr.TokenSpec{Patient: "123"})
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			p, err := f.a.Authorize(request(tok))
			if err == nil && p.Patient != "123" {
				err = fmt.Errorf("patient %q", p.Patient)
			}
			if err == nil {
				_, err = f.a.PatientKeys(context.Background(), p)
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	f.wantCalls(testehr.Introspect, 1)
	f.wantCalls(testehr.Token, 1)
	f.wantCalls(testehr.Discovery, 1)
	f.wantCalls(testehr.Patient, 1)
	for i := 0; i < 100; i++ {
		f.allow(tok)
	}
	f.wantCalls(testehr.Introspect, 1)
}

func TestCacheLifetime(t *testing.T) {
	t.Run("bounded by exp", func(t *testing.T) {
		f := setup(t, nil)
		tok := f.issue(testehr.TokenSpec{Patient: "123", Exp: f.clock.Now().Add(40 * time.Second)})
		f.allow(tok)
		f.clock.Advance(39 * time.Second)
		f.allow(tok)
		f.wantCalls(testehr.Introspect, 1)
		f.clock.Advance(2 * time.Second) // past exp: refused, no leeway
		_, err := f.authorize(tok)
		mustRefuse(t, err, 401, `error="invalid_token"`)
		f.wantCalls(testehr.Introspect, 2)
	})
	t.Run("bounded by cache_ttl", func(t *testing.T) {
		f := setup(t, func(c *Config, _ *testehr.EHR) { ttl := caddy.Duration(2 * time.Minute); c.CacheTTL = &ttl })
		tok := f.issue(testehr.TokenSpec{Patient: "123"})
		f.allow(tok)
		f.clock.Advance(119 * time.Second)
		f.allow(tok)
		f.wantCalls(testehr.Introspect, 1)
		// Revocation is noticed once the cached decision expires.
		f.ehr.Revoke(tok)
		f.allow(tok)
		f.clock.Advance(2 * time.Second)
		_, err := f.authorize(tok)
		mustRefuse(t, err, 401, "")
		f.wantCalls(testehr.Introspect, 2)
	})
	t.Run("inactive cached briefly", func(t *testing.T) {
		f := setup(t, nil)
		for i := 0; i < 3; i++ {
			_, err := f.authorize("unknown-token")
			mustRefuse(t, err, 401, "")
		}
		f.wantCalls(testehr.Introspect, 1)
		f.clock.Advance(DefaultInactiveCacheTTL + time.Second)
		_, err := f.authorize("unknown-token")
		mustRefuse(t, err, 401, "")
		f.wantCalls(testehr.Introspect, 2)
	})
	t.Run("jwt decisions cached", func(t *testing.T) {
		f := setup(t, jwtMode)
		tok := f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase},
			Exp: f.clock.Now().Add(time.Minute)})
		f.allow(tok)
		f.clock.Advance(2 * time.Minute)
		_, err := f.authorize(tok)
		mustRefuse(t, err, 401, "")
	})
}

func TestCacheBounded(t *testing.T) {
	f := setup(t, func(c *Config, _ *testehr.EHR) { c.CacheSize = 10 })
	var toks []string
	for i := 0; i < 25; i++ {
		tok := f.issue(testehr.TokenSpec{Patient: "123"})
		toks = append(toks, tok)
		f.allow(tok)
	}
	f.wantCalls(testehr.Introspect, 25)
	if n := f.a.tokens.len(); n > 10 {
		t.Fatalf("cache holds %d tokens, bound is 10", n)
	}
	f.allow(toks[24]) // recent: cached
	f.wantCalls(testehr.Introspect, 25)
	f.allow(toks[0]) // oldest: evicted
	f.wantCalls(testehr.Introspect, 26)
}

func TestBackendTokenReused(t *testing.T) {
	f := setup(t, nil)
	for i := 0; i < 20; i++ {
		f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	}
	f.wantCalls(testehr.Token, 1)
	f.wantCalls(testehr.Introspect, 20)
	// The EHR's token lives 300 s; it is renewed shortly before.
	f.clock.Advance(265 * time.Second)
	f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	f.wantCalls(testehr.Token, 1)
	f.clock.Advance(10 * time.Second)
	f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	f.wantCalls(testehr.Token, 2)
	// Revoked at the EHR: renewed once and the request still succeeds.
	f.ehr.RevokeBackendTokens()
	f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	f.wantCalls(testehr.Token, 3)
}

func TestClientSecret(t *testing.T) {
	f := setup(t, func(c *Config, _ *testehr.EHR) {
		c.PrivateKey = ""
		c.ClientSecret = "s3cret&/="
	})
	p := f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	f.wantCalls(testehr.Token, 0) // introspection with HTTP Basic
	keys, err := f.a.PatientKeys(t.Context(), p)
	if err != nil || !slices.Equal(keys, []pacskey.PatientKey{"MRN-123"}) {
		t.Fatalf("keys %v %v", keys, err)
	}
	f.wantCalls(testehr.Token, 1) // client_secret_basic at the token endpoint
	if got := f.ehr.LastPatientReadAuth(); got != "backend" {
		t.Errorf("patient read with %q credentials", got)
	}

	bad := setup(t, func(c *Config, _ *testehr.EHR) {
		c.PrivateKey = ""
		c.ClientSecret = "wrong"
	})
	_, aerr := bad.authorize(bad.issue(testehr.TokenSpec{Patient: "123"}))
	mustRefuse(t, aerr, 502, "")
}

func TestClientAssertion(t *testing.T) {
	t.Run("unregistered key", func(t *testing.T) {
		f := setup(t, nil)
		other := testehr.GenerateKey(t, jwa.RS384, "gw-1-other")
		_ = other.Set(jwk.KeyIDKey, "gw-1")
		f.ehr.RegisterClient(testehr.Client{ID: gatewayID, Keys: testehr.PublicSet(t, other)})
		_, err := f.authorize(f.issue(testehr.TokenSpec{Patient: "123"}))
		mustRefuse(t, err, 502, "")
		if !strings.Contains(err.Message, "client credentials") {
			t.Errorf("message %q", err.Message)
		}
	})
	t.Run("ES384 PEM file", func(t *testing.T) {
		key := testehr.GenerateKey(t, jwa.ES384, "")
		var raw any
		if err := key.Raw(&raw); err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(raw)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "gw.pem")
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		f := setup(t, func(c *Config, e *testehr.EHR) {
			c.PrivateKey = path
			c.PrivateKeyID = "gw-es"
			pub := testehr.PublicSet(t, key)
			k, _ := pub.Key(0)
			_ = k.Set(jwk.KeyIDKey, "gw-es")
			e.RegisterClient(testehr.Client{ID: gatewayID, Keys: pub})
		})
		if f.a.s.key.alg != jwa.ES384 {
			t.Errorf("alg %s, want ES384 from the P-384 key", f.a.s.key.alg)
		}
		f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
	})
	t.Run("fresh jti each time", func(t *testing.T) {
		// The EHR refuses a reused jti; renewing the backend token works.
		f := setup(t, nil)
		f.allow(f.issue(testehr.TokenSpec{Patient: "123"}))
		f.clock.Advance(time.Hour)
		f.allow(f.issue(testehr.TokenSpec{Patient: "123", Exp: f.clock.Now().Add(time.Hour)}))
		f.wantCalls(testehr.Token, 2)
	})
}

func TestJWKSRotation(t *testing.T) {
	f := setup(t, jwtMode)
	f.allow(f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase}}))
	f.ehr.RotateSigningKeys(t)
	// Unknown kids right after a fetch do not make the gateway fetch again.
	rotated := f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase}})
	for i := 0; i < 5; i++ {
		tok := rotated
		if i > 0 {
			tok = f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase}})
		}
		_, err := f.authorize(tok)
		mustRefuse(t, err, 401, "")
	}
	f.wantCalls(testehr.JWKS, 1)
	// Later, an unknown kid triggers one fetch and the new key verifies.
	f.clock.Advance(jwksRefreshGap + DefaultInactiveCacheTTL)
	f.allow(rotated)
	f.wantCalls(testehr.JWKS, 2)
}

func TestPatientKeys(t *testing.T) {
	const other = "http://other.example.org/ids"
	add := func(e *testehr.EHR) {
		e.AddPatient("p1",
			testehr.Identifier{System: mrnSystem, Value: "MRN-1"},
			testehr.Identifier{System: other, Value: "OTHER-1"},
			testehr.Identifier{System: "http://x.example.org/mr", Value: "MR-1", TypeCode: "MR"},
			testehr.Identifier{System: mrnSystem, Value: "MRN-OLD", Use: "old"},
			testehr.Identifier{System: mrnSystem, Value: "MRN-1"},
		)
		e.AddPatient("p2", testehr.Identifier{System: other, Value: "OTHER-2"})
		e.AddPatient("p3", testehr.Identifier{System: mrnSystem, Value: "12*", TypeCode: "MR"},
			testehr.Identifier{System: mrnSystem, Value: "", TypeCode: "MR"})
	}
	keysFor := func(t *testing.T, f *fixture, patient string) ([]pacskey.PatientKey, *authz.Error) {
		t.Helper()
		p := f.allow(f.issue(testehr.TokenSpec{Patient: patient}))
		keys, err := f.a.PatientKeys(t.Context(), p)
		return keys, asErr(t, err)
	}
	cases := []struct {
		name    string
		systems []string
		patient string
		want    []pacskey.PatientKey
		msg     string
	}{
		{"by system", []string{mrnSystem}, "p1", []pacskey.PatientKey{"MRN-1"}, ""},
		{"by two systems", []string{mrnSystem, other}, "p1", []pacskey.PatientKey{"MRN-1", "OTHER-1"}, ""},
		{"by type MR", nil, "p1", []pacskey.PatientKey{"MR-1"}, ""},
		{"no MRN by type", nil, "p2", nil, "no identifier usable as a PACS key (identifier type MR)"},
		{"no MRN by system", []string{mrnSystem}, "p2", nil, "mrn_system " + mrnSystem},
		{"pattern values refused", []string{mrnSystem}, "p3", nil, "cannot be used as exact PACS keys"},
		{"pattern values refused by type", nil, "p3", nil, "cannot be used as exact PACS keys"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := setup(t, func(cfg *Config, e *testehr.EHR) { cfg.MRNSystem = c.systems; add(e) })
			keys, err := keysFor(t, f, c.patient)
			if c.want != nil {
				if err != nil || !slices.Equal(keys, c.want) {
					t.Fatalf("keys %v (%v), want %v", keys, err, c.want)
				}
				return
			}
			mustRefuse(t, err, 403, "")
			if !strings.Contains(err.Message, c.msg) {
				t.Errorf("message %q lacks %q", err.Message, c.msg)
			}
		})
	}
	t.Run("identifiers keep their systems", func(t *testing.T) {
		f := setup(t, func(cfg *Config, e *testehr.EHR) {
			cfg.MRNSystem = []string{mrnSystem, other}
			add(e)
			// One value under two systems: one PACS key, two identifiers.
			e.AddPatient("p4", testehr.Identifier{System: mrnSystem, Value: "K-1"}, testehr.Identifier{System: other, Value: "K-1"},
				testehr.Identifier{System: "http://unlisted.example.org", Value: "K-2"})
		})
		p := f.allow(f.issue(testehr.TokenSpec{Patient: "p1"}))
		ids, err := f.a.PatientIdentifiers(t.Context(), p)
		if want := []authz.Identifier{{System: mrnSystem, Value: "MRN-1"}, {System: other, Value: "OTHER-1"}}; err != nil || !slices.Equal(ids, want) {
			t.Fatalf("identifiers %+v (%v), want %+v", ids, err, want)
		}
		p = f.allow(f.issue(testehr.TokenSpec{Patient: "p4"}))
		keys, err := f.a.PatientKeys(t.Context(), p)
		if err != nil || !slices.Equal(keys, []pacskey.PatientKey{"K-1"}) {
			t.Fatalf("keys %v (%v), want [K-1]", keys, err)
		}
		ids, err = f.a.PatientIdentifiers(t.Context(), p)
		if want := []authz.Identifier{{System: mrnSystem, Value: "K-1"}, {System: other, Value: "K-1"}}; err != nil || !slices.Equal(ids, want) {
			t.Fatalf("identifiers %+v (%v), want %+v", ids, err, want)
		}
		// Keys and identifiers share one Patient read.
		f.wantCalls(testehr.Patient, 2)
	})
	t.Run("cached per patient", func(t *testing.T) {
		f := setup(t, func(_ *Config, e *testehr.EHR) { add(e) })
		for i := 0; i < 3; i++ {
			if keys, err := keysFor(t, f, "p1"); err != nil || len(keys) != 1 {
				t.Fatal(keys, err)
			}
		}
		f.wantCalls(testehr.Patient, 1)
		f.clock.Advance(DefaultCacheTTL + time.Second)
		if _, err := keysFor(t, f, "p1"); err != nil {
			t.Fatal(err)
		}
		f.wantCalls(testehr.Patient, 2)
	})
	t.Run("unknown patient", func(t *testing.T) {
		f := setup(t, nil)
		_, err := keysFor(t, f, "nobody")
		mustRefuse(t, err, 502, "")
	})
	t.Run("no patient in principal", func(t *testing.T) {
		f := setup(t, nil)
		_, err := f.a.PatientKeys(t.Context(), &authz.Principal{})
		mustRefuse(t, asErr(t, err), 403, "")
		_, err = f.a.PatientKeys(t.Context(), &authz.Principal{Patient: "../x"})
		mustRefuse(t, asErr(t, err), 403, "")
		f.wantCalls(testehr.Patient, 0)
	})
}

func TestCallerTokenLookup(t *testing.T) {
	f := setup(t, func(c *Config, e *testehr.EHR) {
		jwtMode(c, e)
		c.PrivateKey, c.ClientID = "", ""
		c.PatientLookupToken = LookupTokenCaller
	})
	p := f.allow(f.issue(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{routeBase}}))
	keys, err := f.a.PatientKeys(t.Context(), p)
	if err != nil || !slices.Equal(keys, []pacskey.PatientKey{"MRN-123"}) {
		t.Fatalf("keys %v %v", keys, err)
	}
	if got := f.ehr.LastPatientReadAuth(); got != "app" {
		t.Errorf("patient read with %q credentials, want the caller's", got)
	}
	f.wantCalls(testehr.Token, 0)
	// A principal the authorizer never issued has no token to use.
	_, err = f.a.PatientKeys(t.Context(), &authz.Principal{Patient: "456", TokenHash: "abc"})
	if e := asErr(t, err); e == nil || e.Status == 200 {
		t.Fatalf("lookup without the caller's token: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	key := testehr.GenerateKey(t, jwa.RS384, "k")
	keyJSON, _ := json.Marshal(key)
	pubJSON, _ := json.Marshal(testehr.PublicSet(t, key))
	base := Config{FHIRBaseURL: "https://ehr.example.org/fhir", ClientID: "gw", PrivateKey: string(keyJSON)}
	cases := map[string]func(*Config){
		"no fhir_base_url":       func(c *Config) { c.FHIRBaseURL = "" },
		"relative fhir_base_url": func(c *Config) { c.FHIRBaseURL = "/fhir" },
		"bad validation":         func(c *Config) { c.Validation = "trust-me" },
		"jwt without audience":   func(c *Config) { c.Validation = ValidationJWT },
		"bad patient_claim":      func(c *Config) { c.PatientClaim = "email" },
		"bad lookup token":       func(c *Config) { c.PatientLookupToken = "anyone" },
		"no credentials":         func(c *Config) { c.PrivateKey = "" },
		"public key":             func(c *Config) { c.PrivateKey = string(pubJSON) },
		"missing key file":       func(c *Config) { c.PrivateKey = "/nonexistent/key.jwk" },
		"alg for wrong key":      func(c *Config) { c.PrivateKeyAlg = "ES384" },
		"HMAC alg":               func(c *Config) { c.PrivateKeyAlg = "HS256" },
		"no client_id":           func(c *Config) { c.ClientID = "" },
		"bad jwks_url":           func(c *Config) { c.JWKSURL = "ftp://x" },
		"credentials in URL":     func(c *Config) { c.TokenEndpoint = "https://u:p@ehr.example.org/token" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			c := base
			mutate(&c)
			if _, err := New(t.Context(), c, nil, nil); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := New(t.Context(), base, nil, nil); err != nil {
		t.Fatalf("base config refused: %v", err)
	}
}
