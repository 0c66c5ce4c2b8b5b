package integration

// End-to-end test of the sample viewer (examples/viewer) in a real headless
// Chromium, driven over the Chrome DevTools Protocol through
// --remote-debugging-pipe: no Node.js, no websocket library, no browser
// download. Chromium comes from Debian's chromium package (.ci/run installs
// it); the test is skipped when it is missing, unless
// SIA_REQUIRE_BROWSER=1, and in -short mode. SIA_CHROMIUM names another
// browser binary; CDP_DEBUG=1 prints every DevTools event to stderr.
//
// Screenshots go to integration/artifacts/ (viewer-*.png; on failure,
// viewer-failure-*.png with the page state and browser log in the message).

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

const (
	viewerURL              = base + "/viewer/"
	viewerClient           = "viewer-test"
	viewerGatewayClient    = "viewer-gateway"
	viewerGatewaySecretEnv = "SIA_VIEWER_GATEWAY_SECRET"
	viewerMRNSystem        = "urn:sia:viewer-test:mrn"
	ehrLaunchContext       = "launch-123"
	viewerDualGateway      = "viewer-dual-gateway"
	waitTimeout            = 20 * time.Second
)

// viewerConfig is the demo's routes plus the viewer, a SMART route (the
// imaging server of the SMART launch: authz smart-on-fhir, which
// introspects the viewer's access token at the test EHR), and a route
// whose PACS (DICOMweb upstream) is down, and a dual-launch route (authz
// smart-on-fhir-independent, chained to the same test EHR, the viewer
// registered as a public app). Global options as in demoConfig: one Caddy
// serves every test of the package.
func viewerConfig(gatewayEHR string, downPort int) string {
	studies, _ := filepath.Abs("../examples/demo/studies")
	viewer, _ := filepath.Abs("../examples/viewer")
	key := base64.StdEncoding.EncodeToString(testKey)
	return fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	handle_path /viewer/* {
		root * %[5]s
		file_server
	}
	handle_path /open/* {
		smart_imaging {
			authz mock {
				disable_authz_checks
			}
			images folder %[1]s {
				lookup all-studies
			}
			study_token_key %[2]s
		}
	}
	handle_path /hardcoded-patient/* {
		smart_imaging {
			authz mock {
				patient %[3]s mrn %[4]s
			}
			images folder %[1]s {
				lookup studies-by-mrn
			}
			study_token_key %[2]s
		}
	}
	handle_path /smart/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[6]s
				client_id %[7]s
				client_secret {env.%[8]s}
				mrn_system %[9]s
			}
			images folder %[1]s {
				lookup studies-by-mrn
			}
			study_token_key %[2]s
		}
	}
	# Dual launch: the route is its own SMART authorization server.
	handle_path /dual/* {
		smart_imaging {
			authz smart-on-fhir-independent {
				fhir_base_url %[6]s
				client_id %[11]s
				signing_key %[12]s
				mrn_system %[9]s
				app %[13]s {
					redirect_uri %[14]s
				}
			}
			images folder %[1]s {
				lookup studies-by-mrn
			}
			study_token_key %[2]s
		}
	}
	# The patient route in front of a PACS that is down.
	handle_path /pacs-down/* {
		smart_imaging {
			authz mock {
				patient %[3]s mrn %[4]s
			}
			images dicomweb http://127.0.0.1:%[10]d/dicom-web {
				lookup studies-by-mrn
			}
			study_token_key %[2]s
		}
	}
}
`, studies, key, demoPatient, demoMRN, viewer, gatewayEHR, viewerGatewayClient, viewerGatewaySecretEnv, viewerMRNSystem, downPort,
		viewerDualGateway, base64.StdEncoding.EncodeToString(make32(23)), viewerClient, viewerURL)
}

func TestViewerInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("viewer browser test skipped in -short mode")
	}
	chrome := findChromium(t)
	ehr := newFakeEHR(t)
	downPort := viewerClosedPort(t)
	tc := caddytest.NewTester(t)
	tc.InitServer(viewerConfig(ehr.gateway.FHIRBase(), downPort), "caddyfile")
	b := startBrowser(t, chrome)
	if err := os.MkdirAll("artifacts", 0o755); err != nil {
		t.Fatal(err)
	}

	t.Run("demo routes: studies, series, images", func(t *testing.T) {
		p := b.newPage(t)
		p.navigate(viewerURL)
		p.waitFor("the open route's six studies", `document.querySelectorAll('#studies tbody tr').length === 6`)
		rows := p.tableText("studies")
		if !viewerHasRow(rows, "2024-01-02 14:15", "MR BRAIN WITH AND WITHOUT CONTRAST", "MR, OT", "3", "7", "Danae Kshlerin") {
			t.Errorf("study list lacks the MR brain study with date, modalities and counts:\n%s", strings.Join(rows, "\n"))
		}
		if !viewerHasRow(rows, "CT ABDOMEN PELVIS", "CT", "1", "3", "Alice Test") {
			t.Errorf("study list lacks the CT abdomen study:\n%s", strings.Join(rows, "\n"))
		}

		p.chooseServer("Demo: hard-coded patient")
		p.waitFor("the patient's two studies", `document.querySelectorAll('#studies tbody tr').length === 2`)
		for _, r := range p.tableText("studies") {
			if !strings.Contains(r, "Danae Kshlerin") {
				t.Errorf("hard-coded patient route lists another patient's study: %s", r)
			}
		}

		p.click(`#studies tbody tr[data-uid="2.25.2718281828459045235360287.1.1.2"]`)
		p.waitFor("the series list", `document.querySelectorAll('#series tbody tr').length === 3`)
		if rows := p.tableText("series"); !viewerHasRow(rows, "1", "MR", "T1 AX", "HEAD", "3") || !viewerHasRow(rows, "OT", "CINE 8 FRAMES", "1") {
			t.Errorf("series list:\n%s", strings.Join(rows, "\n"))
		}

		p.click(`#series tbody tr[data-uid="2.25.2718281828459045235360287.1.1.2.1"]`)
		p.waitImage("1/1")
		first := p.canvasStats()
		first.mustShowAnImage(t, "first T1 image")
		p.screenshot("artifacts/viewer-series.png")
		if got := p.text("image-pos"); got != "Image 1 / 3" {
			t.Errorf("position = %q, want Image 1 / 3", got)
		}

		p.click("#next-image")
		p.waitImage("2/1")
		second := p.canvasStats()
		second.mustShowAnImage(t, "second T1 image")
		if second.Hash == first.Hash {
			t.Error("next image shows the same pixels as the first")
		}

		wl := p.text("wl-value")
		p.drag("#canvas", 120, -60)
		p.waitFor("a new window/level", fmt.Sprintf(`document.getElementById('wl-value').textContent !== %q`, wl))
		dragged := p.canvasStats()
		if dragged.Hash == second.Hash {
			t.Errorf("window/level drag (%s → %s) did not change the image", wl, p.text("wl-value"))
		}
		dragged.mustShowAnImage(t, "after window/level drag")

		p.click("#rendered")
		p.waitFor("the server-rendered image", `document.getElementById('image-note').textContent.includes('Rendered by the server') && document.getElementById('canvas').dataset.state === 'ready'`)
		p.canvasStats().mustShowAnImage(t, "server-rendered PNG")
		p.click("#rendered")
		p.waitFor("decoded pixels again", `document.getElementById('image-note').textContent.includes('decoded in the page') && document.getElementById('canvas').dataset.state === 'ready'`)

		p.click(`#series tbody tr[data-uid="2.25.2718281828459045235360287.1.1.2.3"]`)
		p.waitImage("1/1")
		if got := p.text("frame-pos"); got != "Frame 1 / 8" {
			t.Errorf("multi-frame position = %q, want Frame 1 / 8", got)
		}
		f1 := p.canvasStats()
		f1.mustShowAnImage(t, "frame 1")
		p.click("#next-frame")
		p.waitImage("1/2")
		f2 := p.canvasStats()
		f2.mustShowAnImage(t, "frame 2")
		if f2.Hash == f1.Hash {
			t.Error("frame 2 shows the same pixels as frame 1")
		}
		if got := p.text("frame-pos"); got != "Frame 2 / 8" {
			t.Errorf("multi-frame position = %q, want Frame 2 / 8", got)
		}
		p.screenshot("artifacts/viewer-multiframe.png")
		p.mustHaveNoErrors()
	})

	t.Run("SMART standalone launch with PKCE", func(t *testing.T) {
		exchanged := ehr.exchangeCount()
		p := b.newPage(t)
		p.navigate(viewerURL + "?" + url.Values{"iss": {ehr.fhirBase()}, "client_id": {viewerClient}}.Encode())
		p.waitFor("the Connect button", `!document.getElementById('connect').hidden`)
		p.click("#connect")
		p.waitFor("the patient's studies after login", `document.querySelectorAll('#studies tbody tr').length === 2`)
		p.waitFor("the patient read from the EHR", `document.getElementById('patient').textContent.includes('Danae Kshlerin')`)
		if got := p.eval(`location.search`); string(got) != `""` {
			t.Errorf("the authorization code stays in the address bar: %s", got)
		}
		p.click(`#studies tbody tr[data-uid="2.25.2718281828459045235360287.1.1.1"]`)
		p.waitFor("the series list", `document.querySelectorAll('#series tbody tr').length === 2`)
		p.click(`#series tbody tr[data-uid="2.25.2718281828459045235360287.1.1.1.1"]`)
		p.waitImage("1/1")
		p.canvasStats().mustShowAnImage(t, "image retrieved with the SMART token")
		p.screenshot("artifacts/viewer-smart.png")
		p.mustHaveNoErrors()
		ehr.check(t, exchanged+1)
	})

	t.Run("SMART EHR launch goes straight to the EHR", func(t *testing.T) {
		exchanged := ehr.exchangeCount()
		p := b.newPage(t)
		p.navigate(viewerURL + "?" + url.Values{"iss": {ehr.fhirBase()}, "client_id": {viewerClient}, "launch": {ehrLaunchContext}}.Encode())
		p.waitFor("the patient's studies after the EHR launch", `document.querySelectorAll('#studies tbody tr').length === 2`)
		p.waitFor("the patient read from the EHR", `document.getElementById('patient').textContent.includes('Danae Kshlerin')`)
		p.mustHaveNoErrors()
		ehr.check(t, exchanged+1)
	})

	t.Run("dual launch: EHR login, second launch at the gateway, consent, images", func(t *testing.T) {
		// The EHR here is the real code flow of the test EHR (login page,
		// session cookie, prompt=none); the viewer and the gateway are both
		// its clients. The EHR names the dual route as its imaging server.
		dehr := ehr.gateway
		dehr.AllowBrowsers()
		dehr.RegisterClient(testehr.Client{ID: viewerClient, RedirectURIs: []string{viewerURL}})
		dehr.RegisterClient(testehr.Client{ID: viewerDualGateway, RedirectURIs: []string{base + "/dual/oauth/ehr-callback"}})
		dehr.SetPatientJSON(demoPatient, []byte(`{"resourceType":"Patient","id":"`+demoPatient+`",
			"name":[{"family":"Kshlerin","given":["Danae"]}],"birthDate":"1971-05-04",
			"identifier":[{"system":"`+viewerMRNSystem+`","value":"`+demoMRN+`"}]}`))
		dehr.SetDiscovery("associated_endpoints", []any{map[string]any{"url": base + "/dual/fhir",
			"capabilities": []string{"smart-imaging-access", "smart-imaging-access-dual-launch"}}})
		t.Cleanup(func() { dehr.SetDiscovery("associated_endpoints", nil) })

		p := b.newPage(t)
		p.navigate(viewerURL + "?" + url.Values{"iss": {dehr.FHIRBase()}, "client_id": {viewerClient},
			"launch": {ehrLaunchContext}, "label": {"Dual"}}.Encode())
		// 1. The EHR launch: no EHR session yet, so the EHR's login form.
		p.waitFor("the EHR login form", `!!document.querySelector('form input[name=login_patient]')`)
		p.eval(fmt.Sprintf(`document.querySelector('input[name=login_patient]').value = %q`, demoPatient))
		p.screenshot("artifacts/viewer-dual-ehr-login.png")
		p.click(`form button[name=approve]`)
		// 2. The viewer redeems the EHR code, reads the imaging server's
		// smart-configuration and launches again there; the gateway rides
		// the EHR session (prompt=none) and asks for consent.
		p.waitFor("the gateway's consent page", `!!document.querySelector('form[action=decision] button#approve')`)
		if ehrAuth := dehr.LastAuthorizeRequest(); ehrAuth.Get("client_id") != viewerDualGateway || ehrAuth.Get("prompt") != "none" {
			t.Errorf("the gateway's trip to the EHR: client_id %q prompt %q, want %s with prompt=none",
				ehrAuth.Get("client_id"), ehrAuth.Get("prompt"), viewerDualGateway)
		}
		var consent string
		_ = json.Unmarshal(p.eval(`document.body.innerText`), &consent)
		if !strings.Contains(consent, "Kshlerin") {
			t.Errorf("the consent page does not name the patient:\n%s", consent)
		}
		p.screenshot("artifacts/viewer-dual-consent.png")
		p.click(`button#approve`)
		// 3. Back in the viewer: the gateway's token finds the patient's studies.
		p.waitFor("the patient's studies after the dual launch", `document.querySelectorAll('#studies tbody tr').length === 2`)
		p.waitFor("the patient read from the EHR", `document.getElementById('patient').textContent.includes('Danae Kshlerin')`)
		if got := p.eval(`location.search`); string(got) != `""` {
			t.Errorf("an authorization code stays in the address bar: %s", got)
		}
		var sess struct{ AccessToken, ImagingToken, Imaging string }
		_ = json.Unmarshal(p.eval(`JSON.parse(sessionStorage.getItem('sia-viewer.session'))`), &sess)
		if sess.ImagingToken == "" || sess.ImagingToken == sess.AccessToken || sess.Imaging != base+"/dual/fhir" {
			t.Errorf("the session does not hold a gateway token for %s/dual/fhir apart from the EHR's: imaging %q, gateway token set %v",
				base, sess.Imaging, sess.ImagingToken != "")
		}
		// The EHR's own token is no good at the dual route: the studies
		// were found with the gateway's.
		withEHRToken := *tc
		withEHRToken.Client = &http.Client{Transport: bearerTransport{tok: sess.AccessToken, next: tc.Client.Transport}}
		getJSON(t, &withEHRToken, base+"/dual/fhir/ImagingStudy?patient="+demoPatient, http.StatusUnauthorized)
		p.click(`#studies tbody tr[data-uid="2.25.2718281828459045235360287.1.1.1"]`)
		p.waitFor("the series list", `document.querySelectorAll('#series tbody tr').length === 2`)
		p.click(`#series tbody tr[data-uid="2.25.2718281828459045235360287.1.1.1.1"]`)
		p.waitImage("1/1")
		p.canvasStats().mustShowAnImage(t, "image retrieved with the gateway's token")
		p.screenshot("artifacts/viewer-dual.png")
		p.mustHaveNoErrors()

		// Again, now with the EHR session in the browser: no login form, both
		// launches ride it up to the consent page, where the user denies.
		d := b.newPage(t)
		d.expectError = true
		d.navigate(viewerURL + "?" + url.Values{"iss": {dehr.FHIRBase()}, "client_id": {viewerClient},
			"launch": {ehrLaunchContext}, "label": {"Dual"}}.Encode())
		d.waitFor("the consent page, without an EHR login", `!!document.querySelector('form[action=decision] button#deny')`)
		d.click(`button#deny`)
		d.waitFor("an error message", `!document.getElementById('error').hidden`)
		if msg := d.text("error"); !strings.Contains(msg, "The imaging server did not authorize the viewer: access_denied") {
			t.Errorf("after denying at the consent page the viewer says %q", msg)
		}
		if sel := d.eval(`document.getElementById('server').selectedOptions[0].textContent`); strings.Contains(string(sel), "connected") {
			t.Errorf("after denying, the viewer shows %s", sel)
		}
		d.screenshot("artifacts/viewer-dual-denied.png")
	})

	t.Run("errors are readable messages", func(t *testing.T) {
		cases := []struct {
			name, query string
			want        []string
		}{
			{"403 patient mismatch", "fhir=/hardcoded-patient/fhir&patient=someone-else",
				[]string{"Access denied", "403 Forbidden", "Server says: the patient in the request is not the patient this access token is bound to"}},
			{"401 no token", "fhir=/smart/fhir&patient=" + demoPatient,
				[]string{"needs a valid access token", "401 Unauthorized", "Server says: "}},
			{"502 PACS down", "fhir=/pacs-down/fhir&patient=" + demoPatient,
				[]string{"could not reach its image archive", "502 Bad Gateway", "Server says: "}},
			{"server unreachable", fmt.Sprintf("fhir=http://127.0.0.1:%d/fhir", downPort),
				[]string{"Could not reach http://127.0.0.1:", "the server is down"}},
			{"EHR refuses the login", "iss=" + url.QueryEscape(ehr.fhirBase()) + "&client_id=denied-client", nil},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				p := b.newPage(t)
				p.expectError = true
				p.navigate(viewerURL + "?" + c.query)
				want := c.want
				if want == nil {
					p.waitFor("the Connect button", `!document.getElementById('connect').hidden`)
					p.click("#connect")
					want = []string{"The EHR did not authorize the viewer: access_denied", "The user declined"}
				}
				p.waitFor("an error message", `!document.getElementById('error').hidden`)
				msg := p.text("error")
				for _, w := range want {
					if !strings.Contains(msg, w) {
						t.Errorf("error message %q does not say %q", msg, w)
					}
				}
				if strings.Contains(msg, "/wado/") {
					t.Errorf("error message shows a WADO path (study token): %q", msg)
				}
				visible := p.eval(`(() => { const r = document.getElementById('error').getBoundingClientRect(); return r.width > 100 && r.height > 20; })()`)
				if string(visible) != "true" {
					t.Errorf("the error box is not visible on the page")
				}
				p.screenshot("artifacts/viewer-error-" + strings.ReplaceAll(strings.Fields(c.name)[0], "/", "") + ".png")
			})
		}
	})
}

func viewerHasRow(rows []string, cells ...string) bool {
	for _, r := range rows {
		ok := true
		for _, c := range cells {
			if !strings.Contains("\t"+r+"\t", "\t"+c+"\t") {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func viewerClosedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func viewerRandomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// ---- a fake EHR: SMART discovery, authorize (auto-approve), token, Patient
//
// One EHR in two halves: this server is the half the viewer meets
// (discovery, an authorize endpoint that approves at once, the code
// exchange with its PKCE check, Patient reads, CORS); the testehr server is
// the half the gateway meets (introspection, Patient identifiers). Access
// tokens are minted with testehr's IssueToken, so both halves know them.

type fakeEHR struct {
	srv     *httptest.Server
	gateway *testehr.EHR

	mu        sync.Mutex
	codes     map[string]authRequest
	tokens    map[string]bool
	problems  []string
	exchanges int
}

type authRequest struct {
	challenge, redirectURI, clientID, scope string
}

func newFakeEHR(t *testing.T) *fakeEHR {
	t.Helper()
	e := &fakeEHR{gateway: testehr.New(t), codes: map[string]authRequest{}, tokens: map[string]bool{}}
	secret := viewerRandomHex(t, 16)
	t.Setenv(viewerGatewaySecretEnv, secret)
	e.gateway.RegisterClient(testehr.Client{ID: viewerGatewayClient, Secret: secret})
	e.gateway.AddPatient(demoPatient, testehr.Identifier{System: viewerMRNSystem, Value: demoMRN, TypeCode: "MR"})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fhir/.well-known/smart-configuration", e.discovery)
	mux.HandleFunc("GET /authorize", e.authorize)
	mux.HandleFunc("POST /token", e.token)
	mux.HandleFunc("GET /fhir/Patient/{id}", e.patient)
	e.srv = httptest.NewServer(ehrCORS(mux))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *fakeEHR) fhirBase() string { return e.srv.URL + "/fhir" }

func (e *fakeEHR) problem(format string, args ...any) {
	e.mu.Lock()
	e.problems = append(e.problems, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

// exchangeCount is the number of codes exchanged for tokens so far.
func (e *fakeEHR) exchangeCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.exchanges
}

// check fails the test on any protocol problem the EHR saw and unless
// exactly wantExchanges codes were exchanged in all.
func (e *fakeEHR) check(t *testing.T, wantExchanges int) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.problems {
		t.Errorf("fake EHR: %s", p)
	}
	if e.exchanges != wantExchanges {
		t.Errorf("fake EHR: %d successful code exchanges, want %d", e.exchanges, wantExchanges)
	}
}

func ehrCORS(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		if r.Method == http.MethodOptions {
			w.Header().Set("Access-Control-Allow-Methods", "GET, POST")
			w.Header().Set("Access-Control-Allow-Headers", "Authorization, Accept, Content-Type")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func ehrJSON(w http.ResponseWriter, status int, ct string, v any) {
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (e *fakeEHR) discovery(w http.ResponseWriter, _ *http.Request) {
	ehrJSON(w, http.StatusOK, "application/json", map[string]any{
		"issuer":                           e.srv.URL,
		"authorization_endpoint":           e.srv.URL + "/authorize",
		"token_endpoint":                   e.srv.URL + "/token",
		"code_challenge_methods_supported": []string{"S256"},
		"capabilities":                     []string{"launch-standalone", "client-public", "context-standalone-patient", "permission-patient"},
		"associated_endpoints": []any{
			map[string]any{"url": "http://elsewhere.invalid/fhir", "capabilities": []string{"other"}},
			map[string]any{"url": base + "/smart/fhir", "capabilities": []string{"smart-imaging-access"}},
		},
	})
}

// authorize approves at once: it redirects back with a code, or with
// error=access_denied for the client "denied-client".
func (e *fakeEHR) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	bad := func(msg string) {
		e.problem("authorize: %s (query %s)", msg, r.URL.RawQuery)
		http.Error(w, msg, http.StatusBadRequest)
	}
	switch {
	case q.Get("response_type") != "code":
		bad("response_type is not code")
		return
	case q.Get("redirect_uri") != viewerURL:
		bad("redirect_uri is not the viewer page")
		return
	case q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43:
		bad("no S256 code_challenge")
		return
	case q.Get("aud") != e.fhirBase():
		bad("aud is not the EHR's FHIR base")
		return
	case q.Get("state") == "":
		bad("no state")
		return
	case !strings.Contains(" "+q.Get("scope")+" ", " launch/patient ") &&
		!(q.Get("launch") != "" && strings.Contains(" "+q.Get("scope")+" ", " launch ")):
		bad("scope lacks launch/patient (standalone) or launch (EHR launch)")
		return
	case q.Get("launch") != "" && q.Get("launch") != ehrLaunchContext:
		bad("unknown launch context")
		return
	}
	back, _ := url.Parse(q.Get("redirect_uri"))
	v := url.Values{"state": {q.Get("state")}}
	switch q.Get("client_id") {
	case viewerClient:
		code := viewerRandomCode()
		e.mu.Lock()
		e.codes[code] = authRequest{challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri"),
			clientID: q.Get("client_id"), scope: q.Get("scope")}
		e.mu.Unlock()
		v.Set("code", code)
	case "denied-client":
		v.Set("error", "access_denied")
		v.Set("error_description", "The user declined")
	default:
		bad("unknown client_id")
		return
	}
	back.RawQuery = v.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

func viewerRandomCode() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (e *fakeEHR) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		ehrJSON(w, http.StatusBadRequest, "application/json", map[string]string{"error": "invalid_request"})
		return
	}
	f := r.PostForm
	e.mu.Lock()
	req, ok := e.codes[f.Get("code")]
	delete(e.codes, f.Get("code"))
	e.mu.Unlock()
	sum := sha256.Sum256([]byte(f.Get("code_verifier")))
	var msg string
	switch {
	case f.Get("grant_type") != "authorization_code":
		msg = "grant_type is not authorization_code"
	case !ok:
		msg = "unknown or reused code"
	case f.Get("redirect_uri") != req.redirectURI:
		msg = "redirect_uri differs from the authorize request"
	case f.Get("client_id") != req.clientID:
		msg = "client_id differs from the authorize request"
	case base64.RawURLEncoding.EncodeToString(sum[:]) != req.challenge:
		msg = "code_verifier does not match the code_challenge"
	}
	if msg != "" {
		e.problem("token: %s", msg)
		ehrJSON(w, http.StatusBadRequest, "application/json", map[string]string{"error": "invalid_grant", "error_description": msg})
		return
	}
	scope := req.scope
	tok := e.gateway.IssueToken(testehr.TokenSpec{Patient: demoPatient, Scope: scope, ClientID: viewerClient})
	e.mu.Lock()
	e.exchanges++
	e.tokens[tok] = true
	e.mu.Unlock()
	ehrJSON(w, http.StatusOK, "application/json", map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   3600,
		"scope":        scope,
		"patient":      demoPatient,
	})
}

func (e *fakeEHR) patient(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	known := e.tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	e.mu.Unlock()
	if !known {
		e.problem("Patient read without the access token")
		ehrJSON(w, http.StatusUnauthorized, "application/fhir+json", map[string]any{"resourceType": "OperationOutcome"})
		return
	}
	if r.PathValue("id") != demoPatient {
		e.problem("Patient read of %q, want the patient in context", r.PathValue("id"))
		ehrJSON(w, http.StatusForbidden, "application/fhir+json", map[string]any{"resourceType": "OperationOutcome"})
		return
	}
	ehrJSON(w, http.StatusOK, "application/fhir+json", map[string]any{
		"resourceType": "Patient",
		"id":           demoPatient,
		"name":         []any{map[string]any{"family": "Kshlerin", "given": []string{"Danae"}}},
		"birthDate":    "1971-05-04",
	})
}

// ---- a headless Chromium over the DevTools protocol (pipe transport) ------

func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SIA_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no Chromium found (install Debian's chromium package, as .ci/run does, or set SIA_CHROMIUM=/path/to/chrome)"
	if os.Getenv("SIA_REQUIRE_BROWSER") == "1" {
		t.Fatal("SIA_REQUIRE_BROWSER=1 but " + msg)
	}
	t.Skip("viewer browser test skipped: " + msg)
	return ""
}

type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

type cdpBrowser struct {
	cmd    *exec.Cmd
	toB    *os.File // Chromium reads commands from its fd 3
	fromB  *os.File // and writes answers and events to its fd 4
	exited chan struct{}

	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpMessage
	logs    map[string][]string // by session: console output and exceptions
}

// startBrowser starts Chromium headless with the flags this machine needs
// (no sandbox as root, no background network traffic) and a fresh profile.
func startBrowser(t *testing.T, path string) *cdpBrowser {
	t.Helper()
	profile := t.TempDir()
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	evR, evW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
		"--user-data-dir="+profile, "--remote-debugging-pipe", "about:blank")
	cmd.ExtraFiles = []*os.File{cmdR, evW}
	var stderr strings.Builder
	var stderrMu sync.Mutex
	cmd.Stderr = cdpWriterFunc(func(p []byte) (int, error) {
		stderrMu.Lock()
		defer stderrMu.Unlock()
		if stderr.Len() < 64<<10 {
			stderr.Write(p)
		}
		return len(p), nil
	})
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	cmdR.Close()
	evW.Close()
	b := &cdpBrowser{cmd: cmd, toB: cmdW, fromB: evR, exited: make(chan struct{}),
		pending: map[int]chan cdpMessage{}, logs: map[string][]string{}}
	go func() {
		_ = cmd.Wait()
		close(b.exited)
	}()
	go b.read()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.call(ctx, "", "Browser.close", nil, nil)
		select {
		case <-b.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-b.exited
		}
		b.toB.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var v struct{ Product string }
	if err := b.call(ctx, "", "Browser.getVersion", nil, &v); err != nil {
		stderrMu.Lock()
		defer stderrMu.Unlock()
		t.Fatalf("Chromium did not answer on the DevTools pipe: %v\nstderr:\n%s", err, stderr.String())
	}
	t.Logf("browser: %s", v.Product)
	return b
}

type cdpWriterFunc func([]byte) (int, error)

func (f cdpWriterFunc) Write(p []byte) (int, error) { return f(p) }

func (b *cdpBrowser) read() {
	r := bufio.NewReader(b.fromB)
	for {
		raw, err := r.ReadBytes(0)
		if err != nil {
			b.mu.Lock()
			for id, ch := range b.pending {
				close(ch)
				delete(b.pending, id)
			}
			b.mu.Unlock()
			return
		}
		var m cdpMessage
		if json.Unmarshal(raw[:len(raw)-1], &m) != nil {
			continue
		}
		if m.ID != 0 {
			b.mu.Lock()
			ch := b.pending[m.ID]
			delete(b.pending, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m
			}
			continue
		}
		if os.Getenv("CDP_DEBUG") != "" {
			fmt.Fprintf(os.Stderr, "CDP %s %s %.3000s\n", m.SessionID, m.Method, m.Params)
		}
		if line := cdpLogLine(m); line != "" {
			b.mu.Lock()
			b.logs[m.SessionID] = append(b.logs[m.SessionID], line)
			b.mu.Unlock()
		}
	}
}

// cdpLogLine turns console calls, uncaught exceptions and browser log entries
// into one line each.
func cdpLogLine(m cdpMessage) string {
	switch m.Method {
	case "Runtime.consoleAPICalled":
		var p struct {
			Type string
			Args []struct {
				Value       any
				Description string
			}
		}
		_ = json.Unmarshal(m.Params, &p)
		var parts []string
		for _, a := range p.Args {
			if a.Value != nil {
				parts = append(parts, fmt.Sprint(a.Value))
			} else {
				parts = append(parts, a.Description)
			}
		}
		return "console." + p.Type + ": " + strings.Join(parts, " ")
	case "Runtime.exceptionThrown":
		var p struct {
			ExceptionDetails struct {
				Text      string
				Exception struct{ Description string }
			}
		}
		_ = json.Unmarshal(m.Params, &p)
		return "exception: " + p.ExceptionDetails.Text + " " + p.ExceptionDetails.Exception.Description
	case "Log.entryAdded":
		var p struct {
			Entry struct{ Level, Source, Text, URL string }
		}
		_ = json.Unmarshal(m.Params, &p)
		return fmt.Sprintf("log.%s (%s): %s %s", p.Entry.Level, p.Entry.Source, p.Entry.Text, p.Entry.URL)
	}
	return ""
}

// call sends one DevTools command (to a page session, or to the browser
// when session is "") and decodes its result into out.
func (b *cdpBrowser) call(ctx context.Context, session, method string, params, out any) error {
	if params == nil {
		params = struct{}{}
	}
	p, err := json.Marshal(params)
	if err != nil {
		return err
	}
	ch := make(chan cdpMessage, 1)
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	b.pending[id] = ch
	b.mu.Unlock()
	msg, _ := json.Marshal(cdpMessage{ID: id, SessionID: session, Method: method, Params: p})
	if _, err := b.toB.Write(append(msg, 0)); err != nil {
		return fmt.Errorf("%s: writing to the browser: %w", method, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return fmt.Errorf("%s: the browser closed the DevTools pipe", method)
		}
		if m.Error != nil {
			return fmt.Errorf("%s: %s", method, m.Error.Message)
		}
		if out != nil {
			return json.Unmarshal(m.Result, out)
		}
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		delete(b.pending, id)
		b.mu.Unlock()
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

type cdpPage struct {
	t       *testing.T
	b       *cdpBrowser
	session string
	// expectError stops waitFor from failing fast when the viewer shows an
	// error message.
	expectError bool
}

// newPage opens a tab of 1280×1000 CSS pixels, closed when t ends.
func (b *cdpBrowser) newPage(t *testing.T) *cdpPage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var target struct{ TargetID string }
	if err := b.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		t.Fatal(err)
	}
	var att struct{ SessionID string }
	if err := b.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		t.Fatal(err)
	}
	p := &cdpPage{t: t, b: b, session: att.SessionID}
	for _, m := range []string{"Runtime.enable", "Page.enable", "Log.enable"} {
		p.do(m, nil, nil)
	}
	if os.Getenv("CDP_DEBUG") != "" {
		p.do("Network.enable", nil, nil)
	}
	p.do("Emulation.setDeviceMetricsOverride", map[string]any{"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false}, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.call(ctx, "", "Target.closeTarget", map[string]any{"targetId": target.TargetID}, nil)
	})
	return p
}

func (p *cdpPage) do(method string, params, out any) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := p.b.call(ctx, p.session, method, params, out); err != nil {
		p.fail("%v", err)
	}
}

// fail ends the test with what the page shows and logged, and a screenshot.
func (p *cdpPage) fail(format string, args ...any) {
	p.t.Helper()
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, p.t.Name())
	shot := filepath.Join("artifacts", "viewer-failure-"+name+".png")
	p.trySave(shot)
	state, _ := p.tryEval(`JSON.stringify({url: location.href, ready: document.readyState, status: document.getElementById('status')?.textContent, error: document.getElementById('error')?.textContent, html: document.documentElement.outerHTML.slice(0, 300)})`)
	p.b.mu.Lock()
	logs := strings.Join(p.b.logs[p.session], "\n")
	p.b.mu.Unlock()
	p.t.Fatalf("%s\npage: %s\nbrowser log:\n%s\nscreenshot: %s", fmt.Sprintf(format, args...), state, logs, shot)
}

func (p *cdpPage) navigate(u string) {
	p.t.Helper()
	var res struct{ ErrorText string }
	p.do("Page.navigate", map[string]any{"url": u}, &res)
	if res.ErrorText != "" {
		p.fail("navigate %s: %s", u, res.ErrorText)
	}
	p.waitFor("the page to load", `document.readyState === 'complete' && location.href !== 'about:blank'`)
}

// tryEval evaluates a JavaScript expression (awaiting promises) and returns
// its JSON value.
func (p *cdpPage) tryEval(expr string) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var res struct {
		Result struct {
			Type  string
			Value json.RawMessage
		}
		ExceptionDetails *struct {
			Text      string
			Exception struct{ Description string }
		}
	}
	err := p.b.call(ctx, p.session, "Runtime.evaluate", map[string]any{
		"expression": expr, "awaitPromise": true, "returnByValue": true,
	}, &res)
	if err != nil {
		return nil, err
	}
	if res.ExceptionDetails != nil {
		return nil, fmt.Errorf("%s %s", res.ExceptionDetails.Text, res.ExceptionDetails.Exception.Description)
	}
	if res.Result.Value == nil {
		return json.RawMessage("null"), nil
	}
	return res.Result.Value, nil
}

func (p *cdpPage) eval(expr string) json.RawMessage {
	p.t.Helper()
	v, err := p.tryEval(expr)
	if err != nil {
		p.fail("evaluating %s: %v", expr, err)
	}
	return v
}

// waitFor polls a JavaScript condition until it holds. Evaluation errors
// (a page navigating away mid-call) count as "not yet". Unless the page
// expects one, an error message shown by the viewer fails at once.
func (p *cdpPage) waitFor(what, cond string) {
	p.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		v, err := p.tryEval(`(() => { if (` + cond + `) return "ok";
			const e = document.getElementById('error'); return e && !e.hidden ? "error" : ""; })()`)
		if err == nil && string(v) == `"ok"` {
			return
		}
		if err == nil && string(v) == `"error"` && !p.expectError {
			p.fail("the viewer shows an error while waiting for %s", what)
		}
		lastErr = err
		if time.Now().After(deadline) {
			p.fail("timed out after %v waiting for %s (%s); last error: %v", waitTimeout, what, cond, lastErr)
		}
		<-tick.C
	}
}

func (p *cdpPage) waitImage(pos string) {
	p.t.Helper()
	p.waitFor("image "+pos+" on the canvas", fmt.Sprintf(`(() => { const c = document.getElementById('canvas'); return c.dataset.state === 'ready' && c.dataset.image === %q; })()`, pos))
}

func (p *cdpPage) text(id string) string {
	p.t.Helper()
	var s string
	_ = json.Unmarshal(p.eval(fmt.Sprintf(`document.getElementById(%q).textContent.trim()`, id)), &s)
	return s
}

// tableText returns each body row of a table as tab-separated cell text.
func (p *cdpPage) tableText(id string) []string {
	p.t.Helper()
	var rows []string
	_ = json.Unmarshal(p.eval(fmt.Sprintf(`[...document.querySelectorAll('#%s tbody tr')].map(tr => [...tr.cells].map(c => c.textContent.trim()).join('\t'))`, id)), &rows)
	return rows
}

// center scrolls an element into view and returns its center in CSS pixels.
func (p *cdpPage) center(selector string) (x, y float64) {
	p.t.Helper()
	var pt *struct{ X, Y float64 }
	_ = json.Unmarshal(p.eval(fmt.Sprintf(`(() => { const el = document.querySelector(%q); if (!el || el.hidden) return null;
		el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();
		return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()`, selector)), &pt)
	if pt == nil {
		p.fail("no visible element %s", selector)
	}
	return pt.X, pt.Y
}

func (p *cdpPage) mouse(typ string, x, y float64, buttons int) {
	p.t.Helper()
	params := map[string]any{"type": typ, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1}
	if typ == "mouseMoved" && buttons == 0 {
		params["button"] = "none"
	}
	p.do("Input.dispatchMouseEvent", params, nil)
}

// click clicks an element with real mouse events.
func (p *cdpPage) click(selector string) {
	p.t.Helper()
	x, y := p.center(selector)
	p.mouse("mouseMoved", x, y, 0)
	p.mouse("mousePressed", x, y, 1)
	p.mouse("mouseReleased", x, y, 0)
}

// drag presses the mouse on an element's center and moves it by dx, dy.
func (p *cdpPage) drag(selector string, dx, dy float64) {
	p.t.Helper()
	x, y := p.center(selector)
	p.mouse("mouseMoved", x, y, 0)
	p.mouse("mousePressed", x, y, 1)
	for i := 1; i <= 5; i++ {
		p.mouse("mouseMoved", x+dx*float64(i)/5, y+dy*float64(i)/5, 1)
	}
	p.mouse("mouseReleased", x+dx, y+dy, 0)
}

// chooseServer picks a server in the drop-down by its label, as a keyboard
// user would (native select pop-ups do not take synthetic clicks headless).
func (p *cdpPage) chooseServer(label string) {
	p.t.Helper()
	ok := p.eval(fmt.Sprintf(`(() => { const s = document.getElementById('server');
		const o = [...s.options].find(o => o.textContent === %q); if (!o) return false;
		s.focus(); s.value = o.value; s.dispatchEvent(new Event('change', {bubbles: true})); return true; })()`, label))
	if string(ok) != "true" {
		p.fail("no server %q in the list", label)
	}
}

type canvasStats struct {
	Mean, Variance float64
	Levels         int
	Hash           int64
}

func (p *cdpPage) canvasStats() canvasStats {
	p.t.Helper()
	var s canvasStats
	_ = json.Unmarshal(p.eval(`(() => { const c = document.getElementById('canvas');
		const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
		let n = 0, sum = 0, sum2 = 0, h = 0; const levels = new Set();
		for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i+1] + d[i+2]) / 3;
			sum += v; sum2 += v * v; n++; levels.add(v); h = (Math.imul(h, 31) + d[i]) | 0; }
		const mean = sum / n; return {mean, variance: sum2 / n - mean * mean, levels: levels.size, hash: h}; })()`), &s)
	return s
}

// mustShowAnImage fails unless the canvas holds an image: many gray levels
// and real contrast, not a blank, black or single-color canvas.
func (s canvasStats) mustShowAnImage(t *testing.T, what string) {
	t.Helper()
	if s.Levels < 16 || s.Variance < 50 {
		t.Errorf("%s: the canvas looks blank (mean %.1f, variance %.1f, %d gray levels)", what, s.Mean, s.Variance, s.Levels)
	}
}

func (p *cdpPage) trySave(path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var shot struct{ Data string }
	if err := p.b.call(ctx, p.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot); err != nil {
		return err
	}
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		return err
	}
	return os.WriteFile(path, png, 0o644)
}

// screenshot saves the page as a PNG test artifact.
func (p *cdpPage) screenshot(path string) {
	p.t.Helper()
	if err := p.trySave(path); err != nil {
		p.t.Errorf("screenshot %s: %v", path, err)
		return
	}
	p.t.Logf("screenshot: integration/%s", path)
}

// mustHaveNoErrors fails when the page shows an error or threw one.
func (p *cdpPage) mustHaveNoErrors() {
	p.t.Helper()
	if string(p.eval(`document.getElementById('error').hidden`)) != "true" {
		p.t.Errorf("the page shows an error: %s", p.text("error"))
	}
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	for _, l := range p.b.logs[p.session] {
		if strings.HasPrefix(l, "exception:") || strings.HasPrefix(l, "console.error:") {
			p.t.Errorf("browser: %s", l)
		}
	}
}
