package integration

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// The dual-launch routes: /dual is the route under test; /dual2 shares
// its signing_key (the worst case for route binding); /smart accepts the
// EHR's own tokens.
const (
	dualApp      = "dual-viewer"
	dualRedirect = "https://viewer.example/callback"
	dualGateway  = "imaging-dual"
	dualVerifier = "dual-verifier-0123456789-0123456789-0123456789"
)

func dualConfig(ehr *testehr.EHR, logFile string) string {
	studies, _ := filepath.Abs("../examples/demo/studies")
	signing := base64.StdEncoding.EncodeToString(make32(9))
	route := func(prefix string) string {
		return fmt.Sprintf(`	handle_path /%[1]s/* {
		smart_imaging {
			authz smart-on-fhir-independent {
				fhir_base_url %[2]s
				client_id %[3]s
				signing_key %[4]s
				mrn_system %[5]s
				app %[6]s {
					redirect_uri %[7]s
				}
			}
			images folder %[8]s {
				lookup studies-by-mrn
			}
			study_token_key %[9]s
			base_url http://localhost:9080/%[1]s
		}
	}
`, prefix, ehr.FHIRBase(), dualGateway, signing, smartMRNSystem, dualApp, dualRedirect, studies,
			base64.StdEncoding.EncodeToString(testKey))
	}
	return testGlobals + globalLogOption(logFile) + "\tgrace_period 2s\n}\nhttp://localhost:9080 {\n" + route("dual") + route("dual2") +
		fmt.Sprintf(`	handle_path /smart/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %s
				client_id %s
				client_secret {env.%s}
				patient_lookup_token caller
			}
			images folder %s {
				lookup studies-by-mrn
			}
		}
	}
}
`, ehr.FHIRBase(), smartSecretID, smartSecretEnv, studies)
}

func s256Challenge(v string) string {
	sum := sha256.Sum256([]byte(v))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func TestDualLaunchThroughCaddy(t *testing.T) {
	ehr := testehr.New(t)
	t.Setenv(smartSecretEnv, "dual-test-secret")
	ehr.RegisterClient(testehr.Client{ID: dualGateway, RedirectURIs: []string{
		"http://localhost:9080/dual/oauth/ehr-callback", "http://localhost:9080/dual2/oauth/ehr-callback"}})
	ehr.RegisterClient(testehr.Client{ID: smartSecretID, Secret: "dual-test-secret"})
	ehr.SetPatientJSON(demoPatient, []byte(`{"resourceType":"Patient","id":"`+demoPatient+`","name":[{"text":"<img src=x onerror=alert(1)>"}],
		"identifier":[{"system":"`+smartMRNSystem+`","value":"`+demoMRN+`"}]}`))
	tc := caddytest.NewTester(t)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	tc.InitServer(dualConfig(ehr, logFile), "caddyfile")
	countsBefore := opsRequestCounts(t)

	// Discovery names the endpoints and both capabilities.
	var sc map[string]any
	resp, body := plainGet(t, http.DefaultClient, base+"/dual/fhir/.well-known/smart-configuration")
	if err := json.Unmarshal([]byte(body), &sc); err != nil || resp.StatusCode != 200 {
		t.Fatalf("smart-configuration: %d %s", resp.StatusCode, body)
	}
	if sc["authorization_endpoint"] != base+"/dual/oauth/authorize" || sc["token_endpoint"] != base+"/dual/oauth/token" ||
		!strings.Contains(fmt.Sprint(sc["capabilities"]), "smart-imaging-access-dual-launch") ||
		!strings.Contains(fmt.Sprint(sc["capabilities"]), "smart-imaging-access ") {
		t.Errorf("smart-configuration: %v", sc)
	}

	launch := func(t *testing.T, route string, q url.Values) (code string, page string) {
		t.Helper()
		jar, _ := cookiejar.New(nil)
		u, _ := url.Parse(ehr.URL())
		jar.SetCookies(u, []*http.Cookie{ehr.NewSession("Practitioner/dr-1", demoPatient)})
		c := &http.Client{Jar: jar, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
			if r.URL.Host == "viewer.example" {
				return http.ErrUseLastResponse
			}
			return nil
		}}
		p := url.Values{"response_type": {"code"}, "client_id": {dualApp}, "redirect_uri": {dualRedirect},
			"scope": {"launch/patient patient/ImagingStudy.rs"}, "state": {"s1"}, "aud": {base + "/" + route + "/fhir"},
			"code_challenge": {s256Challenge(dualVerifier)}, "code_challenge_method": {"S256"}}
		for k, v := range q {
			p[k] = v
		}
		resp, page := plainGet(t, c, base+"/"+route+"/oauth/authorize?"+p.Encode())
		if resp.StatusCode != 200 {
			return "", fmt.Sprintf("%d %s %s", resp.StatusCode, resp.Header.Get("Location"), page)
		}
		m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("no consent form: %s", page)
		}
		resp, err := c.PostForm(base+"/"+route+"/oauth/decision", url.Values{"csrf": {m[1]}, "decision": {"approve"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, _ := url.Parse(resp.Header.Get("Location"))
		return loc.Query().Get("code"), page
	}
	redeem := func(t *testing.T, route, code string) (int, map[string]any) {
		t.Helper()
		resp, err := http.PostForm(base+"/"+route+"/oauth/token", url.Values{"grant_type": {"authorization_code"},
			"code": {code}, "redirect_uri": {dualRedirect}, "client_id": {dualApp}, "code_verifier": {dualVerifier}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}

	code, page := launch(t, "dual", nil)
	if code == "" {
		t.Fatalf("no code: %s", page)
	}
	if strings.Contains(page, "<img src=x") || !strings.Contains(page, "&lt;img src=x") {
		t.Errorf("the consent page does not escape the patient's name:\n%s", page)
	}
	st, tok := redeem(t, "dual", code)
	if st != 200 || tok["patient"] != demoPatient {
		t.Fatalf("token: %d %v", st, tok)
	}
	access := tok["access_token"].(string)
	if st, m := redeem(t, "dual", code); st != http.StatusBadRequest || m["error"] != "invalid_grant" {
		t.Errorf("replayed code: %d %v", st, m)
	}

	bearer := func(tok string) *caddytest.Tester {
		c := *tc
		c.Client = &http.Client{Transport: bearerTransport{tok: tok, next: tc.Client.Transport}}
		return &c
	}
	corpus := readCorpus(t)
	want := keys(corpus.byPatient[demoMRN])
	res := search(t, bearer(access), base+"/dual/fhir/ImagingStudy?patient="+demoPatient)
	if got := keys(res.studies); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("studies = %v, want %v", got, want)
	}
	// WADO under the study address, with the same token.
	for uid, addr := range res.endpoints {
		fhirFetch(t, bearer(access), addr+"/studies/"+uid+"/metadata", "application/dicom+json", http.StatusOK)
		fhirFetch(t, bearer(""), addr+"/studies/"+uid+"/metadata", "application/dicom+json", http.StatusUnauthorized)
		break
	}
	// Patient-bound: another patient is refused.
	getJSON(t, bearer(access), base+"/dual/fhir/ImagingStudy?patient=someone-else", http.StatusForbidden)
	// Never on another route: the twin route with the same signing_key, and
	// a smart-on-fhir route.
	getJSON(t, bearer(access), base+"/dual2/fhir/ImagingStudy?patient="+demoPatient, http.StatusUnauthorized)
	getJSON(t, bearer(access), base+"/smart/fhir/ImagingStudy?patient="+demoPatient, http.StatusUnauthorized)
	// A code is not a token; a code from one route does not redeem at the other.
	getJSON(t, bearer(code), base+"/dual/fhir/ImagingStudy?patient="+demoPatient, http.StatusUnauthorized)
	code2, _ := launch(t, "dual", nil)
	if st, m := redeem(t, "dual2", code2); st == 200 {
		t.Errorf("a /dual code redeemed at /dual2: %v", m)
	}
	// Unregistered redirect: an error page, no redirect.
	if c, page := launch(t, "dual", url.Values{"redirect_uri": {"https://evil.example/cb"}}); c != "" || !strings.HasPrefix(page, "400  ") {
		t.Errorf("unregistered redirect_uri: %q", page[:min(len(page), 80)])
	}
	// A public app without PKCE is sent back with an error.
	if c, page := launch(t, "dual", url.Values{"code_challenge": {""}, "code_challenge_method": {""}}); c != "" ||
		!strings.Contains(page, "viewer.example/callback?error=invalid_request") {
		t.Errorf("no PKCE: %q", page[:min(len(page), 120)])
	}
	// The CapabilityStatement names the route's own OAuth endpoints.
	md, _ := getJSON(t, tc, base+"/dual/fhir/metadata", http.StatusOK)
	if b, _ := json.Marshal(md); !strings.Contains(string(b), `"valueUri":"`+base+`/dual/oauth/authorize"`) ||
		!strings.Contains(string(b), `"valueUri":"`+base+`/dual/oauth/token"`) {
		t.Errorf("/dual/fhir/metadata does not list the OAuth endpoints: %s", b)
	}
	// /oauth/* requests are counted and audited like search and retrieve,
	// without any code, token, verifier or state in the audit lines.
	after := opsRequestCounts(t)
	for k, want := range map[string]float64{
		"/dual oauth_authorize ok 302":      2, // the two launches (code, code2)
		"/dual oauth_ehr_callback ok 200":   2, // their consent pages
		"/dual oauth_decision ok 302":       2,
		"/dual oauth_token ok 200":          1,
		"/dual oauth_token refused 400":     1, // the replayed code
		"/dual2 oauth_token refused 400":    1, // code2 at the twin route
		"/dual oauth_authorize refused 400": 1, // unregistered redirect_uri: error page
		"/dual oauth_authorize refused 302": 1, // no PKCE: sent back with an error
	} {
		if got := after[k] - countsBefore[k]; got != want {
			t.Errorf("%s grew by %v, want %v", k, got, want)
		}
	}
	secrets := []string{code, code2, access, dualVerifier, "s1"}
	var audited int
	deadline := time.Now().Add(5 * time.Second)
	for {
		audited = 0
		for _, l := range readLogLines(t, logFile) {
			if strings.Contains(l, `"logger":"http.handlers.smart_imaging.audit"`) && strings.Contains(l, `"action":"oauth_`) {
				audited++
				for _, s := range secrets {
					if strings.Contains(l, `"`+s+`"`) || (len(s) > 8 && strings.Contains(l, s)) {
						t.Errorf("an audit line holds a secret (%.6s…): %s", s, l)
					}
				}
			}
		}
		if audited >= 11 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if audited < 11 {
		t.Errorf("%d audit lines for /oauth/* requests, want 11", audited)
	}

	// Other routes' /oauth is not served.
	resp, _ = plainGet(t, http.DefaultClient, base+"/smart/oauth/authorize")
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/smart/oauth/authorize: %d", resp.StatusCode)
	}
}

type bearerTransport struct {
	tok  string
	next http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.tok != "" {
		r.Header.Set("Authorization", "Bearer "+b.tok)
	}
	next := b.next
	if next == nil {
		next = http.DefaultTransport
	}
	return next.RoundTrip(r)
}

func plainGet(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}
