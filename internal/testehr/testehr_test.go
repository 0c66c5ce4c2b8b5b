package testehr

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

func post(t *testing.T, u string, form url.Values, auth func(*http.Request)) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if auth != nil {
		auth(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &m)
	return resp.StatusCode, m
}

func assertion(t *testing.T, key jwk.Key, iss, aud string, exp time.Time, jti string) string {
	t.Helper()
	tok, err := jwt.NewBuilder().Issuer(iss).Subject(iss).Audience([]string{aud}).Expiration(exp).JwtID(jti).Build()
	if err != nil {
		t.Fatal(err)
	}
	b, err := jwt.Sign(tok, jwt.WithKey(key.Algorithm(), key))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func tokenForm(a string) url.Values {
	return url.Values{"grant_type": {"client_credentials"}, "scope": {"system/Patient.rs"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {a}}
}

func TestTokenEndpointVerifiesAssertions(t *testing.T) {
	e := New(t)
	key := GenerateKey(t, jwa.ES384, "c1")
	e.RegisterClient(Client{ID: "gw", Keys: PublicSet(t, key)})
	stranger := GenerateKey(t, jwa.ES384, "c1-stranger")
	_ = stranger.Set(jwk.KeyIDKey, "c1")
	exp := time.Now().Add(4 * time.Minute)

	status, body := post(t, e.TokenEndpoint(), tokenForm(assertion(t, key, "gw", e.TokenEndpoint(), exp, "j1")), nil)
	if status != 200 || body["access_token"] == "" || body["token_type"] != "bearer" || body["expires_in"] != float64(300) {
		t.Fatalf("valid assertion: %d %v", status, body)
	}
	bad := map[string]string{
		"replayed jti":     assertion(t, key, "gw", e.TokenEndpoint(), exp, "j1"),
		"wrong audience":   assertion(t, key, "gw", e.URL()+"/other", exp, "j2"),
		"expired":          assertion(t, key, "gw", e.TokenEndpoint(), time.Now().Add(-time.Minute), "j3"),
		"too long":         assertion(t, key, "gw", e.TokenEndpoint(), time.Now().Add(time.Hour), "j4"),
		"unknown client":   assertion(t, key, "nobody", e.TokenEndpoint(), exp, "j5"),
		"unregistered key": assertion(t, stranger, "gw", e.TokenEndpoint(), exp, "j6"),
		"not a jwt":        "abc",
	}
	for name, a := range bad {
		if status, body := post(t, e.TokenEndpoint(), tokenForm(a), nil); status != 401 {
			t.Errorf("%s: %d %v", name, status, body)
		}
	}
	if got := e.Calls(Token); got != int64(1+len(bad)) {
		t.Errorf("token calls %d", got)
	}
}

func TestIntrospectionAndPatient(t *testing.T) {
	e := New(t)
	e.RegisterClient(Client{ID: "gw", Secret: "p&ss"})
	e.AddPatient("123", Identifier{System: "urn:mrn", Value: "M1", TypeCode: "MR"})
	basic := func(r *http.Request) { r.SetBasicAuth("gw", url.QueryEscape("p&ss")) }

	// client_secret_basic at the token endpoint.
	status, body := post(t, e.TokenEndpoint(), url.Values{"grant_type": {"client_credentials"}, "scope": {"system/Patient.read"}}, basic)
	if status != 200 {
		t.Fatalf("token: %d %v", status, body)
	}
	backend := body["access_token"].(string)

	app := e.IssueToken(TokenSpec{Patient: "123", Aud: []string{"https://img/fhir"}})
	if status, _ := post(t, e.IntrospectionEndpoint(), url.Values{"token": {app}}, nil); status != 401 {
		t.Fatalf("unauthenticated introspection: %d", status)
	}
	if status, _ := post(t, e.IntrospectionEndpoint(), url.Values{"token": {app}},
		func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+app) }); status != 401 {
		t.Fatalf("introspection with an app token: %d", status)
	}
	status, body = post(t, e.IntrospectionEndpoint(), url.Values{"token": {app}},
		func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+backend) })
	if status != 200 || body["active"] != true || body["patient"] != "123" || body["aud"] != "https://img/fhir" ||
		body["scope"] != "launch/patient patient/ImagingStudy.rs" || body["exp"] == nil || body["client_id"] != "app" {
		t.Fatalf("introspection: %d %v", status, body)
	}
	e.Revoke(app)
	if _, body = post(t, e.IntrospectionEndpoint(), url.Values{"token": {app}}, basic); body["active"] != false || len(body) != 1 {
		t.Fatalf("revoked: %v", body)
	}

	get := func(tok, id string) int {
		req, _ := http.NewRequest(http.MethodGet, e.FHIRBase()+"/Patient/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := get(backend, "123"); s != 200 {
		t.Errorf("backend read: %d", s)
	}
	if s := get(backend, "999"); s != 404 {
		t.Errorf("unknown patient: %d", s)
	}
	other := e.IssueToken(TokenSpec{Patient: "456"})
	if s := get(other, "123"); s != 403 {
		t.Errorf("app token for another patient: %d", s)
	}
	if s := get("nope", "123"); s != 401 {
		t.Errorf("no valid token: %d", s)
	}
}

func TestJWTAndKnobs(t *testing.T) {
	e := New(t)
	tok := e.IssueToken(TokenSpec{Format: JWT, Alg: jwa.ES256, Patient: "123", Aud: []string{"a"}})
	set, err := jwk.Fetch(t.Context(), e.JWKSURL())
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := jwt.Parse([]byte(tok), jwt.WithKeySet(set), jwt.WithIssuer(e.Issuer()), jwt.WithAudience("a"))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := parsed.Get("patient"); p != "123" {
		t.Errorf("patient claim %v", p)
	}

	e.Garble(Discovery, 200, "garbage")
	resp, err := http.Get(e.FHIRBase() + "/.well-known/smart-configuration")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "garbage" {
		t.Errorf("garbled body %q", b)
	}
	e.Restore(Discovery)

	release := e.Stall(Discovery)
	done := make(chan int)
	go func() {
		resp, err := http.Get(e.FHIRBase() + "/.well-known/smart-configuration")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	release()
	if s := <-done; s != 200 {
		t.Errorf("released request: %d", s)
	}
	if n := e.Calls(Discovery); n != 2 {
		t.Errorf("discovery calls %d", n)
	}
	e.Close()
	if _, err := http.Get(e.FHIRBase() + "/.well-known/smart-configuration"); err == nil {
		t.Error("closed EHR still answers")
	}
}
