package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
	"github.com/smart-imaging/smart_imaging/internal/refconfig"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// bearer is a Tester whose requests carry an access token.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

func withToken(tc *caddytest.Tester, token string) *caddytest.Tester {
	c := *tc
	next := tc.Client.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	c.Client = &http.Client{Transport: bearer{token, next}, Timeout: tc.Client.Timeout, Jar: tc.Client.Jar}
	return &c
}

// refFixture reads a reference config of internal/refconfig/testdata as a
// generic document, pointed at this test's PACS and EHR.
func refFixture(t *testing.T, name, pacsURL, ehrBase string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile("../internal/refconfig/testdata/" + name + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	im := doc["images"].(map[string]any)
	if im["type"] == "dicom-web" {
		im["endpoint"] = pacsURL
	}
	if a := doc["authorization"].(map[string]any); a["fhirBaseUrl"] != nil {
		a["fhirBaseUrl"] = ehrBase
	}
	return doc
}

// studyAnswer is what a user sees of a search: each study's UID with its
// subject and series count, in order.
func studyAnswer(res searchResult) string {
	var out []string
	for _, uid := range keys(res.studies) {
		s := res.studies[uid]
		subj, _ := s["subject"].(map[string]any)
		out = append(out, fmt.Sprintf("%s subject=%v series=%v", uid, subj["reference"], s["numberOfSeries"]))
	}
	return strings.Join(out, "\n")
}

// TestReferenceLayout serves examples/reference-layout/Caddyfile against
// Orthanc and a test EHR, then the reference's configs through /dyn and
// through the converter: the same tenant answers the same searches every
// way it is reached; what /dyn refuses on purpose is a 400 saying why; the
// delayed tenant answers 503 with Retry-After.
func TestReferenceLayout(t *testing.T) {
	pacs := orthanc.Require(t)
	dir := t.TempDir()
	m, err := dicomgen.WriteDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pacs.Upload(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	pacsHost := fmt.Sprintf("127.0.0.1:%d", pacs.Port())
	pacsURL := "http://" + pacsHost + "/dicom-web"

	ehr := testehr.New(t)
	ehrURL, _ := url.Parse(ehr.FHIRBase())
	smartRef := refFixture(t, "smart-sandbox", pacsURL, ehr.FHIRBase())
	client := smartRef["authorization"].(map[string]any)["client"].(map[string]any)
	privJSON, _ := json.Marshal(client["jwkPrivate"])
	pubJSON, _ := json.Marshal(client["jwk"])
	pub, err := jwk.ParseKey(pubJSON)
	if err != nil {
		t.Fatal(err)
	}
	ehr.RegisterClient(testehr.Client{ID: "imaging-client", Keys: testehr.PublicSet(t, pub)})
	ehr.AddPatient(demoPatient, testehr.Identifier{System: "http://hospital.smarthealthit.org", Value: demoMRN, TypeCode: "MR"})

	secrets := map[string]string{
		"SMART_IMAGING_STUDY_TOKEN_KEY":  base64.StdEncoding.EncodeToString(testKey),
		"PACS_USERNAME":                  pacs.Username(),
		"PACS_PASSWORD":                  pacs.Password(),
		"SMART_SANDBOX_PRIVATE_KEY":      string(privJSON),
		"CERNER_SANDBOX_PRIVATE_KEY":     string(privJSON),
		"EPIC_SANDBOX_PRIVATE_KEY":       string(privJSON),
		"MEDITECH_SANDBOX_CLIENT_SECRET": "refdrop-meditech-secret",
	}
	for k, v := range secrets {
		t.Setenv(k, v)
	}
	t.Setenv("SITE_ADDRESS", "http://localhost:9080")
	t.Setenv("PACS_URL", pacsURL)
	t.Setenv("PACS_HOST", pacsHost)
	t.Setenv("SMART_SANDBOX_FHIR", ehr.FHIRBase())
	t.Setenv("SMART_SANDBOX_HOST", ehrURL.Host)
	t.Setenv("DYN_EHR_HOSTS", ehrURL.Host)

	layout, err := os.ReadFile("../examples/reference-layout/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	tc := caddytest.NewTester(t)
	tc.InitServer(testGlobals+"\tgrace_period 2s\n}\n"+string(layout), "caddyfile")
	tok := ehr.IssueToken(testehr.TokenSpec{Patient: demoPatient, Scope: "launch/patient patient/ImagingStudy.rs"})
	authed := withToken(tc, tok)

	// The Caddyfile routes.
	searches := map[string]string{ // tenant → query
		"open":              "",
		"hardcoded-patient": "?patient=" + demoPatient,
		"smart-sandbox":     "?patient=" + demoPatient,
	}
	routeAnswers := map[string]string{}
	for tenant, q := range searches {
		res := search(t, authed, base+"/"+tenant+"/fhir/ImagingStudy"+q)
		routeAnswers[tenant] = studyAnswer(res)
		for uid, addr := range res.endpoints {
			if !strings.HasPrefix(addr, base+"/"+tenant+"/wado/") {
				t.Errorf("%s: endpoint of %s is %s, not under /%s/wado/", tenant, uid, addr, tenant)
			}
		}
		got := keys(res.studies)
		for _, uid := range m.ForPatient(demoMRN).StudyUIDs() {
			if !slices.Contains(got, uid) {
				t.Errorf("%s: study %s of the patient is missing from %v", tenant, uid, got)
			}
		}
	}
	get(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient=someone-else", "*/*", http.StatusForbidden, "application/fhir+json")
	get(t, tc, base+"/smart-sandbox/fhir/ImagingStudy?patient="+demoPatient, "*/*", http.StatusUnauthorized, "application/fhir+json")
	if body := get(t, tc, base+"/favicon.ico", "*/*", http.StatusNotFound, "application/fhir+json"); !strings.Contains(string(body), "no such tenant") {
		t.Errorf("unknown tenant: %s", body)
	}

	// The delayed tenant: 503, an integer Retry-After counting down to
	// 2123-03-04T17:14:02Z (rounded up), an OperationOutcome; retrieves too.
	until := time.Date(2123, 3, 4, 17, 14, 2, 0, time.UTC)
	for _, path := range []string{"/delayed/fhir/ImagingStudy", "/delayed/wado/any-token/studies/1.2.3"} {
		before := time.Now()
		resp, body := fhirFetch(t, tc, base+path, "*/*", http.StatusServiceUnavailable)
		secs, err := strconv.ParseInt(resp.Header.Get("Retry-After"), 10, 64)
		lo, hi := int64(until.Sub(time.Now()).Seconds()), int64(until.Sub(before).Seconds())+1
		if err != nil || secs < lo || secs > hi {
			t.Errorf("%s: Retry-After %q, want an integer from %d to %d", path, resp.Header.Get("Retry-After"), lo, hi)
		}
		if !strings.Contains(string(body), `"OperationOutcome"`) || !strings.Contains(string(body), "retry after") {
			t.Errorf("%s: body %s", path, body)
		}
	}

	// The same tenants through /dyn, in the reference's JSON: the PACS
	// credentials are the operator's (dynamic_config credentials), and so
	// are the EHR's; the answers are the Caddyfile route's.
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	strip := func(doc map[string]any) map[string]any {
		delete(doc["images"].(map[string]any), "authentication")
		if c, ok := doc["authorization"].(map[string]any)["client"].(map[string]any); ok {
			delete(c, "jwk")
			delete(c, "jwkPrivate")
		}
		return doc
	}
	dynSmart := strip(refFixture(t, "smart-sandbox", pacsURL, ehr.FHIRBase()))
	res := search(t, authed, base+"/dyn/"+enc(dynSmart)+"/fhir/ImagingStudy?patient="+demoPatient)
	if got := studyAnswer(res); got != routeAnswers["smart-sandbox"] {
		t.Errorf("smart-sandbox through /dyn:\n%s\nthrough its route:\n%s", got, routeAnswers["smart-sandbox"])
	}
	for uid, addr := range res.endpoints {
		parts := retrieveMultipart(t, authed, addr+"/studies/"+uid, `multipart/related; type="application/dicom"`, "application/dicom")
		if len(parts) == 0 {
			t.Errorf("/dyn retrieve of %s gave nothing", uid)
		}
		break
	}
	hp := strip(refFixture(t, "hardcoded-patient", pacsURL, ""))
	hp["images"].(map[string]any)["lookup"] = "studies-by-mrn" // all-studies-on-server is refused, below
	res = search(t, tc, base+"/dyn/"+enc(hp)+"/fhir/ImagingStudy?patient="+demoPatient)
	if got := studyAnswer(res); got != routeAnswers["hardcoded-patient"] {
		t.Errorf("hardcoded-patient through /dyn:\n%s\nthrough its route:\n%s", got, routeAnswers["hardcoded-patient"])
	}

	// Refused on purpose, with the reason.
	for name, why := range map[string]string{
		"smart-sandbox":     "credentials are not accepted", // the file's own jwkPrivate: no allow_url_credentials here
		"open":              "never turns patient binding off",
		"delayed":           "never turns patient binding off",
		"siim-hackathon":    "never turns patient binding off",
		"open-dimse":        "never turns patient binding off",
		"hardcoded-patient": "every patient's studies",
		"meditech-sandbox":  "takes the patient from the request",
		"epic-sandbox":      "images.mrn",
	} {
		doc := refFixture(t, name, pacsURL, ehr.FHIRBase())
		if name != "smart-sandbox" {
			delete(doc["images"].(map[string]any), "authentication")
		}
		body := get(t, tc, base+"/dyn/"+enc(doc)+"/fhir/ImagingStudy?patient="+demoPatient, "*/*", http.StatusBadRequest, "application/fhir+json")
		if !strings.Contains(string(body), why) {
			t.Errorf("/dyn %s: refusal %s does not say %q", name, body, why)
		}
	}

	// The welcome page: bases and auth mode, JSON or HTML, no secrets.
	body := get(t, tc, base+"/smart-sandbox/fhir", "application/json", http.StatusOK, "application/json")
	var page map[string]any
	if err := json.Unmarshal(body, &page); err != nil || page["fhir_base"] != base+"/smart-sandbox/fhir" ||
		page["wado_base"] != base+"/smart-sandbox/wado/{study token}" || page["auth_mode"] != "smart-on-fhir" {
		t.Errorf("welcome JSON: %s", body)
	}
	html := get(t, tc, base+"/open/fhir", "text/html,application/xhtml+xml,*/*;q=0.8", http.StatusOK, "text/html")
	if !strings.Contains(string(html), base+"/open/fhir") || !strings.Contains(string(html), "mock") {
		t.Errorf("welcome HTML: %s", html)
	}
	for _, b := range [][]byte{body, html} {
		for name, v := range secrets {
			if len(v) > 8 && strings.Contains(string(b), v) {
				t.Errorf("the welcome page holds %s", name)
			}
		}
	}

	// The converter's routes, served in place of the example: the same
	// answers for the same configs.
	cdir := t.TempDir()
	var routes []*refconfig.Route
	for _, name := range []string{"open", "hardcoded-patient", "delayed", "smart-sandbox"} {
		doc := refFixture(t, name, pacsURL, ehr.FHIRBase())
		raw, _ := json.Marshal(doc)
		if err := os.WriteFile(filepath.Join(cdir, name+".json"), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := refconfig.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		r, err := refconfig.Convert(name, c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, e := range r.Env {
			switch {
			case strings.HasSuffix(e.Name, "_PACS_USERNAME"):
				t.Setenv(e.Name, pacs.Username())
			case strings.HasSuffix(e.Name, "_PACS_PASSWORD"):
				t.Setenv(e.Name, pacs.Password())
			case strings.HasSuffix(e.Name, "_PRIVATE_KEY"):
				t.Setenv(e.Name, string(privJSON))
			}
		}
		routes = append(routes, r)
	}
	tc.InitServer(testGlobals+"\tgrace_period 2s\n}\n"+refconfig.Caddyfile("http://localhost:9080", routes, nil), "caddyfile")
	for tenant, q := range searches {
		res := search(t, authed, base+"/"+tenant+"/fhir/ImagingStudy"+q)
		if got := studyAnswer(res); got != routeAnswers[tenant] {
			t.Errorf("%s through the converter:\n%s\nthrough the example route:\n%s", tenant, got, routeAnswers[tenant])
		}
	}
	get(t, tc, base+"/delayed/fhir/ImagingStudy", "*/*", http.StatusServiceUnavailable, "application/fhir+json")
}
