package dynconfig

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func testPolicy() *Policy {
	return &Policy{
		AllowHosts:     []string{"pacs.internal:8042", "ehr.example.org"},
		AllowEHRHosts:  []string{"ehr-only.example.org"},
		AllowPACSHosts: []string{"pacs-only:8042"},
		Credentials: []Credential{
			{Host: "pacs.internal:8042", Kind: CredBasic, Username: "gw", Password: "pacs-pw"},
			{Host: "ehr.example.org", Kind: CredClientSecret, ClientID: "imaging-gw", ClientSecret: "ehr-secret"},
		},
		MaxStudyTokenTTL: time.Hour,
	}
}

func parse(t *testing.T, p *Policy, doc string) (*Tenant, error) {
	t.Helper()
	raw, err := DecodeSegment(base64.RawURLEncoding.EncodeToString([]byte(doc)))
	if err != nil {
		t.Fatalf("DecodeSegment: %v", err)
	}
	return p.Parse(raw)
}

const (
	smartOK = `{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir"}`
	pacsOK  = `{"kind":"dicomweb","base_url":"http://pacs.internal:8042/dicom-web"}`
)

func doc(authz, images string, extra ...string) string {
	return `{"authz":` + authz + `,"images":` + images + strings.Join(extra, "") + `}`
}

func TestParseTakesCredentialsFromTheOperator(t *testing.T) {
	ten, err := parse(t, testPolicy(), doc(smartOK, pacsOK))
	if err != nil {
		t.Fatal(err)
	}
	if ten.Authz.ClientID != "imaging-gw" || ten.Authz.ClientSecret != "ehr-secret" {
		t.Errorf("EHR credentials = %q/%q, want the operator's", ten.Authz.ClientID, ten.Authz.ClientSecret)
	}
	if ten.Images.Username != "gw" || ten.Images.Password != "pacs-pw" {
		t.Errorf("PACS credentials = %q/%q, want the operator's", ten.Images.Username, ten.Images.Password)
	}
	if ten.StudyTokenTTL != 0 {
		t.Errorf("study token TTL %s, want the route's (0)", ten.StudyTokenTTL)
	}

	// The same client id is fine; another one does not get the operator's
	// secret.
	if _, err := parse(t, testPolicy(), doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"imaging-gw"}`, pacsOK)); err != nil {
		t.Errorf("the operator's own client id: %v", err)
	}
	_, err = parse(t, testPolicy(), doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"other-app"}`, pacsOK))
	wantRefusal(t, err, "authz.client_id", ErrBadValue)

	// A host without operator credentials gets none.
	p := testPolicy()
	p.AllowHosts = append(p.AllowHosts, "other-pacs:8042")
	ten, err = parse(t, p, doc(smartOK, `{"kind":"dicomweb","base_url":"http://other-pacs:8042/dicom-web"}`))
	if err != nil {
		t.Fatal(err)
	}
	if ten.Images.Username != "" || ten.Images.Password != "" || ten.Images.Bearer != "" {
		t.Errorf("credentials of pacs.internal sent to other-pacs: %+v", ten.Images)
	}
}

func TestParseRefusesOperatorFields(t *testing.T) {
	for _, f := range []string{
		`"mrn_system":["urn:other"]`, `"accept_scopes":["patient/Observation.rs"]`, `"audience":["https://elsewhere/fhir"]`,
		`"issuer":"https://evil/auth"`, `"patient_claim":"sub"`, `"patient_lookup_token":"caller"`, `"validation":"jwt"`,
		`"jwks_url":"https://ehr.example.org/jwks"`, `"introspection_endpoint":"https://ehr.example.org/introspect"`,
		`"token_endpoint":"https://ehr.example.org/token"`, `"scope":"system/*.rs"`, `"cache_ttl":"8760h"`,
		`"inactive_cache_ttl":"1h"`, `"cache_size":1000000000`, `"timeout":"1h"`, `"something_new":true`,
		`"backend_clients":[{"client_id":"x","all_patients":true}]`, `"cache_ttl":0`,
	} {
		name := strings.Trim(strings.SplitN(f, ":", 2)[0], `"`)
		authz := strings.TrimSuffix(smartOK, "}") + "," + f + "}"
		_, err := parse(t, testPolicy(), doc(authz, pacsOK))
		wantRefusal(t, err, "authz."+name, ErrNotSettable)
	}
	for _, f := range []string{`"qido_timeout":"1h"`, `"max_concurrent_qido":1000000`, `"pacs_urls":["http://pacs.internal:8042/x"]`,
		`"proxy":{"upstreams":[{"dial":"10.0.0.1:80"}]}`} {
		name := strings.Trim(strings.SplitN(f, ":", 2)[0], `"`)
		images := strings.TrimSuffix(pacsOK, "}") + "," + f + "}"
		_, err := parse(t, testPolicy(), doc(smartOK, images))
		wantRefusal(t, err, "images."+name, ErrNotSettable)
	}
	_, err := parse(t, testPolicy(), doc(smartOK, pacsOK, `,"study_token_key":"AAAA"`))
	wantRefusal(t, err, "study_token_key", ErrNotSettable)
	// A URL never chooses what study addresses are bound to.
	_, err = parse(t, testPolicy(), doc(smartOK, pacsOK, `,"study_token_binding":"grant"`))
	wantRefusal(t, err, "study_token_binding", ErrNotSettable)
	_, err = parse(t, testPolicy(), doc(smartOK, pacsOK, `,"dynamic_config":{"allow_hosts":["*"]}`))
	wantRefusal(t, err, "dynamic_config", ErrNotSettable)
}

func TestParseCredentialsInTheURL(t *testing.T) {
	withSecret := `{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"mine","client_secret":"s3cret"}`
	withPassword := `{"kind":"dicomweb","base_url":"http://pacs.internal:8042/dicom-web","username":"u","password":"p"}`
	_, err := parse(t, testPolicy(), doc(withSecret, pacsOK))
	wantRefusal(t, err, "authz.client_secret", ErrURLCredentials)
	_, err = parse(t, testPolicy(), doc(smartOK, withPassword))
	wantRefusal(t, err, "images.password", ErrURLCredentials)
	_, err = parse(t, testPolicy(), doc(smartOK, `{"kind":"dicomweb","base_url":"http://pacs.internal:8042/dicom-web","bearer":"b"}`))
	wantRefusal(t, err, "images.bearer", ErrURLCredentials)
	_, err = parse(t, testPolicy(), doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","private_key":"{\"kty\":\"EC\"}"}`, pacsOK))
	wantRefusal(t, err, "authz.private_key", ErrURLCredentials)

	p := testPolicy()
	p.AllowURLCredentials = true
	ten, err := parse(t, p, doc(withSecret, withPassword))
	if err != nil {
		t.Fatal(err)
	}
	if ten.Authz.ClientID != "mine" || ten.Authz.ClientSecret != "s3cret" || ten.Images.Username != "u" || ten.Images.Password != "p" {
		t.Errorf("the URL's own credentials were not kept: %+v %+v", ten.Authz, ten.Images)
	}
	// Even then: no file paths, no placeholders.
	for _, k := range []string{"/etc/ssl/private/gw.jwk", "gw.jwk", "../gw.jwk", `{\"kty\":\"{env.KEY}\"}`} {
		_, err = parse(t, p, doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"c","private_key":"`+k+`"}`, pacsOK))
		wantRefusal(t, err, "authz.private_key", ErrBadValue)
	}
	_, err = parse(t, p, doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"c","client_secret":"{env.EHR_SECRET}"}`, pacsOK))
	wantRefusal(t, err, "authz.client_secret", ErrBadValue)
}

func TestParseRefusesHostsOffTheList(t *testing.T) {
	for _, u := range []string{"http://pacs.internal:8043/dicom-web", "http://127.0.0.1:8042/dicom-web", "http://pacs.internal/dicom-web",
		"http://pacs.internal.:8042/", "http://[::1]:8042/"} {
		_, err := parse(t, testPolicy(), doc(smartOK, `{"kind":"dicomweb","base_url":"`+u+`"}`))
		wantRefusal(t, err, "images.base_url", ErrOffAllowList)
	}
	for _, u := range []string{"file:///etc/passwd", "gopher://pacs.internal:8042/", "//pacs.internal:8042/", "pacs.internal:8042",
		"http://u:p@pacs.internal:8042/", "http://pacs.internal:8042@evil:80/", "{env.PACS}", "http://{env.HOST}:8042/"} {
		_, err := parse(t, testPolicy(), doc(smartOK, `{"kind":"dicomweb","base_url":"`+u+`"}`))
		wantRefusal(t, err, "images.base_url", ErrBadValue)
	}
	_, err := parse(t, testPolicy(), doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://evil.example.net/fhir"}`, pacsOK))
	wantRefusal(t, err, "authz.fhir_base_url", ErrOffAllowList)
	// Any port of a host listed without one.
	if _, err := parse(t, testPolicy(), doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://EHR.example.org:8443/fhir"}`, pacsOK)); err != nil {
		t.Errorf("a port of a host listed without one: %v", err)
	}
}

func TestParseShapesAndValues(t *testing.T) {
	p := testPolicy()
	for _, x := range []struct {
		doc, field string
		sentinel   error
	}{
		{`[]`, "", ErrMalformed},
		{`null`, "", ErrMalformed},
		{doc(smartOK, pacsOK) + ` {}`, "", ErrMalformed},
		{`{"authz":` + smartOK + `}`, "", ErrMalformed},
		{doc(`{"fhir_base_url":"https://ehr.example.org/fhir"}`, pacsOK), "authz.kind", ErrMalformed},
		{doc(`{"kind":"http_basic"}`, pacsOK), "authz.kind", ErrBadValue},
		{doc(`{"kind":"mock","patient":"p","mrn":["m"]}`, pacsOK), "authz.kind", ErrBadValue},
		{doc(smartOK, `{"kind":"folder","root":"/"}`), "images.kind", ErrBadValue},
		{doc(smartOK, `{"kind":"dicomweb","base_url":"http://pacs.internal:8042/dicom-web","lookup":"all-studies"}`), "images.lookup", ErrBadValue},
		{doc(smartOK, `{"kind":"dicomweb"}`), "images.base_url", ErrMalformed},
		{doc(smartOK, `{"kind":"dicomweb","base_url":7}`), "images.base_url", ErrMalformed},
		{doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"a\nb"}`, pacsOK), "authz.client_id", ErrBadValue},
		{doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"`+strings.Repeat("x", 2000)+`"}`, pacsOK), "authz.client_id", ErrBadValue},
		{doc(smartOK, pacsOK, `,"study_token_ttl":"2h"`), "study_token_ttl", ErrBadValue},
		{doc(smartOK, pacsOK, `,"study_token_ttl":"-1m"`), "study_token_ttl", ErrBadValue},
		{doc(smartOK, pacsOK, `,"study_token_ttl":"forever"`), "study_token_ttl", ErrMalformed},
	} {
		raw := []byte(x.doc)
		_, err := p.Parse(raw)
		wantRefusal(t, err, x.field, x.sentinel)
	}
	ten, err := parse(t, p, doc(smartOK, pacsOK, `,"study_token_ttl":"10m"`))
	if err != nil || ten.StudyTokenTTL != 10*time.Minute {
		t.Errorf("study_token_ttl 10m: %v, %v", ten, err)
	}
	ten, err = parse(t, p, doc(smartOK, pacsOK, `,"study_token_ttl":600000000000`))
	if err != nil || ten.StudyTokenTTL != 10*time.Minute {
		t.Errorf("study_token_ttl in nanoseconds: %v, %v", ten, err)
	}
}

func TestParseMock(t *testing.T) {
	p := testPolicy()
	p.AllowMock = true
	ten, err := parse(t, p, doc(`{"kind":"mock","patient":"p1","mrn":["M1","M2"],"fhir_base_url":"https://ehr.example.org/fhir"}`, pacsOK))
	if err != nil {
		t.Fatal(err)
	}
	if ten.Authz.Patient != "p1" || strings.Join(ten.Authz.MRN, ",") != "M1,M2" {
		t.Errorf("mock = %+v", ten.Authz)
	}
	_, err = parse(t, p, doc(`{"kind":"mock","disable_authz_checks":true}`, pacsOK))
	wantRefusal(t, err, "authz.disable_authz_checks", ErrNotSettable)
	_, err = parse(t, p, doc(`{"kind":"mock","patient":"{http.request.header.X-Patient}"}`, pacsOK))
	wantRefusal(t, err, "authz.patient", ErrBadValue)
}

// A host allowed in one role only may not serve in the other: a PACS
// that can be made to serve arbitrary bytes must never pass for an EHR
// (its discovery, keys and Patient resources decide who is who).
func TestParseHostRoles(t *testing.T) {
	p := testPolicy()
	if _, err := parse(t, p, doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr-only.example.org/fhir"}`, `{"kind":"dicomweb","base_url":"http://pacs-only:8042/dicom-web"}`)); err != nil {
		t.Errorf("hosts in their own roles: %v", err)
	}
	_, err := parse(t, p, doc(`{"kind":"smart-on-fhir","fhir_base_url":"http://pacs-only:8042/instances/x/content/0010,0010"}`, pacsOK))
	wantRefusal(t, err, "authz.fhir_base_url", ErrOffAllowList)
	_, err = parse(t, p, doc(smartOK, `{"kind":"dicomweb","base_url":"https://ehr-only.example.org/dicom-web"}`))
	wantRefusal(t, err, "images.base_url", ErrOffAllowList)
	if err := p.CheckEndpoint("http://pacs-only:8042/jwks", RoleEHR); !errors.Is(err, ErrOffAllowList) {
		t.Errorf("a discovered JWKS on a PACS-only host: %v", err)
	}
	bad := testPolicy()
	bad.Credentials = append(bad.Credentials, Credential{Host: "ehr-only.example.org", Kind: CredBasic, Username: "u", Password: "p"})
	if err := bad.Check(); err == nil {
		t.Error("accepted PACS credentials for an EHR-only host")
	}
}

func TestPolicyCheck(t *testing.T) {
	for name, p := range map[string]*Policy{
		"no hosts":              {MaxStudyTokenTTL: time.Hour},
		"a URL as a host":       {AllowHosts: []string{"http://x/"}, MaxStudyTokenTTL: time.Hour},
		"credentials off list":  {AllowHosts: []string{"a"}, Credentials: []Credential{{Host: "b", Kind: CredBearer, Token: "t"}}, MaxStudyTokenTTL: time.Hour},
		"unknown kind":          {AllowHosts: []string{"a"}, Credentials: []Credential{{Host: "a", Kind: "digest"}}, MaxStudyTokenTTL: time.Hour},
		"half a basic":          {AllowHosts: []string{"a"}, Credentials: []Credential{{Host: "a", Kind: CredBasic, Username: "u"}}, MaxStudyTokenTTL: time.Hour},
		"two PACS credentials":  {AllowHosts: []string{"a"}, Credentials: []Credential{{Host: "a", Kind: CredBearer, Token: "t"}, {Host: "a", Kind: CredBasic, Username: "u", Password: "p"}}, MaxStudyTokenTTL: time.Hour},
		"no study token bound":  {AllowHosts: []string{"a"}},
		"secret without client": {AllowHosts: []string{"a"}, Credentials: []Credential{{Host: "a", Kind: CredClientSecret, ClientSecret: "s"}}, MaxStudyTokenTTL: time.Hour},
	} {
		if err := p.Check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := testPolicy().Check(); err != nil {
		t.Errorf("the test policy: %v", err)
	}
}

func TestCheckEndpoint(t *testing.T) {
	p := testPolicy()
	if err := p.CheckEndpoint("https://ehr.example.org/auth/token", RoleEHR); err != nil {
		t.Error(err)
	}
	for _, u := range []string{"https://evil.example.net/token", "ftp://ehr.example.org/", "https://u:p@ehr.example.org/", "/token"} {
		if err := p.CheckEndpoint(u, RoleEHR); !errors.Is(err, ErrOffAllowList) {
			t.Errorf("%s: %v", u, err)
		}
	}
}

func TestErrorsNeverCarryCredentials(t *testing.T) {
	p := testPolicy()
	p.AllowURLCredentials = true
	_, err := parse(t, p, doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"other","private_key":"/very/secret/path"}`, pacsOK))
	if err == nil || strings.Contains(err.Error(), "/very/secret/path") {
		t.Errorf("error %v", err)
	}
	_, err = parse(t, testPolicy(), doc(smartOK, `{"kind":"dicomweb","base_url":"http://pacs.internal:8042/","password":"hunter2"}`))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %v", err)
	}
}

func wantRefusal(t *testing.T, err error, field string, sentinel error) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Errorf("want a refusal of %q (%v), got %v", field, sentinel, err)
		return
	}
	if e.Field != field || !errors.Is(err, sentinel) {
		t.Errorf("refusal %q (%v), want field %q (%v)", e.Error(), e.Err, field, sentinel)
	}
	if field != "" && !strings.Contains(e.Error(), field) {
		t.Errorf("the message %q does not name %q", e.Error(), field)
	}
}

// FuzzParse feeds /dyn segments to DecodeSegment and Parse, the functions
// the gateway runs. They must never panic, and a tenant they accept must
// keep the policy's promises: URLs http(s) on the allow list without
// credentials, no placeholder or control character anywhere, credentials
// only the operator's unless the route accepts URL credentials (and then
// never a file path), mock only where allowed, only the studies-by-mrn
// lookup, and a study token lifetime within the route's.
func FuzzParse(f *testing.F) {
	seed := func(doc string) { f.Add(base64.RawURLEncoding.EncodeToString([]byte(doc)), false) }
	seed(doc(smartOK, pacsOK))
	seed(doc(smartOK, pacsOK, `,"study_token_ttl":"10m"`))
	seed(doc(`{"kind":"mock","patient":"p","mrn":["m"]}`, pacsOK))
	seed(doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"c","client_secret":"s","private_key":"{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"a\",\"y\":\"b\",\"d\":\"c\"}"}`,
		`{"kind":"dicomweb","base_url":"http://pacs.internal:8042/dicom-web","username":"u","password":"p"}`))
	seed(doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","mrn_system":["urn:other"]}`, pacsOK))
	seed(doc(smartOK, `{"kind":"dicomweb","base_url":"http://pacs.internal:8042@evil:80/"}`))
	seed(doc(smartOK, `{"kind":"dicomweb","base_url":"http://[::1]:8042/dicom-web"}`))
	seed(doc(smartOK, `{"kind":"folder","root":"/"}`))
	seed(doc(`{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","private_key":"etc/key.jwk"}`, pacsOK))
	seed(doc(`{"kind":"smart-on-fhir","fhir_base_url":"http://pacs-only:8042/fhir"}`, `{"kind":"dicomweb","base_url":"https://ehr-only.example.org/dicom-web"}`))
	// The reference server's JSON (issue 18).
	seed(`{"authorization":{"type":"smart-on-fhir","fhirBaseUrl":"https://ehr.example.org/fhir","scope":"system/Patient.read","client":{"client_id":"c","jwk":{"alg":"ES384","kid":"k"},"jwkPrivate":{"kty":"EC","d":"x"}}},"images":{"type":"dicom-web","endpoint":"http://pacs.internal:8042/dicom-web","lookup":"studies-by-mrn","authentication":{"type":"http-basic","username":"u","password":"p"},"delay":{"lookupUntil":4833623642}}}`)
	seed(`{"authorization":{"type":"mock","patient":{"id":"p","identifier":[{"type":{"coding":[{"code":"MR"}]},"value":"m"}]}},"images":{"type":"dicom-web","endpoint":"http://pacs.internal:8042/dicom-web","mrn":["identifier[0].value"]}}`)
	seed(`{"authorization":{"type":"mock","disableAuthzChecks":true,"//c":1},"images":{"type":"dicom-dimse","endpoint":"dimse://pacs.internal:4242","ae":"X"}}`)
	seed(`{"authorization":{"type":"smart-on-fhir-with-meditech-bugfixes","fhirBaseUrl":"https://ehr.example.org/fhir","client":{"client_secret":"s"}},"images":{"type":"dicom-web","endpoint":"http://pacs.internal:8042/dicom-web"}}`)
	seed(`[]`)
	f.Add("", true)
	f.Add("====", true)
	f.Add("%2e%2e", false)

	f.Fuzz(func(t *testing.T, seg string, urlCreds bool) {
		p := testPolicy()
		p.AllowMock = true
		p.AllowURLCredentials = urlCreds
		raw, err := DecodeSegment(seg)
		if err != nil {
			return
		}
		ten, err := p.Parse(raw)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Err == nil {
				t.Fatalf("a refusal that is not an *Error with a sentinel: %v", err)
			}
			return
		}
		if u := ten.Authz.FHIRBaseURL; u != "" && p.CheckEndpoint(u, RoleEHR) != nil {
			t.Fatalf("accepted an EHR that is not an allowed http(s) EHR host: %q", u)
		}
		if ten.Images.BaseURL == "" {
			t.Fatal("accepted a tenant without a PACS")
		}
		if p.CheckEndpoint(ten.Images.BaseURL, RolePACS) != nil {
			t.Fatalf("accepted a PACS that is not an allowed http(s) PACS host: %q", ten.Images.BaseURL)
		}
		all := []string{ten.Authz.Kind, ten.Authz.FHIRBaseURL, ten.Authz.ClientID, ten.Authz.PrivateKeyAlg, ten.Authz.PrivateKeyID,
			ten.Authz.Patient, ten.Images.BaseURL, ten.Images.Lookup}
		all = append(all, ten.Authz.MRN...)
		if urlCreds {
			all = append(all, ten.Authz.ClientSecret, ten.Images.Username, ten.Images.Password, ten.Images.Bearer)
		}
		for _, s := range all {
			if strings.ContainsAny(s, "{}") || strings.ContainsAny(s, "\x00\n\r") {
				t.Fatalf("accepted a placeholder or control character: %q", s)
			}
		}
		if k := strings.TrimSpace(ten.Authz.PrivateKey); k != "" && !strings.HasPrefix(k, "{") && !strings.HasPrefix(k, "-----BEGIN ") {
			t.Fatalf("accepted a private key that is not inline: %q", k)
		}
		if !urlCreds {
			// Whatever credentials the tenant holds are the operator's.
			if c := ten.Authz.ClientSecret; c != "" && c != "ehr-secret" || ten.Authz.PrivateKey != "" {
				t.Fatalf("accepted EHR credentials from the URL: %+v", ten.Authz)
			}
			if ten.Images.Bearer != "" || ten.Images.Password != "" && ten.Images.Password != "pacs-pw" {
				t.Fatalf("accepted PACS credentials from the URL: %+v", ten.Images)
			}
		}
		if ten.Images.Password == "pacs-pw" && !strings.EqualFold(hostOf(ten.Images.BaseURL), "pacs.internal:8042") {
			t.Fatalf("the operator's PACS password goes to %q", ten.Images.BaseURL)
		}
		if ten.Authz.ClientSecret == "ehr-secret" && !hostMatches("ehr.example.org", hostOf(ten.Authz.FHIRBaseURL)) {
			t.Fatalf("the operator's client secret goes to %q", ten.Authz.FHIRBaseURL)
		}
		if ten.Authz.Kind != AuthzSMART && ten.Authz.Kind != AuthzMock {
			t.Fatalf("accepted authz kind %q", ten.Authz.Kind)
		}
		if ten.Images.Lookup != "" && ten.Images.Lookup != LookupStudiesByMRN {
			t.Fatalf("accepted lookup %q", ten.Images.Lookup)
		}
		if ten.StudyTokenTTL < 0 || ten.StudyTokenTTL > p.MaxStudyTokenTTL {
			t.Fatalf("accepted a study token lifetime of %s", ten.StudyTokenTTL)
		}
		// Re-encoding what was accepted never widens it: the JSON the
		// wiring builds from a tenant holds only these fields.
		if _, err := json.Marshal(ten); err != nil {
			t.Fatal(err)
		}
	})
}
