package integration

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// The SMART test EHR's patients and the gateway's registration there.
const (
	smartAlice      = "sia-alice"    // MRN SIA-MRN-0001
	smartAliceMRN   = "SIA-MRN-0001" // PACS PatientID of smartAlice
	smartNoMRN      = "sia-no-mrn"   // only an SSN, no MRN
	smartMRNSystem  = "http://hospital.smarthealthit.org"
	smartClientID   = "imaging-gateway"        // private_key_jwt (RS384)
	smartSecretID   = "imaging-gateway-secret" // client_secret_basic
	smartEpicClient = "imaging-gateway-epic"   // private_key_jwt (ES384, PEM)
	smartEpicKID    = "sia-epic-es384"
	smartSecretEnv  = "SIA_SMART_TEST_CLIENT_SECRET"
)

// smartEnv is the world of the SMART end-to-end test: a test EHR the
// gateway is registered at, an Epic-like EHR (no introspection_endpoint in
// its discovery, no patient in introspection), an EHR that is down, and a
// record of every credential that must never show up in a response.
type smartEnv struct {
	ehr, epic, down *testehr.EHR
	keyFile         string // RS384 private JWK of smartClientID
	epicKeyFile     string // ES384 private PEM of smartEpicClient
	secret          string
	tc              *caddytest.Tester

	mu      sync.Mutex
	secrets []string // access tokens and client secrets
	leaks   []string // descriptions of responses that carried one
}

func newSmartEnv(t *testing.T) *smartEnv {
	t.Helper()
	dir := t.TempDir()
	e := &smartEnv{
		ehr:         testehr.New(t),
		epic:        testehr.New(t),
		down:        testehr.New(t),
		keyFile:     filepath.Join(dir, "gateway.jwk"),
		epicKeyFile: filepath.Join(dir, "gateway-epic.pem"),
		secret:      "sia-secret-" + fmt.Sprint(time.Now().UnixNano()),
	}
	e.remember(e.secret)
	t.Setenv(smartSecretEnv, e.secret)

	// private_key_jwt with an RS384 JWK file.
	rsKey := testehr.GenerateKey(t, jwa.RS384, "sia-gateway-rs384")
	jwkJSON, err := json.Marshal(rsKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.keyFile, jwkJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	e.ehr.RegisterClient(testehr.Client{ID: smartClientID, Keys: testehr.PublicSet(t, rsKey)})
	e.down.RegisterClient(testehr.Client{ID: smartClientID, Keys: testehr.PublicSet(t, rsKey)})
	// client_secret_basic.
	e.ehr.RegisterClient(testehr.Client{ID: smartSecretID, Secret: e.secret})
	// private_key_jwt with an ES384 PEM file (kid given in the Caddyfile).
	esKey := testehr.GenerateKey(t, jwa.ES384, smartEpicKID)
	pem, err := jwk.EncodePEM(esKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.epicKeyFile, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	e.epic.RegisterClient(testehr.Client{ID: smartEpicClient, Keys: testehr.PublicSet(t, esKey)})
	e.epic.SetDiscovery("introspection_endpoint", nil)

	mr := func(v string) testehr.Identifier {
		return testehr.Identifier{System: smartMRNSystem, Value: v, TypeCode: "MR", Use: "usual"}
	}
	ssn := func(v string) testehr.Identifier {
		return testehr.Identifier{System: "http://hl7.org/fhir/sid/us-ssn", Value: v}
	}
	for _, ehr := range []*testehr.EHR{e.ehr, e.epic} {
		ehr.AddPatient(demoPatient, ssn("999-00-0001"), mr(demoMRN))
		ehr.AddPatient(smartAlice, mr(smartAliceMRN), ssn("999-00-0002"))
		ehr.AddPatient(smartNoMRN, ssn("999-00-0003"))
	}
	// The down EHR is configured but not there: connections are refused.
	e.down.Close()
	return e
}

// config is the gateway under test: one route per way of meeting an EHR.
func (e *smartEnv) config() string {
	studies, _ := filepath.Abs("../examples/demo/studies")
	key := base64.StdEncoding.EncodeToString(testKey)
	images := fmt.Sprintf(`images folder %s {
				lookup studies-by-mrn
			}
			study_token_key %s`, studies, key)
	return fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	handle_path /smart/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[1]s
				client_id %[2]s
				private_key %[3]s
				mrn_system %[4]s
			}
			%[5]s
			base_url http://localhost:9080/smart
		}
	}
	handle_path /secret/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[1]s
				client_id %[6]s
				client_secret {env.%[7]s}
				patient_lookup_token caller
				accept_scopes patient/DiagnosticReport.read
			}
			%[5]s
		}
	}
	handle_path /jwt/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[1]s
				client_id %[2]s
				private_key %[3]s
				jwks_url %[8]s
				mrn_system %[4]s
			}
			%[5]s
			base_url http://localhost:9080/jwt
		}
	}
	handle_path /epic/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[9]s
				client_id %[10]s
				private_key %[11]s
				private_key_alg ES384
				private_key_id %[12]s
				introspection_endpoint %[13]s
				patient_claim fhirUser
				mrn_system %[4]s
			}
			%[5]s
		}
	}
	handle_path /slow/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[1]s
				client_id %[2]s
				private_key %[3]s
				mrn_system %[4]s
				timeout 1s
			}
			%[5]s
		}
	}
	handle_path /down/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[14]s
				client_id %[2]s
				private_key %[3]s
				mrn_system %[4]s
			}
			%[5]s
		}
	}
}
`, e.ehr.FHIRBase(), smartClientID, e.keyFile, smartMRNSystem, images,
		smartSecretID, smartSecretEnv, e.ehr.JWKSURL(),
		e.epic.FHIRBase(), smartEpicClient, e.epicKeyFile, smartEpicKID, e.epic.IntrospectionEndpoint(),
		e.down.FHIRBase())
}

func (e *smartEnv) remember(secret string) {
	e.mu.Lock()
	e.secrets = append(e.secrets, secret)
	e.mu.Unlock()
}

// mint issues an app access token at ehr and remembers it.
func (e *smartEnv) mint(ehr *testehr.EHR, spec testehr.TokenSpec) string {
	tok := ehr.IssueToken(spec)
	e.remember(tok)
	return tok
}

// as is a tester whose requests carry token as a bearer token (none when
// empty) and whose responses are checked for leaked credentials.
func (e *smartEnv) as(token string) *caddytest.Tester {
	c := *e.tc
	c.Client = &http.Client{
		Transport: &smartLeakCheck{env: e, token: token, next: e.tc.Client.Transport},
		Timeout:   e.tc.Client.Timeout,
	}
	return &c
}

// smartLeakCheck adds the bearer token and records any response whose
// headers or body hold a remembered credential.
type smartLeakCheck struct {
	env   *smartEnv
	token string
	next  http.RoundTripper
}

func (l *smartLeakCheck) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	if l.token != "" {
		req.Header.Set("Authorization", "Bearer "+l.token)
	}
	resp, err := l.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	l.env.mu.Lock()
	defer l.env.mu.Unlock()
	for i, s := range l.env.secrets {
		if bytes.Contains(body, []byte(s)) {
			l.env.leaks = append(l.env.leaks, fmt.Sprintf("body of GET %s (HTTP %d) holds credential #%d", req.URL.Path, resp.StatusCode, i))
		}
		for name, vs := range resp.Header {
			for _, v := range vs {
				if strings.Contains(v, s) {
					l.env.leaks = append(l.env.leaks, fmt.Sprintf("header %s of GET %s holds credential #%d", name, req.URL.Path, i))
				}
			}
		}
	}
	return resp, nil
}

// smartGet fetches url as FHIR JSON and checks the status.
func smartGet(t *testing.T, tc *caddytest.Tester, url string, wantStatus int) (*http.Response, []byte) {
	t.Helper()
	return fhirFetch(t, tc, url, "application/fhir+json", wantStatus)
}

// smartRefused checks a refusal: status, an OperationOutcome body, and
// returns its diagnostics.
func smartRefused(t *testing.T, tc *caddytest.Tester, url string, wantStatus int) (http.Header, string) {
	t.Helper()
	resp, body := smartGet(t, tc, url, wantStatus)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("refusal Content-Type = %q, want application/fhir+json", ct)
	}
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	if json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("refusal body is not an OperationOutcome: %.300s", body)
	}
	return resp.Header, oo.Issue[0].Diagnostics
}

// smartStatus is a GET for goroutines: it reports the status only.
func smartStatus(tc *caddytest.Tester, url string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/fhir+json")
	resp, err := tc.Client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// smartUnsignedJWT is a JWT with alg "none": claims and no signature.
func smartUnsignedJWT(claims map[string]any) string {
	hdr, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT"})
	body, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(hdr) + "." + enc(body) + "."
}

// smartHMACWithPublicKey forges a JWT the classic way: HS256 keyed with
// the bytes of the EHR's public RSA key.
func smartHMACWithPublicKey(t *testing.T, ehr *testehr.EHR, claims map[string]any) string {
	t.Helper()
	set := ehr.PublicJWKS()
	for i := 0; i < set.Len(); i++ {
		k, _ := set.Key(i)
		if k.KeyType() == jwa.RSA {
			pem, err := jwk.EncodePEM(k)
			if err != nil {
				t.Fatal(err)
			}
			hdrs := jws.NewHeaders()
			_ = hdrs.Set(jws.KeyIDKey, k.KeyID())
			_ = hdrs.Set(jws.TypeKey, "JWT")
			payload, _ := json.Marshal(claims)
			signed, err := jws.Sign(payload, jws.WithKey(jwa.HS256, pem, jws.WithProtectedHeaders(hdrs)))
			if err != nil {
				t.Fatal(err)
			}
			return string(signed)
		}
	}
	t.Fatal("the test EHR publishes no RSA key")
	return ""
}

func TestSmartOnFHIREndToEnd(t *testing.T) {
	env := newSmartEnv(t)
	env.tc = caddytest.NewTester(t)
	env.tc.InitServer(env.config(), "caddyfile")
	t.Cleanup(func() {
		env.mu.Lock()
		defer env.mu.Unlock()
		for _, l := range env.leaks {
			t.Errorf("credential leaked: %s", l)
		}
	})
	c := readCorpus(t)
	ehr := env.ehr
	wantDemo := keys(c.byPatient[demoMRN])
	wantAlice := keys(c.byPatient[smartAliceMRN])
	if len(wantDemo) == 0 || len(wantAlice) == 0 {
		t.Fatal("the demo corpus lacks studies for the test patients")
	}
	smart := base + "/smart/fhir/ImagingStudy?patient="
	demoRef := ehr.FHIRBase() + "/Patient/" + demoPatient
	jwtAud := []string{base + "/jwt/fhir"}

	checkStudies := func(t *testing.T, res searchResult, want []string, subject, wadoPrefix string) {
		t.Helper()
		if got := keys(res.studies); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("studies = %v, want exactly %v", got, want)
		}
		for uid, st := range res.studies {
			if ref := st["subject"].(map[string]any)["reference"]; ref != subject {
				t.Errorf("study %s subject = %v, want %s", uid, ref, subject)
			}
			if !strings.HasPrefix(res.endpoints[uid], wadoPrefix) {
				t.Errorf("study %s endpoint %s is not under %s", uid, res.endpoints[uid], wadoPrefix)
			}
		}
	}

	t.Run("valid token: exactly the patient's studies, absolute subject", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		res := search(t, env.as(tok), smart+demoPatient)
		checkStudies(t, res, wantDemo, demoRef, base+"/smart/wado/")
	})

	t.Run("?patient= as id, Patient/id and absolute EHR URL", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		for _, form := range []string{demoPatient, "Patient/" + demoPatient, demoRef} {
			res := search(t, env.as(tok), smart+url.QueryEscape(form))
			checkStudies(t, res, wantDemo, demoRef, base+"/smart/wado/")
		}
		res := search(t, env.as(tok), base+"/smart/fhir/ImagingStudy?subject="+url.QueryEscape(demoRef))
		checkStudies(t, res, wantDemo, demoRef, base+"/smart/wado/")
	})

	t.Run("patient.identifier: the MRN with its system, or without one", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		for _, v := range []string{smartMRNSystem + "|" + demoMRN, demoMRN} {
			res := search(t, env.as(tok), smart+demoPatient+"&patient.identifier="+url.QueryEscape(v))
			checkStudies(t, res, wantDemo, demoRef, base+"/smart/wado/")
		}
	})

	t.Run("another patient's token finds that patient's studies", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: smartAlice})
		res := search(t, env.as(tok), smart+smartAlice)
		checkStudies(t, res, wantAlice, ehr.FHIRBase()+"/Patient/"+smartAlice, base+"/smart/wado/")
	})

	t.Run("SMART v1 and v2 patient scopes", func(t *testing.T) {
		for _, scope := range []string{
			"patient/ImagingStudy.rs", "patient/ImagingStudy.read", "patient/*.rs",
			"patient/*.read", "patient/*.*", "launch/patient openid fhirUser patient/ImagingStudy.cruds",
		} {
			tok := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Scope: scope})
			if res := search(t, env.as(tok), smart+demoPatient); len(res.studies) != len(wantDemo) {
				t.Errorf("scope %q: %d studies, want %d", scope, len(res.studies), len(wantDemo))
			}
		}
	})

	// Refusals of the bearer token on search.
	farPast := time.Now().Add(-time.Hour)
	revoked := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
	ehr.Revoke(revoked)
	jwtClaims := func(mut func(map[string]any)) map[string]any {
		m := map[string]any{
			"iss": ehr.Issuer(), "aud": jwtAud[0], "sub": "user-1", "client_id": "app",
			"scope": "launch/patient patient/ImagingStudy.rs", "patient": demoPatient,
			"exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix(),
		}
		if mut != nil {
			mut(m)
		}
		return m
	}
	none := smartUnsignedJWT(jwtClaims(nil))
	hmac := smartHMACWithPublicKey(t, ehr, jwtClaims(nil))
	env.remember(none)
	env.remember(hmac)
	refusals := []struct {
		name, url, token string
		status           int
		challenge, diag  string
	}{
		{"no token", smart + demoPatient, "", 401, "Bearer", "access token is required"},
		{"unknown token", smart + demoPatient, "never-issued-" + fmt.Sprint(time.Now().UnixNano()), 401, `error="invalid_token"`, "not active"},
		{"inactive (revoked) token", smart + demoPatient, revoked, 401, `error="invalid_token"`, "not active"},
		{"expired token", smart + demoPatient, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Exp: farPast}), 401, `error="invalid_token"`, ""},
		{"wrong audience (introspection)", smart + demoPatient, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Aud: []string{"https://elsewhere.example.org/fhir"}}), 401, `error="invalid_token"`, "aud"},
		{"wrong scope", smart + demoPatient, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Scope: "launch/patient patient/Observation.rs"}), 403, `error="insufficient_scope"`, "scopes"},
		{"v2 scope with a query restriction", smart + demoPatient, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Scope: "patient/ImagingStudy.rs?category=x"}), 403, `error="insufficient_scope"`, ""},
		{"system scope is no patient access", smart + demoPatient, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, OmitPatient: true, Scope: "system/ImagingStudy.rs system/*.read"}), 403, `error="insufficient_scope"`, ""},
		{"DiagnosticReport scope where not accepted", smart + demoPatient, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Scope: "patient/DiagnosticReport.read"}), 403, `error="insufficient_scope"`, ""},
		{"missing patient context", smart + demoPatient, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, OmitPatient: true}), 403, "", "no patient in context"},
		{"another patient", smart + smartAlice, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}), 403, "", "not the patient this access token is bound to"},
		{"another patient as absolute URL", smart + url.QueryEscape(ehr.FHIRBase()+"/Patient/"+smartAlice), env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}), 403, "", "not the patient"},
		{"own id under another EHR's base", smart + url.QueryEscape("https://other-ehr.example.org/fhir/Patient/"+demoPatient), env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}), 403, "", "not the patient"},
		{"subject names another patient", smart + demoPatient + "&subject=Patient/" + smartAlice, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}), 403, "", "not the patient"},
		{"no ?patient=", base + "/smart/fhir/ImagingStudy", env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}), 403, "", "?patient="},
		// patient.identifier matches system and value: the patient's own
		// MRN value under another system, or as an identifier without a
		// system, names no identifier of the patient's.
		{"own MRN value under another system", smart + demoPatient + "&patient.identifier=" + url.QueryEscape("urn:other|"+demoMRN), env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}), 403, "", "patient.identifier"},
		{"own MRN value under the SSN system the patient has", smart + demoPatient + "&patient.identifier=" + url.QueryEscape("http://hl7.org/fhir/sid/us-ssn|"+demoMRN), env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}), 403, "", "patient.identifier"},
		{"own MRN value as an identifier without a system", smart + demoPatient + "&patient.identifier=" + url.QueryEscape("|"+demoMRN), env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}), 403, "", "patient.identifier"},

		{"jwt: expired", base + "/jwt/fhir/ImagingStudy?patient=" + demoPatient, env.mint(ehr, testehr.TokenSpec{Format: testehr.JWT, Patient: demoPatient, Aud: jwtAud, Exp: farPast}), 401, `error="invalid_token"`, "expired"},
		{"jwt: wrong audience", base + "/jwt/fhir/ImagingStudy?patient=" + demoPatient, env.mint(ehr, testehr.TokenSpec{Format: testehr.JWT, Patient: demoPatient, Aud: []string{base + "/smart/fhir"}}), 401, `error="invalid_token"`, "aud"},
		{"jwt: no audience", base + "/jwt/fhir/ImagingStudy?patient=" + demoPatient, env.mint(ehr, testehr.TokenSpec{Format: testehr.JWT, Patient: demoPatient}), 401, `error="invalid_token"`, ""},
		{"jwt: wrong issuer", base + "/jwt/fhir/ImagingStudy?patient=" + demoPatient, env.mint(ehr, testehr.TokenSpec{Format: testehr.JWT, Patient: demoPatient, Aud: jwtAud, Iss: "https://evil.example.org/auth"}), 401, `error="invalid_token"`, ""},
		{"jwt: alg none", base + "/jwt/fhir/ImagingStudy?patient=" + demoPatient, none, 401, `error="invalid_token"`, ""},
		{"jwt: HS256 keyed with the EHR's public key", base + "/jwt/fhir/ImagingStudy?patient=" + demoPatient, hmac, 401, `error="invalid_token"`, ""},
		{"jwt: opaque token", base + "/jwt/fhir/ImagingStudy?patient=" + demoPatient, env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}), 401, `error="invalid_token"`, "not a JWT"},
		{"jwt: wrong scope", base + "/jwt/fhir/ImagingStudy?patient=" + demoPatient, env.mint(ehr, testehr.TokenSpec{Format: testehr.JWT, Patient: demoPatient, Aud: jwtAud, Scope: "patient/Observation.read"}), 403, `error="insufficient_scope"`, ""},
		{"jwt: missing patient", base + "/jwt/fhir/ImagingStudy?patient=" + demoPatient, env.mint(ehr, testehr.TokenSpec{Format: testehr.JWT, Patient: demoPatient, Aud: jwtAud, OmitPatient: true}), 403, "", "no patient in context"},
		{"alg none on the introspection route", smart + demoPatient, none, 401, `error="invalid_token"`, ""},
	}
	for _, tt := range refusals {
		t.Run("refused: "+tt.name, func(t *testing.T) {
			hdr, diag := smartRefused(t, env.as(tt.token), tt.url, tt.status)
			wa := hdr.Get("WWW-Authenticate")
			if tt.challenge != "" && (!strings.HasPrefix(wa, "Bearer") || !strings.Contains(wa, tt.challenge)) {
				t.Errorf("WWW-Authenticate = %q, want Bearer … %s", wa, tt.challenge)
			}
			if !strings.Contains(diag, tt.diag) {
				t.Errorf("diagnostics = %q, want it to mention %q", diag, tt.diag)
			}
			if strings.Contains(diag, wantDemo[0]) || strings.Contains(diag, demoMRN) {
				t.Errorf("refusal names the patient's study or MRN: %q", diag)
			}
		})
	}

	t.Run("jwt route accepts RS256 and ES256 tokens for its audience", func(t *testing.T) {
		for _, alg := range []jwa.SignatureAlgorithm{jwa.RS256, jwa.ES256} {
			tok := env.mint(ehr, testehr.TokenSpec{Format: testehr.JWT, Alg: alg, Patient: demoPatient, Aud: jwtAud})
			res := search(t, env.as(tok), base+"/jwt/fhir/ImagingStudy?patient="+demoPatient)
			checkStudies(t, res, wantDemo, demoRef, base+"/jwt/wado/")
		}
	})

	t.Run("WADO: same bearer token, one introspection for search and 20 retrieves", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		as := env.as(tok)
		introspect0, token0, patient0 := ehr.Calls(testehr.Introspect), ehr.Calls(testehr.Token), ehr.Calls(testehr.Patient)
		res := search(t, as, smart+demoPatient)
		uids := keys(res.studies)
		for i := 0; i < 20; i++ {
			uid := uids[i%len(uids)]
			addr := res.endpoints[uid]
			insts := c.byStudy[uid]
			switch i % 4 {
			case 0:
				parts := retrieveMultipart(t, as, addr+"/studies/"+uid, `multipart/related; type="application/dicom"; transfer-syntax=*`, "application/dicom")
				if len(parts) != len(insts) {
					t.Fatalf("study retrieve gave %d parts, want %d", len(parts), len(insts))
				}
			case 1:
				get(t, as, addr+"/studies/"+uid+"/metadata", "application/dicom+json", http.StatusOK, "application/dicom+json")
			case 2:
				in := insts[i%len(insts)]
				parts := retrieveMultipart(t, as, addr+"/studies/"+uid+"/series/"+in.series+"/instances/"+in.sop, `multipart/related; type="application/dicom"`, "application/dicom")
				want, _ := os.ReadFile(in.file)
				if len(parts) != 1 || !bytes.Equal(parts[0], want) {
					t.Fatalf("instance retrieve differs from the file")
				}
			case 3:
				in := insts[0]
				get(t, as, addr+"/studies/"+uid+"/series/"+in.series+"/metadata", "application/dicom+json", http.StatusOK, "application/dicom+json")
			}
		}
		if n := ehr.Calls(testehr.Introspect) - introspect0; n != 1 {
			t.Errorf("the EHR saw %d introspections for one search and 20 retrieves with one token, want 1", n)
		}
		if n := ehr.Calls(testehr.Token) - token0; n > 1 {
			t.Errorf("the gateway asked for %d backend tokens, want at most 1 (reused)", n)
		}
		if n := ehr.Calls(testehr.Patient) - patient0; n > 1 {
			t.Errorf("the EHR saw %d Patient reads, want at most 1 (cached)", n)
		}
	})

	t.Run("WADO refusals", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		res := search(t, env.as(tok), smart+demoPatient)
		uid := keys(res.studies)[0]
		study := res.endpoints[uid] + "/studies/" + uid

		hdr, _ := smartRefused(t, env.as(""), study, http.StatusUnauthorized)
		if wa := hdr.Get("WWW-Authenticate"); !strings.HasPrefix(wa, "Bearer") {
			t.Errorf("WADO without a token: WWW-Authenticate = %q", wa)
		}
		alice := env.mint(ehr, testehr.TokenSpec{Patient: smartAlice})
		if _, diag := smartRefused(t, env.as(alice), study, http.StatusForbidden); !strings.Contains(diag, "another patient") {
			t.Errorf("WADO with another patient's token: %q", diag)
		}
		if _, diag := smartRefused(t, env.as(revoked), study, http.StatusUnauthorized); !strings.Contains(diag, "not active") {
			t.Errorf("WADO with a revoked token: %q", diag)
		}
		scopeless := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Scope: "patient/Observation.rs"})
		hdr, _ = smartRefused(t, env.as(scopeless), study, http.StatusForbidden)
		if wa := hdr.Get("WWW-Authenticate"); !strings.Contains(wa, "insufficient_scope") {
			t.Errorf("WADO with a wrong scope: WWW-Authenticate = %q", wa)
		}
	})

	t.Run("concurrent first requests with one token share one introspection", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: smartAlice})
		as := env.as(tok)
		before := ehr.Calls(testehr.Introspect)
		const n = 8
		errs := make(chan error, n)
		for range n {
			go func() {
				st, err := smartStatus(as, smart+smartAlice)
				if err == nil && st != http.StatusOK {
					err = fmt.Errorf("status %d", st)
				}
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		if got := ehr.Calls(testehr.Introspect) - before; got != 1 {
			t.Errorf("%d concurrent searches with one new token cost %d introspections, want 1", n, got)
		}
	})

	t.Run("patient without an MRN is refused, saying so", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: smartNoMRN})
		_, diag := smartRefused(t, env.as(tok), smart+smartNoMRN, http.StatusForbidden)
		if !strings.Contains(diag, "no identifier usable as a PACS key") || !strings.Contains(diag, smartMRNSystem) {
			t.Errorf("mrn_system route: diagnostics = %q", diag)
		}
		_, diag = smartRefused(t, env.as(tok), base+"/secret/fhir/ImagingStudy?patient="+smartNoMRN, http.StatusForbidden)
		if !strings.Contains(diag, "no identifier usable as a PACS key") || !strings.Contains(diag, "type MR") {
			t.Errorf("identifier type MR route: diagnostics = %q", diag)
		}
	})

	t.Run("client_secret route, caller token reads the Patient", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: smartAlice, Scope: "launch/patient patient/DiagnosticReport.read"})
		patient0 := ehr.Calls(testehr.Patient)
		res := search(t, env.as(tok), base+"/secret/fhir/ImagingStudy?patient="+smartAlice)
		checkStudies(t, res, wantAlice, ehr.FHIRBase()+"/Patient/"+smartAlice, base+"/secret/wado/")
		if ehr.Calls(testehr.Patient) == patient0 || ehr.LastPatientReadAuth() != "app" {
			t.Errorf("Patient read with %q credentials, want the caller's token (patient_lookup_token caller)", ehr.LastPatientReadAuth())
		}
		uid := keys(res.studies)[0]
		parts := retrieveMultipart(t, env.as(tok), res.endpoints[uid]+"/studies/"+uid, `multipart/related; type="application/dicom"`, "application/dicom")
		if len(parts) != len(c.byStudy[uid]) {
			t.Errorf("study retrieve gave %d parts, want %d", len(parts), len(c.byStudy[uid]))
		}
	})

	// /secret has no audience and no base_url: an introspected aud must name
	// the route's FHIR base as the request reaches it. A token for another
	// server (or another route of this one) was accepted before.
	t.Run("no base_url: aud must name this route's FHIR base", func(t *testing.T) {
		secret := base + "/secret/fhir/ImagingStudy?patient=" + smartAlice
		mint := func(aud ...string) string {
			return env.mint(ehr, testehr.TokenSpec{Patient: smartAlice, Scope: "launch/patient patient/ImagingStudy.rs", Aud: aud})
		}
		for name, tok := range map[string]string{
			"another server":                mint("https://elsewhere.example.org/fhir"),
			"the /smart route of this host": mint(base + "/smart/fhir"),
			"this route without /fhir":      mint(base + "/secret"),
			"this route over https":         mint("https://localhost:9080/secret/fhir"),
		} {
			t.Run("refused: a token for "+name, func(t *testing.T) {
				hdr, diag := smartRefused(t, env.as(tok), secret, http.StatusUnauthorized)
				if wa := hdr.Get("WWW-Authenticate"); !strings.Contains(wa, `error="invalid_token"`) || !strings.Contains(diag, "aud") {
					t.Errorf("WWW-Authenticate %q, diagnostics %q; want invalid_token naming aud", wa, diag)
				}
			})
		}
		for name, tok := range map[string]string{
			"this route":           mint(base + "/secret/fhir"),
			"this route, and more": mint("https://elsewhere.example.org/fhir", base+"/secret/fhir/"),
			"no aud at all":        mint(),
		} {
			t.Run("accepted: a token for "+name, func(t *testing.T) {
				checkStudies(t, search(t, env.as(tok), secret), wantAlice, ehr.FHIRBase()+"/Patient/"+smartAlice, base+"/secret/wado/")
			})
		}
		t.Run("one token on two routes: each checks its own audience", func(t *testing.T) {
			tok := env.mint(ehr, testehr.TokenSpec{Patient: smartAlice, Aud: []string{base + "/smart/fhir"}})
			search(t, env.as(tok), smart+smartAlice)
			smartRefused(t, env.as(tok), secret, http.StatusUnauthorized)
			search(t, env.as(tok), smart+smartAlice)
		})
	})

	t.Run("Epic-like EHR: configured introspection endpoint, patient from fhirUser", func(t *testing.T) {
		epic := env.epic
		tok := env.mint(epic, testehr.TokenSpec{Patient: demoPatient, OmitPatient: true, FHIRUser: epic.FHIRBase() + "/Patient/" + demoPatient})
		res := search(t, env.as(tok), base+"/epic/fhir/ImagingStudy?patient="+demoPatient)
		checkStudies(t, res, wantDemo, epic.FHIRBase()+"/Patient/"+demoPatient, base+"/epic/wado/")
		if epic.Calls(testehr.Introspect) == 0 {
			t.Error("the configured introspection endpoint was not used")
		}
		doctor := env.mint(epic, testehr.TokenSpec{Patient: demoPatient, OmitPatient: true, FHIRUser: epic.FHIRBase() + "/Practitioner/dr-1"})
		if _, diag := smartRefused(t, env.as(doctor), base+"/epic/fhir/ImagingStudy?patient="+demoPatient, http.StatusForbidden); !strings.Contains(diag, "no patient in context") {
			t.Errorf("practitioner fhirUser: %q", diag)
		}
	})

	t.Run("smart-configuration lists the EHR's endpoints and imaging capability", func(t *testing.T) {
		doc, resp := getJSON(t, env.as(""), base+"/smart/fhir/.well-known/smart-configuration", http.StatusOK)
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("Content-Type = %q", ct)
		}
		if doc["token_endpoint"] != ehr.TokenEndpoint() || doc["authorization_endpoint"] != ehr.URL()+"/auth/authorize" {
			t.Errorf("endpoints = token %v, authorize %v", doc["token_endpoint"], doc["authorization_endpoint"])
		}
		caps, _ := doc["capabilities"].([]any)
		if !slices.Contains(caps, any("smart-imaging-access")) || !slices.Contains(caps, any("permission-patient")) {
			t.Errorf("capabilities = %v, want smart-imaging-access and the EHR's own", caps)
		}
	})

	t.Run("metadata carries the oauth-uris extension", func(t *testing.T) {
		cs, _ := getJSON(t, env.as(""), base+"/smart/fhir/metadata", http.StatusOK)
		rest, _ := cs["rest"].([]any)
		if len(rest) == 0 {
			t.Fatalf("CapabilityStatement has no rest: %v", cs)
		}
		sec, _ := rest[0].(map[string]any)["security"].(map[string]any)
		exts, _ := sec["extension"].([]any)
		uris := map[string]string{}
		for _, e := range exts {
			em := e.(map[string]any)
			if em["url"] != "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris" {
				continue
			}
			sub, _ := em["extension"].([]any)
			for _, s := range sub {
				sm := s.(map[string]any)
				uris[fmt.Sprint(sm["url"])] = fmt.Sprint(sm["valueUri"])
			}
		}
		if uris["token"] != ehr.TokenEndpoint() || uris["authorize"] != ehr.URL()+"/auth/authorize" {
			t.Errorf("oauth-uris = %v", uris)
		}
	})

	t.Run("EHR down: 502, as for an unreachable PACS", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		_, diag := smartRefused(t, env.as(tok), base+"/down/fhir/ImagingStudy?patient="+demoPatient, http.StatusBadGateway)
		if !strings.Contains(diag, "unreachable") {
			t.Errorf("diagnostics = %q, want it to say the EHR is unreachable", diag)
		}
	})

	t.Run("EHR slow: 504 with Retry-After, then recovers", func(t *testing.T) {
		slow := base + "/slow/fhir/ImagingStudy?patient=" + demoPatient
		// Warm up: discovery, the backend token and the Patient are cached.
		warm := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		search(t, env.as(warm), slow)

		tok := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		release := ehr.Stall(testehr.Introspect)
		defer release()
		before := ehr.Calls(testehr.Introspect)
		hdr, diag := smartRefused(t, env.as(tok), slow, http.StatusGatewayTimeout)
		if hdr.Get("Retry-After") == "" {
			t.Error("504 without Retry-After")
		}
		if !strings.Contains(diag, "did not answer in time") {
			t.Errorf("diagnostics = %q", diag)
		}
		if n := ehr.Calls(testehr.Introspect) - before; n != 1 {
			t.Errorf("the stalled introspection endpoint saw %d calls, want 1", n)
		}
		release()
		// The failure was not cached: the same token works now.
		res := search(t, env.as(tok), slow)
		checkStudies(t, res, wantDemo, demoRef, base+"/slow/wado/")
	})
}
