package dual

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

const (
	appRedirect  = "https://viewer.example/cb?x=1"
	confRedirect = "https://confidential.example/cb"
	gatewayID    = "imaging-gw"
	patientID    = "p1"
	patientMRN   = "MRN-0001"
	mrnSystem    = "http://hospital.example/mrn"
	userRef      = "Practitioner/dr-1"
)

type world struct {
	ehr    *testehr.EHR
	srv    *Server
	gw     *httptest.Server
	base   string
	logs   *observer.ObservedLogs
	appKey any
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{ehr: testehr.New(t)}
	appKey := testehr.GenerateKey(t, jwa.ES384, "conf-app-1")
	w.appKey = appKey
	jwks := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(rw).Encode(testehr.PublicSet(t, appKey))
	}))
	t.Cleanup(jwks.Close)
	mux := http.NewServeMux()
	w.gw = httptest.NewServer(mux)
	t.Cleanup(w.gw.Close)
	w.base = w.gw.URL + "/dual"
	w.ehr.RegisterClient(testehr.Client{ID: gatewayID, RedirectURIs: []string{w.base + "/oauth/ehr-callback"}})
	w.ehr.SetPatientJSON(patientID, []byte(`{"resourceType":"Patient","id":"p1","name":[{"text":"<script>alert('pwned')</script> Doe"}],
		"identifier":[{"system":"`+mrnSystem+`","value":"`+patientMRN+`"},{"system":"http://other","value":"X-1"}]}`))
	w.ehr.SetResourceJSON("Practitioner", "dr-1", []byte(`{"resourceType":"Practitioner","id":"dr-1","name":[{"given":["Ann"],"family":"<b>Smith</b>"}]}`))
	core, logs := observer.New(zapcore.DebugLevel)
	w.logs = logs
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 1)
	}
	srv, err := New(Config{
		FHIRBaseURL: w.ehr.FHIRBase(), ClientID: gatewayID, SigningKey: base64.StdEncoding.EncodeToString(key),
		MRNSystem: []string{mrnSystem},
		Apps: []App{
			{ClientID: "viewer", RedirectURIs: []string{appRedirect}},
			{ClientID: "conf", RedirectURIs: []string{confRedirect}, JWKSURL: jwks.URL},
		},
	}, &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	w.srv = srv
	mux.HandleFunc("/dual/oauth/", func(rw http.ResponseWriter, r *http.Request) {
		if !srv.ServeOAuth(rw, r, strings.TrimPrefix(r.URL.Path, "/dual"), w.base) {
			http.NotFound(rw, r)
		}
	})
	return w
}

// browser is a user agent with a cookie jar that stops at the apps'
// redirect URIs.
func (w *world) browser(t *testing.T, loggedIn bool) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	if loggedIn {
		u, _ := url.Parse(w.ehr.URL())
		jar.SetCookies(u, []*http.Cookie{w.ehr.NewSession(userRef, patientID)})
	}
	return &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasSuffix(req.URL.Host, ".example") {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

func (w *world) authorizeURL(mod func(q url.Values)) string {
	q := url.Values{
		"response_type": {"code"}, "client_id": {"viewer"}, "redirect_uri": {appRedirect},
		"scope": {"launch/patient patient/ImagingStudy.rs openid"}, "state": {"app-state-1"},
		"aud": {w.base + "/fhir"}, "code_challenge": {s256(verifier)}, "code_challenge_method": {"S256"},
	}
	if mod != nil {
		mod(q)
	}
	return w.base + "/oauth/authorize?" + q.Encode()
}

const verifier = "verifier-0123456789-0123456789-0123456789-abcdef"

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// consent drives the browser to the consent page.
func (w *world) consent(t *testing.T, c *http.Client, mod func(url.Values)) string {
	t.Helper()
	resp, body := get(t, c, w.authorizeURL(mod))
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Authorize access to imaging studies") {
		t.Fatalf("want the consent page, got %d %s %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	return body
}

func (w *world) decide(t *testing.T, c *http.Client, csrf, decision string) *http.Response {
	t.Helper()
	resp, err := c.PostForm(w.base+"/oauth/decision", url.Values{"csrf": {csrf}, "decision": {decision}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// code runs the whole browser part and returns the code.
func (w *world) code(t *testing.T, c *http.Client, mod func(url.Values)) string {
	t.Helper()
	body := w.consent(t, c, mod)
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no CSRF token in the consent form")
	}
	resp := w.decide(t, c, m[1], "approve")
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || loc.Query().Get("code") == "" {
		t.Fatalf("approve: want a redirect with a code, got %d %s", resp.StatusCode, loc)
	}
	if loc.Query().Get("state") != "app-state-1" || loc.Query().Get("x") != "1" {
		t.Fatalf("redirect lost the app's state or its own query: %s", loc)
	}
	return loc.Query().Get("code")
}

func (w *world) redeem(t *testing.T, form url.Values) (int, map[string]any) {
	t.Helper()
	resp, err := http.PostForm(w.base+"/oauth/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func tokenForm(code string) url.Values {
	return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appRedirect},
		"client_id": {"viewer"}, "code_verifier": {verifier}}
}

// probe authorizes a request with tok on the route whose FHIR base is
// fhirBase.
func (w *world) probe(tok, fhirBase string) (*authz.Principal, error) {
	r := httptest.NewRequest(http.MethodGet, "/fhir/ImagingStudy", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	r = r.WithContext(authz.WithRouteFHIRBase(r.Context(), fhirBase))
	return w.srv.Authorize(r)
}

func status(err error) int {
	if ae, ok := err.(*authz.Error); ok {
		return ae.Status
	}
	return 0
}

func TestDualLaunchEndToEnd(t *testing.T) {
	w := newWorld(t)
	c := w.browser(t, true)
	body := w.consent(t, c, nil)
	// The EHR leg: the gateway's own client, PKCE S256, state, nonce, silent.
	q := w.ehr.LastAuthorizeRequest()
	for k, want := range map[string]string{"client_id": gatewayID, "code_challenge_method": "S256", "prompt": "none",
		"aud": w.ehr.FHIRBase(), "redirect_uri": w.base + "/oauth/ehr-callback"} {
		if q.Get(k) != want {
			t.Errorf("EHR authorize %s = %q, want %q", k, q.Get(k), want)
		}
	}
	if q.Get("state") == "" || q.Get("nonce") == "" || q.Get("code_challenge") == "" || q.Get("state") == "app-state-1" {
		t.Errorf("EHR authorize lacks its own state/nonce/challenge: %v", q)
	}
	// Names from the EHR are escaped.
	if strings.Contains(body, "<script>") || strings.Contains(body, "<b>Smith") {
		t.Errorf("consent page carries unescaped EHR data:\n%s", body)
	}
	if !strings.Contains(body, "&lt;script&gt;") || !strings.Contains(body, "Ann &lt;b&gt;Smith") {
		t.Errorf("consent page lacks the patient or user name:\n%s", body)
	}
	m := csrfRE.FindStringSubmatch(body)
	resp := w.decide(t, c, m[1], "approve")
	loc, _ := url.Parse(resp.Header.Get("Location"))
	code := loc.Query().Get("code")
	st, tok := w.redeem(t, tokenForm(code))
	if st != http.StatusOK || tok["patient"] != patientID || tok["token_type"] != "Bearer" {
		t.Fatalf("token: %d %v", st, tok)
	}
	access := tok["access_token"].(string)
	p, err := w.probe(access, w.base+"/fhir")
	if err != nil || p.Patient != patientID || p.ClientID != "viewer" || p.User != w.ehr.FHIRBase()+"/"+userRef {
		t.Fatalf("the issued token is not accepted on its route: %+v %v", p, err)
	}
	keys, err := w.srv.PatientKeys(context.Background(), p)
	if err != nil || len(keys) != 1 || keys[0] != patientMRN {
		t.Fatalf("patient keys: %v %v (want only the mrn_system identifier)", keys, err)
	}
	// Never on another route, never tampered.
	if _, err := w.probe(access, w.gw.URL+"/other/fhir"); status(err) != http.StatusUnauthorized {
		t.Errorf("token accepted on another route: %v", err)
	}
	tampered := access[:len(access)-3] + "AAA"
	if _, err := w.probe(tampered, w.base+"/fhir"); status(err) != http.StatusUnauthorized {
		t.Errorf("tampered token: %v", err)
	}
	if _, err := w.probe(code, w.base+"/fhir"); status(err) != http.StatusUnauthorized {
		t.Errorf("an authorization code works as an access token: %v", err)
	}
	w.srv.now = func() time.Time { return time.Now().Add(DefaultTokenTTL + time.Second) }
	if _, err := w.probe(access, w.base+"/fhir"); status(err) != http.StatusUnauthorized {
		t.Errorf("expired token accepted: %v", err)
	}
	// Replay: the code works once.
	w.srv.now = time.Now
	if st, m := w.redeem(t, tokenForm(code)); st != http.StatusBadRequest || m["error"] != "invalid_grant" {
		t.Errorf("replayed code: %d %v", st, m)
	}
	// Nothing secret in the logs.
	secrets := []string{code, access, verifier}
	for _, e := range w.logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("a log line holds a secret: %s", line)
			}
		}
	}
}

func TestDualLaunchRefusesUnregisteredClientsAndRedirects(t *testing.T) {
	w := newWorld(t)
	c := w.browser(t, true)
	for name, mod := range map[string]func(url.Values){
		"unknown client":       func(q url.Values) { q.Set("client_id", "stranger") },
		"redirect not exact":   func(q url.Values) { q.Set("redirect_uri", "https://viewer.example/cb") },
		"redirect with extra":  func(q url.Values) { q.Set("redirect_uri", appRedirect+"&evil=1") },
		"redirect other host":  func(q url.Values) { q.Set("redirect_uri", "https://evil.example/cb?x=1") },
		"other app's redirect": func(q url.Values) { q.Set("redirect_uri", confRedirect) },
		"two redirect uris":    func(q url.Values) { q["redirect_uri"] = []string{appRedirect, "https://evil.example/"} },
	} {
		resp, body := get(t, c, w.authorizeURL(mod))
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" || !strings.Contains(body, "registered") {
			t.Errorf("%s: want a 400 error page and no redirect, got %d %q", name, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	if n := w.ehr.Calls(testehr.Authorize); n != 0 {
		t.Errorf("the EHR was asked %d times for refused requests", n)
	}
}

func TestDualLaunchRequiresPKCE(t *testing.T) {
	w := newWorld(t)
	c := w.browser(t, true)
	for name, mod := range map[string]func(url.Values){
		"no challenge":   func(q url.Values) { q.Del("code_challenge"); q.Del("code_challenge_method") },
		"plain method":   func(q url.Values) { q.Set("code_challenge_method", "plain") },
		"short":          func(q url.Values) { q.Set("code_challenge", "abc") },
		"no state":       func(q url.Values) { q.Del("state") },
		"foreign aud":    func(q url.Values) { q.Set("aud", "https://ehr.example/fhir") },
		"no image scope": func(q url.Values) { q.Set("scope", "launch/patient patient/Observation.rs") },
	} {
		resp, _ := get(t, c, w.authorizeURL(mod))
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusFound || loc.Host != "viewer.example" || loc.Query().Get("error") == "" {
			t.Errorf("%s: want a redirect to the app with an error, got %d %s", name, resp.StatusCode, loc)
		}
	}
	code := w.code(t, c, nil)
	for name, f := range map[string]func(url.Values){
		"wrong verifier":  func(v url.Values) { v.Set("code_verifier", strings.Repeat("z", 50)) },
		"no verifier":     func(v url.Values) { v.Del("code_verifier") },
		"other redirect":  func(v url.Values) { v.Set("redirect_uri", "https://viewer.example/cb") },
		"other client":    func(v url.Values) { v.Set("client_id", "conf") },
		"garbage code":    func(v url.Values) { v.Set("code", "not-a-code") },
		"wrong grant":     func(v url.Values) { v.Set("grant_type", "client_credentials") },
		"repeated params": func(v url.Values) { v["code"] = []string{code, code} },
	} {
		form := tokenForm(code)
		f(form)
		if st, m := w.redeem(t, form); st == http.StatusOK {
			t.Errorf("%s: token issued: %v", name, m)
		}
	}
	// The failed attempts did not burn the code; it works once, expires.
	if st, m := w.redeem(t, tokenForm(code)); st != http.StatusOK {
		t.Fatalf("good redemption after failed ones: %d %v", st, m)
	}
	code2 := w.code(t, w.browser(t, true), nil)
	w.srv.now = func() time.Time { return time.Now().Add(CodeTTL + time.Second) }
	if st, m := w.redeem(t, tokenForm(code2)); st != http.StatusBadRequest || m["error"] != "invalid_grant" {
		t.Errorf("expired code: %d %v", st, m)
	}
}

func TestDualLaunchConsentCSRF(t *testing.T) {
	w := newWorld(t)
	victim := w.browser(t, true)
	body := w.consent(t, victim, nil)
	csrf := csrfRE.FindStringSubmatch(body)[1]
	// An attacker's page posting for the victim cannot know the token.
	if resp := w.decide(t, victim, "guessed", "approve"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("wrong CSRF token: %d", resp.StatusCode)
	}
	// The token alone, without the victim's session, is worthless.
	if resp := w.decide(t, w.browser(t, true), csrf, "approve"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("CSRF token from another browser: %d", resp.StatusCode)
	}
	// Deny reaches the app as access_denied.
	resp := w.decide(t, victim, csrf, "deny")
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if loc.Query().Get("error") != "access_denied" || loc.Query().Get("code") != "" {
		t.Errorf("deny: %s", loc)
	}
	// The flow is over: the same form cannot be replayed.
	if resp := w.decide(t, victim, csrf, "approve"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("decision replayed after the flow ended: %d", resp.StatusCode)
	}
}

func TestDualLaunchEHRLeg(t *testing.T) {
	w := newWorld(t)
	// A callback whose state is not this browser's flow (login CSRF).
	c := w.browser(t, true)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, _ := get(t, c, w.authorizeURL(nil))
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: %d", resp.StatusCode)
	}
	resp, _ = get(t, c, w.base+"/oauth/ehr-callback?code=x&state=forged")
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" {
		t.Errorf("forged EHR state: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	// No flow at all.
	resp, _ = get(t, w.browser(t, true), w.base+"/oauth/ehr-callback?code=x&state=y")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("callback without a flow: %d", resp.StatusCode)
	}
	// Forged or foreign id_tokens end the launch with an error, no consent.
	for name, tamper := range map[string]func(map[string]any){
		"unpublished key": func(m map[string]any) { m["_unsigned"] = true },
		"wrong nonce":     func(m map[string]any) { m["nonce"] = "other" },
		"wrong audience":  func(m map[string]any) { m["aud"] = "someone-else" },
		"wrong issuer":    func(m map[string]any) { m["iss"] = "https://evil.example" },
		"expired":         func(m map[string]any) { m["exp"] = time.Now().Add(-time.Hour).Unix() },
	} {
		w.ehr.TamperIDTokens(tamper)
		resp, body := get(t, w.browser(t, true), w.authorizeURL(nil))
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusFound || loc.Query().Get("error") != "server_error" || strings.Contains(body, "csrf") {
			t.Errorf("%s id_token: want an error redirect, got %d %s", name, resp.StatusCode, loc)
		}
	}
	w.ehr.TamperIDTokens(nil)
	// No EHR session: the gateway retries interactively, the EHR shows its
	// login page.
	resp, body := get(t, w.browser(t, false), w.authorizeURL(nil))
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Test EHR") {
		t.Errorf("without an EHR session: want the EHR login page, got %d", resp.StatusCode)
	}
	if q := w.ehr.LastAuthorizeRequest(); q.Get("prompt") != "" {
		t.Errorf("interactive retry still says prompt=%s", q.Get("prompt"))
	}
}

func TestDualLaunchConfidentialApp(t *testing.T) {
	w := newWorld(t)
	c := w.browser(t, true)
	mod := func(q url.Values) {
		q.Set("client_id", "conf")
		q.Set("redirect_uri", confRedirect)
		q.Del("code_challenge")
		q.Del("code_challenge_method")
	}
	body := w.consent(t, c, mod)
	resp := w.decide(t, c, csrfRE.FindStringSubmatch(body)[1], "approve")
	loc, _ := url.Parse(resp.Header.Get("Location"))
	code := loc.Query().Get("code")
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {confRedirect}, "client_id": {"conf"}}
	if st, m := w.redeem(t, form); st != http.StatusUnauthorized || m["error"] != "invalid_client" {
		t.Errorf("confidential app without authentication: %d %v", st, m)
	}
	sign := func(aud, jti string, key any) string {
		tok, _ := jwt.NewBuilder().Issuer("conf").Subject("conf").Audience([]string{aud}).
			Expiration(time.Now().Add(4 * time.Minute)).JwtID(jti).Build()
		b, err := jwt.Sign(tok, jwt.WithKey(jwa.ES384, key))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	stranger := testehr.GenerateKey(t, jwa.ES384, "stranger")
	_ = stranger.Set("kid", "conf-app-1")
	for name, a := range map[string]string{
		"wrong audience": sign("https://elsewhere/token", "j1", w.appKey),
		"wrong key":      sign(w.base+"/oauth/token", "j2", stranger),
	} {
		f := url.Values{}
		for k, v := range form {
			f[k] = v
		}
		f.Set("client_assertion_type", assertionType)
		f.Set("client_assertion", a)
		if st, m := w.redeem(t, f); st != http.StatusUnauthorized {
			t.Errorf("%s: %d %v", name, st, m)
		}
	}
	good := sign(w.base+"/oauth/token", "j3", w.appKey)
	form.Set("client_assertion_type", assertionType)
	form.Set("client_assertion", good)
	if st, m := w.redeem(t, form); st != http.StatusOK {
		t.Fatalf("confidential app: %d %v", st, m)
	}
	// The same assertion again (with another code) is refused.
	code2 := func() string {
		c := w.browser(t, true)
		body := w.consent(t, c, mod)
		resp := w.decide(t, c, csrfRE.FindStringSubmatch(body)[1], "approve")
		loc, _ := url.Parse(resp.Header.Get("Location"))
		return loc.Query().Get("code")
	}()
	form.Set("code", code2)
	if st, m := w.redeem(t, form); st != http.StatusUnauthorized {
		t.Errorf("replayed client assertion: %d %v", st, m)
	}
}
