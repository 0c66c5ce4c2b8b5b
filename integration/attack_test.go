package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwe"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/internal/badpacs"
	"github.com/smart-imaging/smart_imaging/internal/fhirclient"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// The adversarial suite: patient A (the demo's SMART patient, PACS
// PatientID demoMRN) holds a valid token and tries to reach any byte of
// patient B (PACS PatientID SIA-MRN-0001) or of the decoys (SIA-MRN-00011,
// sia-mrn-0001) through a real Caddy in front of a real Orthanc.
const (
	atkPatientB    = "sia-bob" // FHIR id of patient B
	atkMRNB        = "SIA-MRN-0001"
	atkMRNSystem   = "http://hospital.smarthealthit.org"
	atkClientID    = "imaging-gateway-attack"
	atkSecretEnv   = "SIA_ATTACK_CLIENT_SECRET"
	atkWrongSecret = "not-the-secret"
	// atkOtherSystem is an identifier system under which A's EHR record
	// holds a value that happens to be B's PACS PatientID (another
	// registry's number): never a PACS key unless the operator says so.
	atkOtherSystem = "urn:oid:2.16.840.1.113883.19.5.99"
)

// attackConfig is the gateway under attack. Every route fronts the same
// Orthanc: /a is bound to patient A, /b to patient B (the source of B's
// genuine study tokens), /open has no binding (its tokens name no
// patient), /smart and /jwt take SMART tokens from the test EHR (checked
// by introspection and locally as JWTs), /smartnb as /smart but without
// base_url, /evil and /evilopen front a misbehaving PACS, /dynr allows dynamic configs for the PACS, the EHR and the
// redirector.
//
// The /dyn route's operator policy: the PACS allowed as a PACS only, the
// EHR as an EHR only, the redirector as either; the PACS's and the EHR's credentials
// per host (a dummy secret for the redirector, so that no real secret is
// ever offered to a host that redirects), the static routes' identifier
// system, and the EHR's FHIR base as the accepted token audience.
func attackConfig(pacs *orthanc.Server, ehr *testehr.EHR, logFile, accessLog, redirectorHost, evilPACS string) string {
	key := base64.StdEncoding.EncodeToString(testKey)
	imagesAt := func(pacsURL, lookup string) string {
		return fmt.Sprintf(`images dicomweb %s {
				lookup %s
				basic_auth %s %s
			}
			study_token_key %s`, pacsURL, lookup, pacs.Username(), pacs.Password(), key)
	}
	images := func(lookup string) string { return imagesAt(pacs.DICOMwebURL(), lookup) }
	smartAuthz := func(extra string) string {
		return fmt.Sprintf(`authz smart-on-fhir {
				fhir_base_url %s
				client_id %s
				client_secret {env.%s}
				mrn_system %s
				%s
			}`, ehr.FHIRBase(), atkClientID, atkSecretEnv, atkMRNSystem, extra)
	}
	return fmt.Sprintf(testGlobals+`	grace_period 2s
%[1]s}
http://localhost:9080 {
	# The access log as the README recommends: study tokens, /dyn
	# segments and query access tokens filtered out of the request URI (Caddy already redacts
	# the Authorization and Cookie headers).
	log {
		output file %[11]s
		format filter {
			wrap json
			request>uri regexp "(/wado/|/dyn/|access_token=)[^/?&]+|eyJ[A-Za-z0-9_.-]+" "${1}REDACTED"
		}
	}
	handle_path /a/* {
		smart_imaging {
			authz mock {
				patient %[2]s mrn %[3]s
			}
			%[4]s
			# Every attack on /a runs against a metadata cache too.
			metadata_cache {
				ttl 1h
			}
		}
	}
	handle_path /b/* {
		smart_imaging {
			authz mock {
				patient %[5]s mrn %[6]s
			}
			%[4]s
		}
	}
	handle_path /open/* {
		smart_imaging {
			authz mock {
				disable_authz_checks
			}
			%[7]s
		}
	}
	handle_path /smart/* {
		smart_imaging {
			%[8]s
			%[4]s
			metadata_cache
			base_url http://localhost:9080/smart
		}
	}
	handle_path /jwt/* {
		smart_imaging {
			%[9]s
			%[4]s
			base_url http://localhost:9080/jwt
		}
	}
	# Introspection with neither audience nor base_url: a token's aud
	# must name this route's FHIR base as derived from the request.
	handle_path /smartnb/* {
		smart_imaging {
			%[8]s
			%[4]s
		}
	}
	handle_path /evil/* {
		smart_imaging {
			authz mock {
				patient %[2]s mrn %[3]s
			}
			%[20]s
		}
	}
	handle_path /evilopen/* {
		smart_imaging {
			authz mock {
				disable_authz_checks
			}
			%[21]s
		}
	}
	handle_path /dynr/* {
		smart_imaging {
			authz mock {
				patient %[2]s mrn %[3]s
			}
			%[4]s
			dynamic_config {
				allow_hosts %[10]s
				allow_ehr_hosts %[13]s
				allow_pacs_hosts %[12]s
				allow_mock
				credentials %[12]s basic %[14]s %[15]s
				credentials %[13]s client_secret %[16]s {env.%[17]s}
				credentials %[10]s client_secret %[16]s not-the-ehr-secret
				authz smart-on-fhir {
					mrn_system %[18]s
					audience %[19]s
				}
				metadata_cache
			}
		}
	}
}
`, globalLogOption(logFile), demoPatient, demoMRN, images("studies-by-mrn"), atkPatientB, atkMRNB,
		images("all-studies"), smartAuthz(""), smartAuthz("jwks_url "+ehr.JWKSURL()), redirectorHost, accessLog,
		"127.0.0.1:"+strconv.Itoa(pacs.Port()), hostOf(ehr.URL()), pacs.Username(), pacs.Password(), atkClientID, atkSecretEnv,
		atkMRNSystem, ehr.FHIRBase(),
		imagesAt(evilPACS, "studies-by-mrn"), imagesAt(evilPACS, "all-studies"))
}

// attacker sends attempts and judges the answers.
type attacker struct {
	t        *testing.T
	client   *http.Client
	needles  []needle        // identifiers of every patient but A
	aStudies map[string]bool // A's study UIDs
	ledger   *attackLedger
	// sent records the identifiers of others that attempts carried: the
	// log may name what the attacker itself sent (audit lines record what
	// was asked), nothing else.
	sent map[string]bool
	// presented records the bearer and study tokens attempts carried,
	// forged or not: none may show up in the log.
	presented map[string]bool
}

// atkReq is one attempt.
type atkReq struct {
	name    string
	method  string // GET when empty
	url     string
	bearer  string // sent as "Authorization: Bearer …" when set
	accept  string
	body    []byte
	headers [][2]string // added as given (repeats allowed)
	// want lists the acceptable statuses.
	want []int
	// aOnly: a 200 search answer is acceptable when it holds only A's
	// studies.
	aOnly bool
	// brokenOK: a broken transfer (200, then the body aborted) is an
	// acceptable refusal, as when a stream is stopped mid-way.
	brokenOK bool
}

// run sends one attempt, counts it, and reports a leak when the answer
// (headers or body) carries any identifier of another patient that the
// request did not carry itself, or a search answer lists a study that is
// not A's.
func (a *attacker) run(r atkReq) (int, []byte) {
	t := a.t
	t.Helper()
	a.ledger.attempt()
	method := r.method
	if method == "" {
		method = http.MethodGet
	}
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequest(method, r.url, body)
	if err != nil {
		t.Errorf("%s: building the request: %v", r.name, err)
		return 0, nil
	}
	if r.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+r.bearer)
	}
	accept := r.accept
	if accept == "" {
		accept = "application/fhir+json"
	}
	req.Header.Set("Accept", accept)
	for _, h := range r.headers {
		req.Header.Add(h[0], h[1])
	}
	requestText := method + " " + r.url + "\n" + string(headerBytes(req.Header)) + string(r.body)
	a.ledger.mu.Lock()
	for _, n := range a.needles {
		if strings.Contains(requestText, n.value) {
			a.sent[n.value] = true
		}
	}
	if len(r.bearer) >= 16 && strings.Trim(r.bearer, r.bearer[:1]) != "" {
		a.presented[r.bearer] = true
	}
	if _, rest, ok := strings.Cut(r.url, "/wado/"); ok {
		// (A study UID put where the token goes is no token.)
		if tok, _, _ := strings.Cut(rest, "/"); len(tok) >= 32 && strings.Trim(tok, "0123456789.") != "" && strings.Trim(tok, tok[:1]) != "" {
			a.presented[tok] = true
		}
	}
	a.ledger.mu.Unlock()

	resp, err := a.client.Do(req)
	if err != nil {
		t.Errorf("%s: %s %s: %v", r.name, method, r.url, err)
		return 0, nil
	}
	defer resp.Body.Close()
	a.ledger.status(resp.StatusCode)
	got, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	broken := err != nil && r.brokenOK && resp.StatusCode == http.StatusOK
	if err != nil && !broken {
		t.Errorf("%s: reading the answer: %v", r.name, err)
	}
	if found := scanFor(a.needles, requestText, got, headerBytes(resp.Header)); len(found) > 0 {
		a.ledger.leak("%s: %s %s answered HTTP %d holding %s", r.name, method, r.url, resp.StatusCode, strings.Join(found, ", "))
		t.Errorf("LEAK %s: HTTP %d holds %s: %.300s", r.name, resp.StatusCode, strings.Join(found, ", "), got)
	}
	if !slices.Contains(r.want, resp.StatusCode) && !broken {
		a.ledger.miss()
		t.Errorf("%s: %s %s: HTTP %d, want one of %v; body %.300s", r.name, method, r.url, resp.StatusCode, r.want, got)
	}
	if resp.StatusCode >= 400 && method != http.MethodHead {
		var oo struct {
			ResourceType string `json:"resourceType"`
			Issue        []struct {
				Diagnostics string `json:"diagnostics"`
			} `json:"issue"`
		}
		if json.Unmarshal(got, &oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
			t.Errorf("%s: HTTP %d answer is not an OperationOutcome: %.300s", r.name, resp.StatusCode, got)
		} else if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
			t.Errorf("%s: refusal Content-Type %q", r.name, ct)
		}
	}
	if resp.StatusCode == http.StatusOK && r.aOnly {
		for _, uid := range bundleStudyUIDs(got) {
			if !a.aStudies[uid] {
				a.ledger.leak("%s: search answer lists study %s, which is not A's", r.name, uid)
				t.Errorf("LEAK %s: search answer lists study %s, which is not A's", r.name, uid)
			}
		}
	}
	return resp.StatusCode, got
}

// bundleStudyUIDs lists the study UIDs of the ImagingStudy resources in a
// searchset Bundle.
func bundleStudyUIDs(body []byte) []string {
	var b struct {
		Entry []struct {
			Resource struct {
				ResourceType string `json:"resourceType"`
				Identifier   []struct {
					Value string `json:"value"`
				} `json:"identifier"`
			} `json:"resource"`
		} `json:"entry"`
	}
	if json.Unmarshal(body, &b) != nil {
		return nil
	}
	var out []string
	for _, e := range b.Entry {
		if e.Resource.ResourceType == "ImagingStudy" {
			for _, id := range e.Resource.Identifier {
				out = append(out, strings.TrimPrefix(id.Value, "urn:oid:"))
			}
		}
	}
	return out
}

// bundleEndpoints maps study UID → Endpoint address in a searchset Bundle.
func bundleEndpoints(t *testing.T, body []byte) map[string]string {
	t.Helper()
	out, err := fhirclient.StudyEndpoints(body)
	if err != nil {
		t.Fatalf("search answer: %v", err)
	}
	return out
}

// legitSearch is a search that must work: it returns study UID → Endpoint
// address and checks the answer holds exactly want.
func legitSearch(t *testing.T, c *http.Client, u, bearer string, want []string) map[string]string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", "application/fhir+json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d: %.300s", u, resp.StatusCode, body)
	}
	eps := bundleEndpoints(t, body)
	if got := keys(eps); strings.Join(got, " ") != strings.Join(sortedCopy(want), " ") {
		t.Fatalf("GET %s: studies %v, want exactly %v", u, got, sortedCopy(want))
	}
	return eps
}

// tokenOfAddress is the study token at the end of an Endpoint address.
func tokenOfAddress(addr string) string { return addr[strings.LastIndex(addr, "/")+1:] }

// jwtClaims are the claims of a SMART access token for the /jwt route.
func atkJWTClaims(ehr *testehr.EHR, patient string, exp time.Time) map[string]any {
	return map[string]any{
		"iss": ehr.Issuer(), "aud": base + "/jwt/fhir", "sub": "user-1", "client_id": "app",
		"scope": "launch/patient patient/ImagingStudy.rs", "patient": patient,
		"exp": exp.Unix(), "iat": time.Now().Unix(), "jti": fmt.Sprint(time.Now().UnixNano()),
	}
}

// atkSignJWT signs claims with key under alg, with extra protected
// headers.
func atkSignJWT(t *testing.T, claims map[string]any, alg jwa.SignatureAlgorithm, key any, headers map[string]any) string {
	t.Helper()
	hdrs := jws.NewHeaders()
	_ = hdrs.Set(jws.TypeKey, "JWT")
	for k, v := range headers {
		if err := hdrs.Set(k, v); err != nil {
			t.Fatalf("header %s: %v", k, err)
		}
	}
	payload, _ := json.Marshal(claims)
	signed, err := jws.Sign(payload, jws.WithKey(alg, key, jws.WithProtectedHeaders(hdrs)))
	if err != nil {
		t.Fatal(err)
	}
	return string(signed)
}

// replaceJWTPayload keeps a JWT's header and signature and swaps its
// claims.
func replaceJWTPayload(tok string, claims map[string]any) string {
	parts := strings.Split(tok, ".")
	payload, _ := json.Marshal(claims)
	parts[1] = base64.RawURLEncoding.EncodeToString(payload)
	return strings.Join(parts, ".")
}

// flipAt changes one base64url character of s at i (to another valid
// one).
func flipAt(s string, i int) string {
	b := []byte(s)
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func TestAttack(t *testing.T) {
	pacs, rows := startDemoPACS(t)
	pats := demoPatients(rows)
	pa, pb := pats[demoMRN], pats[atkMRNB]
	if pa == nil || pb == nil || len(pa.studies) < 2 || len(pb.studies) < 1 {
		t.Fatalf("the demo set lacks patients A (%s) and B (%s)", demoMRN, atkMRNB)
	}
	instancesBefore := pacsInstanceCount(t, pacs)

	// The test EHR: A and B with their MRNs; the gateway is a confidential
	// client.
	secret := "sia-attack-secret-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Setenv(atkSecretEnv, secret)
	ehr := testehr.New(t)
	ehr.RegisterClient(testehr.Client{ID: atkClientID, Secret: secret})
	mr := func(v string) testehr.Identifier {
		return testehr.Identifier{System: atkMRNSystem, Value: v, TypeCode: "MR", Use: "usual"}
	}
	ehr.AddPatient(demoPatient, mr(demoMRN), testehr.Identifier{System: atkOtherSystem, Value: atkMRNB})
	ehr.AddPatient(atkPatientB, mr(atkMRNB))

	// SSRF bait: a server off every allow list that counts what reaches
	// it, and a server on the /dyn allow list that redirects there.
	baitHits := &hitLog{}
	bait := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		baitHits.add(r)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"bait":"reached"}`)
	}))
	t.Cleanup(bait.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/evil-fhir/.well-known/smart-configuration" {
			// An allowed host whose discovery names endpoints off the list.
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{
				"issuer": bait.URL + "/auth", "jwks_uri": bait.URL + "/auth/jwks",
				"authorization_endpoint": bait.URL + "/auth/authorize", "token_endpoint": bait.URL + "/auth/token",
				"introspection_endpoint": bait.URL + "/auth/introspect",
				"capabilities":           []string{"permission-patient"},
			})
			return
		}
		http.Redirect(w, r, bait.URL+r.URL.RequestURI(), http.StatusFound)
	}))
	t.Cleanup(redirector.Close)

	// A PACS that misbehaves, in front of the same Orthanc.
	evil, err := badpacs.Start(pacs.DICOMwebURL(), pacs.Username(), pacs.Password())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = evil.Close() })

	logDir := t.TempDir()
	logFile, accessLog := filepath.Join(logDir, "caddy.log"), filepath.Join(logDir, "access.log")
	tc := caddytest.NewTester(t)
	tc.InitServer(attackConfig(pacs, ehr, logFile, accessLog, hostOf(redirector.URL), evil.DICOMwebURL()), "caddyfile")

	ledger := &attackLedger{}
	a := &attacker{t: t, client: newRawClient(4), needles: foreignNeedles(rows, demoMRN), aStudies: pa.studySet(), ledger: ledger,
		sent: map[string]bool{}, presented: map[string]bool{}}
	defer a.client.CloseIdleConnections()

	// Genuine material: what A, B and the open route legitimately get.
	epsA := legitSearch(t, a.client, base+"/a/fhir/ImagingStudy?patient="+demoPatient, "", pa.studies)
	epsB := legitSearch(t, a.client, base+"/b/fhir/ImagingStudy?patient="+atkPatientB, "", pb.studies)
	epsOpen := legitSearch(t, a.client, base+"/open/fhir/ImagingStudy", "", keysOf(func() map[string]bool {
		m := map[string]bool{}
		for _, p := range pats {
			for _, s := range p.studies {
				m[s] = true
			}
		}
		return m
	}()))
	tokA := ehr.IssueToken(testehr.TokenSpec{Patient: demoPatient})
	tokB := ehr.IssueToken(testehr.TokenSpec{Patient: atkPatientB})
	jwtA := ehr.IssueToken(testehr.TokenSpec{Format: testehr.JWT, Patient: demoPatient, Aud: []string{base + "/jwt/fhir"}})
	smartEpsA := legitSearch(t, a.client, base+"/smart/fhir/ImagingStudy?patient="+demoPatient, tokA, pa.studies)
	smartEpsB := legitSearch(t, a.client, base+"/smart/fhir/ImagingStudy?patient="+atkPatientB, tokB, pb.studies)
	jwtEpsA := legitSearch(t, a.client, base+"/jwt/fhir/ImagingStudy?patient="+demoPatient, jwtA, pa.studies)
	evilEpsA := legitSearch(t, a.client, base+"/evil/fhir/ImagingStudy?patient="+demoPatient, "", pa.studies)
	evilOpenEps := legitSearch(t, a.client, base+"/evilopen/fhir/ImagingStudy", "", keys(epsOpen))

	// Everything that must never show up in a log line.
	logSecrets := []needle{{"access token of A", tokA}, {"access token of B", tokB}, {"JWT access token of A", jwtA},
		{"PACS password", pacs.Password()}, {"client secret", secret}}
	for _, eps := range []map[string]string{epsA, epsB, epsOpen, smartEpsA, smartEpsB, jwtEpsA, evilEpsA, evilOpenEps} {
		for uid, addr := range eps {
			logSecrets = append(logSecrets, needle{"study token for " + uid, tokenOfAddress(addr)})
		}
	}

	// Log lines from here on come from the attack: B's own searches
	// above may name B's studies, the attack's lines may not.
	attackFromLine, accessFromLine := len(readLogLines(t, logFile)), len(readLogLines(t, accessLog))

	sa, sa2, sb := pa.studies[0], pa.studies[1], pb.studies[0]
	raA, rbB := pa.rowsOf(sa)[0], pb.rowsOf(sb)[0]
	sa2Row := pa.rowsOf(sa2)[0]
	tA := tokenOfAddress(epsA[sa])
	wadoA := base + "/a/wado/" + tA
	dicomAccept := `multipart/related; type="application/dicom"`

	t.Run("control: A reaches A's own study", func(t *testing.T) {
		a2 := *a
		a2.t = t
		a2.run(atkReq{name: "A's study metadata", url: wadoA + "/studies/" + sa + "/metadata", accept: "application/dicom+json", want: []int{200}})
		a2.run(atkReq{name: "A's instance", url: wadoA + "/studies/" + sa + "/series/" + raA.series + "/instances/" + raA.sop, accept: dicomAccept, want: []int{200}})
	})

	t.Run("QIDO patterns in every search parameter", func(t *testing.T) {
		a2 := *a
		a2.t = t
		attackSearches(&a2, base+"/a/fhir/ImagingStudy", "", pa, pb)
	})
	t.Run("QIDO patterns on the SMART routes", func(t *testing.T) {
		a2 := *a
		a2.t = t
		attackPatientParams(&a2, base+"/smart/fhir/ImagingStudy", tokA)
		attackPatientParams(&a2, base+"/jwt/fhir/ImagingStudy", jwtA)
	})

	t.Run("WADO paths under A's study token", func(t *testing.T) {
		a2 := *a
		a2.t = t
		attackWADOPaths(&a2, wadoA, base+"/a", "", sa, sa2, sb, raA, rbB, sa2Row)
	})

	t.Run("methods", func(t *testing.T) {
		a2 := *a
		a2.t = t
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions, "PROPFIND"} {
			for _, u := range []string{wadoA + "/studies/" + sa, wadoA + "/studies/" + sb, wadoA + "/studies/" + sa + "/series/" + raA.series + "/instances/" + raA.sop} {
				a2.run(atkReq{name: m + " on a WADO path", method: m, url: u, accept: dicomAccept, want: []int{405}})
			}
			a2.run(atkReq{name: m + " on the search", method: m, url: base + "/a/fhir/ImagingStudy?patient=" + atkPatientB, want: []int{405}})
			a2.run(atkReq{name: m + " on the search by A", method: m, url: base + "/a/fhir/ImagingStudy?patient=" + demoPatient, want: []int{405}})
		}
		dcm, err := os.ReadFile(filepath.Join(demoStudiesDir, rbB.file))
		if err != nil {
			t.Fatal(err)
		}
		a2.run(atkReq{name: "STOW-RS of B's instance under A's token", method: http.MethodPost, url: wadoA + "/studies",
			body: dcm, headers: [][2]string{{"Content-Type", `multipart/related; type="application/dicom"`}}, want: []int{400, 405}})
		a2.run(atkReq{name: "POST search with B in the form", method: http.MethodPost, url: base + "/a/fhir/ImagingStudy/_search",
			body: []byte("patient=" + atkPatientB), headers: [][2]string{{"Content-Type", "application/x-www-form-urlencoded"}}, want: []int{405}})
		a2.run(atkReq{name: "HEAD on B's study", method: http.MethodHead, url: wadoA + "/studies/" + sb, accept: dicomAccept, want: []int{403}})
		a2.run(atkReq{name: "HEAD on B's series under A's study", method: http.MethodHead, url: wadoA + "/studies/" + sa + "/series/" + rbB.series, accept: dicomAccept, want: []int{404}})
		a2.run(atkReq{name: "HEAD search for B", method: http.MethodHead, url: base + "/a/fhir/ImagingStudy?patient=" + atkPatientB, want: []int{403}})
	})

	t.Run("study tokens", func(t *testing.T) {
		a2 := *a
		a2.t = t
		attackStudyTokens(&a2, tA, sa, sb, epsB[sb], epsOpen[sa], rbB)
	})

	t.Run("SMART tokens", func(t *testing.T) {
		a2 := *a
		a2.t = t
		attackSMART(&a2, ehr, tokA, tokB, jwtA, smartEpsA, smartEpsB, jwtEpsA, tA, sa, sb, bait.URL, baitHits)
	})

	t.Run("sizes and repeats", func(t *testing.T) {
		a2 := *a
		a2.t = t
		attackSizes(&a2, wadoA, base+"/a/fhir/ImagingStudy", pa, sa)
	})

	t.Run("audiences and identifier systems", func(t *testing.T) {
		a2 := *a
		a2.t = t
		attackAudienceAndSystems(&a2, ehr, pa)
	})

	t.Run("dynamic config SSRF", func(t *testing.T) {
		a2 := *a
		a2.t = t
		attackDynamic(&a2, dynWorld{pacs: pacs, ehr: ehr, bait: bait.URL, baitHits: baitHits,
			redirector: redirector.URL, patientA: pa, secret: secret})
	})

	t.Run("a PACS that answers with other data", func(t *testing.T) {
		a2 := *a
		a2.t = t
		attackUntrustedPACS(&a2, pacsWorld{evil: evil, a: pa, b: pb, eps: evilEpsA, openEps: evilOpenEps, logFile: logFile})
	})

	// Nothing was written to the PACS and nothing removed.
	if n := pacsInstanceCount(t, pacs); n != instancesBefore {
		ledger.leak("the PACS held %d instances before the attack and %d after", instancesBefore, n)
		t.Errorf("the PACS held %d instances before the attack and %d after", instancesBefore, n)
	}

	// The log: no credential, no study token, nothing of another patient.
	var notSent []needle
	for _, n := range a.needles {
		if !a.sent[n.value] {
			notSent = append(notSent, n)
		}
	}
	for _, tok := range keys(a.presented) {
		logSecrets = append(logSecrets, needle{"token presented by an attempt (" + truncate(tok, 16) + ")", tok})
	}
	checkAttackLog(t, logFile, attackFromLine, notSent, logSecrets, ledger, true)
	checkAttackLog(t, accessLog, accessFromLine, notSent, logSecrets, ledger, false)

	attempts, leaks, unexpected := ledger.counts()
	summary := fmt.Sprintf("attack suite: %d attempts, %d leaks, %d answered otherwise than required", attempts, leaks, unexpected)
	t.Log(summary)
	fmt.Println(summary)
	fmt.Printf("attack suite answers: %s\n", ledger.statusSummary())
	for _, l := range ledger.leaks {
		t.Errorf("leak: %s", l)
	}
	if attempts < 300 {
		t.Errorf("the suite made only %d attempts; it is meant to try hard", attempts)
	}
}

// hostOf is the host[:port] of a URL.
func hostOf(u string) string {
	pu, _ := url.Parse(u)
	return pu.Host
}

func keysOf(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// dynSegmentInLog finds /dyn/{segment} in a log line.
var (
	dynSegmentInLog = regexp.MustCompile(`/dyn/([A-Za-z0-9_=-]+)`)
	dynRouteHash    = regexp.MustCompile(`^[0-9a-f]{16}$`)
)

// checkAttackLog scans every line Caddy logged: none may hold a secret,
// and none from line from on may hold an identifier in foreign (those of
// other patients that no attempt sent).
func checkAttackLog(t *testing.T, logFile string, from int, foreign, secrets []needle, ledger *attackLedger, audited bool) {
	t.Helper()
	// Audit lines are written when the handler returns; the last one may
	// trail the last answer by a moment.
	var lines []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines = readLogLines(t, logFile)
		if len(lines) > 0 && (!audited || strings.Contains(lines[len(lines)-1], "decision")) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(lines) == 0 {
		t.Fatalf("the log file %s is empty: the suite cannot check it", logFile)
	}
	audit := 0
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("log line %d is not JSON: %.200s", i, l)
			continue
		}
		if m["logger"] == "http.handlers.smart_imaging.audit" {
			audit++
		}
		if lvl, _ := m["level"].(string); strings.Contains(l, "panic") || lvl == "panic" || lvl == "fatal" {
			t.Errorf("log line %d reports a panic: %.300s", i, l)
		}
		// A /dyn segment is a whole tenant config (credentials included,
		// when a route accepts them): it must not reach the log, and what
		// it decodes to is scanned as well.
		decoded := l
		for _, m := range dynSegmentInLog.FindAllStringSubmatch(l, -1) {
			if m[1] == "REDACTED" || dynRouteHash.MatchString(m[1]) {
				continue // (a tenant's route id names a hash of its config)
			}
			ledger.leak("log line %d holds a /dyn segment", i)
			t.Errorf("log line %d holds a /dyn segment: %.300s", i, l)
			if raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(m[1], "=")); err == nil {
				decoded += "\n" + string(raw)
			}
		}
		for _, s := range secrets {
			if s.value != "" && strings.Contains(decoded, s.value) {
				ledger.leak("log line %d holds the %s", i, s.label)
				t.Errorf("log line %d holds the %s: %.300s", i, s.label, l)
			}
		}
		if i < from {
			continue
		}
		if found := scanFor(foreign, "", []byte(l)); len(found) > 0 {
			ledger.leak("log line %d holds %s", i, strings.Join(found, ", "))
			t.Errorf("log line %d holds %s: %.300s", i, strings.Join(found, ", "), l)
		}
	}
	if audited && audit < 100 {
		t.Errorf("the log holds %d audit lines; the attempts were not audited", audit)
	}
	t.Logf("checked %d lines of %s (%d audit lines)", len(lines), filepath.Base(logFile), audit)
}

// attackSearches throws QIDO patterns, lists, escapes, empty values, case
// variants, repeats and encodings at every search parameter of a route
// bound to A.
func attackSearches(a *attacker, search, bearer string, pa, pb *demoPatientData) {
	sys := atkMRNSystem
	am, bm := pa.mrn, pb.mrn
	sa, sb := pa.studies[0], pb.studies[0]
	refused := []int{400, 403}

	attackPatientParams(a, search, bearer)

	idValues := []string{"*", "?", "", ",", `\`, "|*", "|", "|?", bm, "|" + bm, sys + "|" + bm,
		sys + "|" + am + "*", sys + "|" + am[:10] + "*", sys + "|" + am + "," + bm, sys + "|" + bm + "," + am,
		sys + "|" + am + `\` + bm, sys + "|" + strings.ToUpper(am), sys + "|" + strings.ToLower(bm),
		sys + "|SIA-MRN-000?", sys + "|SIA-MRN-000*", sys + "|" + bm + "*", sys + "|*" + bm[3:],
		sys + "|" + am + "%", sys + "|" + am + "&PatientID=*", sys + "|" + am + "\x00", sys + "|" + am + "\n" + bm,
		sys + "|" + am + " ", sys + "| " + am, sys + "|" + am + "#", sys + "|" + am + "=*", sys + "|" + strings.Repeat("9", 65),
	}
	for _, name := range []string{"patient.identifier", "subject.identifier"} {
		for _, v := range idValues {
			q := url.Values{name: {v}}
			a.run(atkReq{name: name + "=" + strconv.Quote(v), url: search + "?" + q.Encode(), bearer: bearer, want: refused})
			q.Set("patient", demoPatient)
			a.run(atkReq{name: "patient=A&" + name + "=" + strconv.Quote(v), url: search + "?" + q.Encode(), bearer: bearer, want: refused})
		}
	}

	// identifier (the study UID) narrows A's own search: B's UID finds
	// nothing, patterns are refused.
	for _, v := range []string{"urn:oid:" + sb, "urn:dicom:uid|urn:oid:" + sb, "urn:oid:" + sa + ",urn:oid:" + sb,
		"urn:oid:" + sb + ",urn:oid:" + sa, "urn:oid:*", "*", "", ",", "urn:oid:" + sb + "*", "urn:oid:" + sb[:20] + "*",
		"urn:oid:" + sa + `\` + sb, "urn:oid:" + sb + "?", "|urn:oid:" + sb, "urn:dicom:uid|*", sb, "urn:oid:" + sb + "&PatientID=*"} {
		q := url.Values{"identifier": {v}, "patient": {demoPatient}}
		a.run(atkReq{name: "patient=A&identifier=" + strconv.Quote(v), url: search + "?" + q.Encode(), bearer: bearer, want: []int{200, 400}, aOnly: true})
		q.Del("patient")
		a.run(atkReq{name: "identifier=" + strconv.Quote(v) + " alone", url: search + "?" + q.Encode(), bearer: bearer, want: refused})
	}

	// PACS attribute names and other unknown parameters are ignored: A
	// still gets A's studies only; without ?patient= the search is refused.
	for _, name := range []string{"PatientID", "00100020", "0010,0020", "patientid", "PATIENT", "Patient", "patient:identifier",
		"patient:missing", "_id", "StudyInstanceUID", "0020000D", "_has:ImagingStudy:patient:identifier", "_include", "_revinclude",
		"_filter", "_query", "_contained", "includefield", "limit", "fuzzymatching"} {
		for _, v := range []string{"*", "", atkPatientB, bm, sb, "SIA-MRN-000?", bm + "," + am, "true"} {
			q := url.Values{name: {v}, "patient": {demoPatient}}
			a.run(atkReq{name: "patient=A&" + name + "=" + strconv.Quote(v), url: search + "?" + q.Encode(), bearer: bearer, want: []int{200, 400}, aOnly: true})
		}
		q := url.Values{name: {bm}}
		a.run(atkReq{name: name + "=B alone", url: search + "?" + q.Encode(), bearer: bearer, want: refused})
	}

	// Repeated parameters and odd encodings, written raw.
	for _, raw := range []string{
		"patient=" + demoPatient + "&patient=" + atkPatientB,
		"patient=" + atkPatientB + "&patient=" + demoPatient,
		"patient=" + demoPatient + "&patient=",
		"patient=&patient=" + demoPatient,
		"patient=" + demoPatient + "&subject=" + atkPatientB,
		"subject=" + atkPatientB + "&patient=" + demoPatient,
		"patient=" + demoPatient + "&subject=Patient/" + atkPatientB,
		"patient=" + demoPatient + "&patient.identifier=" + url.QueryEscape(sys+"|"+am) + "&patient.identifier=" + url.QueryEscape(sys+"|"+bm),
		"patient.identifier=" + url.QueryEscape(sys+"|"+bm) + "&patient.identifier=" + url.QueryEscape(sys+"|"+am) + "&patient=" + demoPatient,
		"patient=" + demoPatient + "&subject.identifier=" + url.QueryEscape(sys+"|"+bm),
		"patient=%2A", "patient=%2a", "patient=%3F", "patient=%5C", "patient=%2C",
		"patient=" + demoPatient + "%2C" + atkPatientB, "patient=" + demoPatient + "%252C" + atkPatientB,
		"patient=" + demoPatient + "%5C" + atkPatientB, "patient=" + demoPatient + "%00", "patient=" + demoPatient + "%0A" + atkPatientB,
		"pati%65nt=" + atkPatientB, "patient%3D" + atkPatientB, "patient=" + demoPatient + ";patient=" + atkPatientB,
		"patient=" + demoPatient + "&patient%2Eidentifier=" + url.QueryEscape(sys+"|"+bm),
		"patient=" + demoPatient + "&patient.identifier=" + url.QueryEscape(sys) + "%7C" + bm,
		"patient=" + demoPatient + "&patient.identifier=" + url.QueryEscape(sys+"|") + "%2A",
		"patient=" + demoPatient + "&patient.identifier=" + url.QueryEscape(sys+"|"+am) + "%252A",
		"patient=" + demoPatient + "&patient.identifier=" + url.QueryEscape(sys+"|"+am) + "%2C" + bm,
		"patient=Patient%2F" + atkPatientB, "patient=Patient/" + demoPatient + "/../" + atkPatientB,
		"patient=" + demoPatient + "&&&patient=" + atkPatientB, "patient[]=" + atkPatientB,
		"patient=" + strings.Repeat("A", 10000),
	} {
		a.run(atkReq{name: "raw query " + strconv.Quote(raw), url: search + "?" + raw, bearer: bearer, want: refused})
	}
	a.run(atkReq{name: "patient:Patient=B next to patient=A", url: search + "?patient=" + demoPatient + "&patient:Patient=" + atkPatientB, bearer: bearer, want: []int{200, 400, 403}, aOnly: true})
	// A's own id percent-encoded is still A: allowed, A's studies only.
	enc := ""
	for _, c := range []byte(demoPatient) {
		enc += fmt.Sprintf("%%%02X", c)
	}
	a.run(atkReq{name: "A's id percent-encoded", url: search + "?patient=" + enc, bearer: bearer, want: []int{200}, aOnly: true})
	a.run(atkReq{name: "patient=A twice", url: search + "?patient=" + demoPatient + "&patient=" + demoPatient, bearer: bearer, want: []int{200, 400}, aOnly: true})
	a.run(atkReq{name: "_count and _offset past the end", url: search + "?patient=" + demoPatient + "&_count=1000000&_offset=1", bearer: bearer, want: []int{200, 400}, aOnly: true})
}

// attackPatientParams throws other patients and patterns at patient= and
// subject= (the route's patient binding).
func attackPatientParams(a *attacker, search, bearer string) {
	refused := []int{400, 403}
	a_ := demoPatient
	b := atkPatientB
	values := []string{"*", "?", "", " ", ",", `\`, a_ + "*", a_[:8] + "*", "*" + a_[8:], "Patient/*", b, "Patient/" + b,
		a_ + "," + b, b + "," + a_, a_ + `\` + b, a_ + "|" + b, strings.ToUpper(a_), a_ + "\x00",
		"Patient/" + a_ + "/_history/1", "http://evil.example.org/fhir/Patient/" + a_, "Group/" + a_,
		"Practitioner/" + a_, a_ + "&patient=" + b, demoMRN, atkMRNB, "Patient?identifier=" + atkMRNB, "Patient/" + a_ + "/" + b,
		"Patient/" + a_ + "?x", "Patient/" + a_ + "#" + b, "urn:uuid:" + a_, "%" + a_, a_[:len(a_)-1] + "?", a_ + "%",
	}
	for _, name := range []string{"patient", "subject"} {
		for _, v := range values {
			q := url.Values{name: {v}}
			a.run(atkReq{name: name + "=" + strconv.Quote(v), url: search + "?" + q.Encode(), bearer: bearer, want: refused})
		}
		// Blanks around A's own id: still A (or refused), never anyone else.
		for _, v := range []string{a_ + " ", " " + a_, a_ + "\n", "\t" + a_, "Patient/" + a_ + " "} {
			q := url.Values{name: {v}}
			a.run(atkReq{name: name + "=" + strconv.Quote(v), url: search + "?" + q.Encode(), bearer: bearer, want: []int{200, 400, 403}, aOnly: true})
		}
	}
}

// attackWADOPaths tries every way of naming B's data, or a PACS route
// other than WADO-RS, under A's study token (wado is {route}/wado/{token})
// and as paths of the route itself.
func attackWADOPaths(a *attacker, wado, route, bearer, sa, sa2, sb string, ra, rb, ra2 demoRow) {
	dicomAccept := `multipart/related; type="application/dicom"`
	octet := `multipart/related; type="application/octet-stream"`
	type p struct {
		path, accept string
		want         []int
	}
	forbidden := []int{403}
	notFound := []int{403, 404}
	bad := []int{400}
	inst := func(study, series, sop string) string {
		return "/studies/" + study + "/series/" + series + "/instances/" + sop
	}
	var paths []p
	// B's study by name under A's token: the token names A's study.
	for _, suffix := range []string{"", "/metadata", "/rendered", "/thumbnail", "/series/" + rb.series, "/series/" + rb.series + "/metadata",
		"/series/" + rb.series + "/instances/" + rb.sop, "/series/" + rb.series + "/instances/" + rb.sop + "/frames/1",
		"/series/" + rb.series + "/instances/" + rb.sop + "/bulk/7fe00010"} {
		paths = append(paths, p{"/studies/" + sb + suffix, dicomAccept, forbidden})
	}
	// B's series and instances under A's study UID: Orthanc or the
	// gateway must refuse them.
	for _, x := range []struct{ path, accept string }{
		{"/studies/" + sa + "/series/" + rb.series, dicomAccept},
		{"/studies/" + sa + "/series/" + rb.series + "/metadata", "application/dicom+json"},
		{"/studies/" + sa + "/series/" + rb.series + "/rendered", "image/png"},
		{"/studies/" + sa + "/series/" + rb.series + "/thumbnail", "image/png"},
		{inst(sa, rb.series, rb.sop), dicomAccept},
		{inst(sa, rb.series, rb.sop) + "/metadata", "application/dicom+json"},
		{inst(sa, rb.series, rb.sop) + "/frames/1", octet},
		{inst(sa, rb.series, rb.sop) + "/frames/1/rendered", "image/png"},
		{inst(sa, rb.series, rb.sop) + "/rendered", "image/jpeg"},
		{inst(sa, rb.series, rb.sop) + "/thumbnail", "image/jpeg"},
		{inst(sa, rb.series, rb.sop) + "/bulk/7fe00010", octet},
		{inst(sa, rb.series, rb.sop) + "/bulkdata/7fe00010", octet},
		{inst(sa, ra.series, rb.sop), dicomAccept},
		{inst(sa, ra.series, rb.sop) + "/metadata", "application/dicom+json"},
		{inst(sa, ra.series, rb.sop) + "/frames/1", octet},
		{inst(sa, ra.series, rb.sop) + "/rendered", "image/png"},
		{inst(sa, ra.series, rb.sop) + "/bulk/7fe00010", octet},
		{inst(sa, rb.series, ra.sop), dicomAccept},
		{"/studies/" + sa + "/series/" + ra2.series, dicomAccept},
		{inst(sa, ra2.series, ra2.sop) + "/metadata", "application/dicom+json"},
		{inst(sa, ra.series, ra2.sop), dicomAccept},
	} {
		paths = append(paths, p{x.path, x.accept, notFound})
	}
	// Lists, patterns, dots, encodings, empty segments, overlong paths and
	// other PACS routes: refused by the path allow-list.
	for _, raw := range []string{
		"/studies/" + sa + "," + sb, "/studies/" + sb + "," + sa, "/studies/*", "/studies/" + sa + "*", "/studies/" + sa + "/series/*",
		"/studies/" + sa + "/series/" + ra.series + "," + rb.series, "/studies/" + sa + "/series/" + ra.series + "/instances/" + ra.sop + "," + rb.sop,
		"/studies/" + sa + "/../" + sb, "/studies/" + sa + "/series/../../" + sb, "/studies/" + sa + "/%2e%2e/" + sb,
		"/studies/" + sa + "/%2E%2E/%2E%2E/patients", "/studies/" + sa + "/.%2e/" + sb, "/studies/" + sa + "/./series/" + rb.series,
		"/studies/" + sa + "%2fseries%2f" + rb.series, "/studies/" + sa + "%2Fseries%2F" + rb.series, "/studies%2f" + sb,
		"/studies/" + sa + "/%2F..%2F..%2Fpatients", "/studies/" + sa + "%5C..%5C" + sb, "/studies/" + sa + "\\..\\" + sb,
		"//studies/" + sb, "/studies//" + sb, "/studies/" + sa + "//series/" + rb.series, "/studies/" + sa + "/series//" + rb.series,
		"/studies/" + sa + "/", "/studies/" + sa + "/series/" + rb.series + "/", "/studies/" + sa + ";" + sb,
		"/studies/" + sa + "%00/" + sb, "/studies/" + sa + "%23/" + sb, "/studies/" + sa + "%3F" + "StudyInstanceUID=" + sb,
		"/studies/" + sa + "/series/" + strings.Repeat("1.", 40) + "1", "/studies/" + sa + "/series/" + strings.Repeat("9", 3000),
		"/studies/" + sa + "/series/" + ra.series + "/instances/" + ra.sop + "/frames/" + strings.Repeat("1,", 2000) + "1",
		"/studies/" + sa + strings.Repeat("/metadata", 200), "/studies/" + sa + "/series/" + ra.series + "/instances/" + ra.sop + "/frames/0",
		"/studies/" + sa + "/series/" + ra.series + "/instances/" + ra.sop + "/frames/-1",
		"/studies/" + sa + "/series/" + ra.series + "/instances/" + ra.sop + "/bulk/../../" + rb.sop,
		"/studies/" + sa + "/series/" + ra.series + "/instances/" + ra.sop + "/bulk/" + strings.Repeat("7fe00010/", 20) + "1",
		"/studies/" + sa + "/frames/1", "/studies/" + sa + "/bulk/7fe00010", "/studies/" + sa + "/series", "/studies/" + sa + "/instances",
		"/studies/" + sa + "/series/" + ra.series + "/instances", "/studies/0" + sa, "/studies/" + sa + ".", "/studies/." + sa,
		"/studies/" + strings.ToUpper(sa) + "a", "/STUDIES/" + sa, "/Studies/" + sa, "/studies/ " + sa, "/studies/%20" + sa,
		"/studies/" + sa + "/series/" + rb.series + "/../../../studies/" + sb,
		// Orthanc's own REST API and DICOMweb extras after the token.
		"/patients", "/instances", "/series", "/studies", "/tools/find", "/tools/lookup", "/system", "/statistics", "/changes",
		"/wado", "/dicom-web/studies", "/dicom-web/studies/" + sb, "/dicom-web/servers", "/dicom-web/info", "/app/explorer.html",
		"/instances/" + rb.sop, "/patients/" + atkMRNB, "/studies/" + sa + "/../../patients", "/studies/" + sa + "/../../../dicom-web/studies",
		"/../" + sb, "/..", "/.", "/%2e%2e/patients", "/studies/" + sa + "/series?PatientID=*",
	} {
		paths = append(paths, p{raw, dicomAccept, bad})
	}
	for _, x := range paths {
		want := x.want
		a.run(atkReq{name: "WADO " + truncate(x.path, 120), url: wado + x.path, bearer: bearer, accept: x.accept, want: want})
	}
	// Query strings: only the rendered parameters reach the PACS, and the
	// study comes from the path.
	for _, x := range []struct{ path, accept string }{
		{"/studies/" + sa + "/metadata?PatientID=*&StudyInstanceUID=" + sb, "application/dicom+json"},
		{"/studies/" + sa + "/metadata?includefield=all&00100020=" + atkMRNB, "application/dicom+json"},
		{inst(sa, ra.series, ra.sop) + "/rendered?viewport=16,16&StudyInstanceUID=" + sb + "&SOPInstanceUID=" + rb.sop, "image/png"},
		{inst(sa, ra.series, ra.sop) + "/rendered?window=40,400,linear&requestType=WADO&objectUID=" + rb.sop, "image/png"},
		{"/studies/" + sa + "/metadata?PatientID=" + atkMRNB + "&PatientID=", "application/dicom+json"},
	} {
		a.run(atkReq{name: "WADO query " + truncate(x.path, 120), url: wado + x.path, bearer: bearer, accept: x.accept, want: []int{200}})
	}
	// Header tricks do not change what is fetched.
	a.run(atkReq{name: "Forwarded and X-Original-URL headers", url: wado + "/studies/" + sa + "/metadata", bearer: bearer,
		accept: "application/dicom+json", want: []int{200}, headers: [][2]string{
			{"X-Original-URL", "/dicom-web/studies/" + sb}, {"X-Rewrite-URL", "/dicom-web/studies/" + sb},
			{"Forwarded", "host=evil.example.org;proto=https"}, {"X-Forwarded-Prefix", "/dicom-web/studies/" + sb},
			{"X-HTTP-Method-Override", "DELETE"}}})
	a.run(atkReq{name: "Accept asking for XML metadata", url: wado + "/studies/" + sa + "/metadata", bearer: bearer,
		accept: "multipart/related; type=\"application/dicom+xml\"", want: []int{406}})

	// Orthanc's routes as paths of the route itself.
	for _, raw := range []string{"/patients", "/instances", "/studies", "/series", "/tools/find", "/system", "/statistics",
		"/wado?requestType=WADO&studyUID=" + sb + "&seriesUID=" + rb.series + "&objectUID=" + rb.sop + "&contentType=application%2Fdicom",
		"/dicom-web/studies", "/dicom-web/studies?PatientID=*", "/dicom-web/studies/" + sb, "/studies/" + sb, "/instances/" + rb.sop,
		"/fhir/Patient", "/fhir/Patient/" + atkPatientB, "/fhir/ImagingStudy/" + sb, "/fhir/ImagingStudy/" + sa, "/fhir/Endpoint",
		"/fhir/ImagingStudy/_history", "/fhir/", "/fhir", "/wado", "/wado/", "/dyn/", "/health/../patients", "/fhir/../patients",
		"/fhir/ImagingStudy/../../patients", "/fhir/%2e%2e/patients", "//patients", "/fhir//ImagingStudy?patient=" + atkPatientB,
		"/app/explorer.html", "/ui/app/", "/plugins", "/modalities", "/peers", "/jobs", "/exports",
	} {
		want := []int{404}
		if strings.Contains(raw, "..") || strings.Contains(raw, "//") || strings.Contains(raw, "%2e") {
			want = []int{400, 404}
		}
		if raw == "/fhir" {
			want = []int{200} // the route's welcome page (issue 18): bases and auth mode, checked for leaks like every answer
		}
		a.run(atkReq{name: "route path " + truncate(raw, 100), url: route + raw, bearer: bearer, want: want})
	}
	// Dot segments before the handler's part of the path: the module
	// refuses non-canonical paths (routePrefix) rather than let the
	// client choose the route name that study tokens, audit lines and
	// metric labels carry.
	for _, raw := range []string{"/x/%2e%2e/fhir/ImagingStudy?patient=" + demoPatient, "/x/../fhir/ImagingStudy?patient=" + demoPatient} {
		a.run(atkReq{name: "dot segment in the route prefix " + truncate(raw, 60), url: route + raw, bearer: bearer,
			want: []int{400}, aOnly: true})
	}
	a.run(atkReq{name: "dot segment in the route prefix of a WADO path", bearer: bearer, accept: "application/dicom+json",
		url: route + "/x/%2E%2E/wado/" + strings.TrimPrefix(wado, route+"/wado/") + "/studies/" + sa + "/metadata", want: []int{400, 403}})
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		a.run(atkReq{name: m + " /tools/find on the route", method: m, url: route + "/tools/find",
			body: []byte(`{"Level":"Study","Query":{"PatientID":"*"}}`), bearer: bearer, want: []int{404, 405}})
		a.run(atkReq{name: m + " /instances on the route", method: m, url: route + "/instances", bearer: bearer, want: []int{404, 405}})
		a.run(atkReq{name: m + " /patients/… on the route", method: m, url: route + "/patients/" + atkMRNB, bearer: bearer, want: []int{404, 405}})
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// attackStudyTokens presents forged, altered, expired and foreign study
// tokens with A's credentials.
func attackStudyTokens(a *attacker, tA, sa, sb, addrB, addrOpenA string, rb demoRow) {
	t := a.t
	wado := base + "/a/wado/"
	dicomAccept := `multipart/related; type="application/dicom"`
	kr, err := studytoken.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := studytoken.NewKeyring(make32(9))
	now := time.Now()
	mint := func(k *studytoken.Keyring, c studytoken.Claims) string {
		tok, err := k.Mint(c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	hour := now.Add(time.Hour)
	claimsB := studytoken.Claims{StudyUID: sb, Patient: atkPatientB, Route: "/a", Expiry: hour, IssuedAt: now}
	tokens := map[string]string{
		"B's genuine token (route /b)":                    tokenOfAddress(addrB),
		"open route token for A's study":                  tokenOfAddress(addrOpenA),
		"token for B on route /a":                         mint(kr, claimsB),
		"token for B's study with no patient on /a":       mint(kr, studytoken.Claims{StudyUID: sb, Patient: "", Route: "/a", Expiry: hour, IssuedAt: now}),
		"token for A's study with no patient on /a":       mint(kr, studytoken.Claims{StudyUID: sa, Patient: "", Route: "/a", Expiry: hour, IssuedAt: now}),
		"token for B on route /b":                         mint(kr, studytoken.Claims{StudyUID: sb, Patient: atkPatientB, Route: "/b", Expiry: hour, IssuedAt: now}),
		"token for A on route /b":                         mint(kr, studytoken.Claims{StudyUID: sa, Patient: demoPatient, Route: "/b", Expiry: hour, IssuedAt: now}),
		"token for A on route /a/":                        mint(kr, studytoken.Claims{StudyUID: sa, Patient: demoPatient, Route: "/a/", Expiry: hour, IssuedAt: now}),
		"token for A on route /A":                         mint(kr, studytoken.Claims{StudyUID: sa, Patient: demoPatient, Route: "/A", Expiry: hour, IssuedAt: now}),
		"token for A on route /open":                      mint(kr, studytoken.Claims{StudyUID: sa, Patient: demoPatient, Route: "/open", Expiry: hour, IssuedAt: now}),
		"token for A, case-changed patient":               mint(kr, studytoken.Claims{StudyUID: sa, Patient: strings.ToUpper(demoPatient), Route: "/a", Expiry: hour, IssuedAt: now}),
		"expired token for A's study":                     mint(kr, studytoken.Claims{StudyUID: sa, Patient: demoPatient, Route: "/a", Expiry: now.Add(-time.Second), IssuedAt: now.Add(-time.Hour)}),
		"token expiring now":                              mint(kr, studytoken.Claims{StudyUID: sa, Patient: demoPatient, Route: "/a", Expiry: now, IssuedAt: now.Add(-time.Hour)}),
		"token for A's study under another key":           mint(other, studytoken.Claims{StudyUID: sa, Patient: demoPatient, Route: "/a", Expiry: hour, IssuedAt: now}),
		"token for B's study under another key":           mint(other, studytoken.Claims{StudyUID: sb, Patient: demoPatient, Route: "/a", Expiry: hour, IssuedAt: now}),
		"A's token truncated by half":                     tA[:len(tA)/2],
		"A's token without its tag":                       tA[:strings.LastIndex(tA, ".")],
		"A's token without its tag but the dot":           tA[:strings.LastIndex(tA, ".")+1],
		"A's token with a character appended":             tA + "A",
		"A's token with a dot appended":                   tA + ".",
		"A's token doubled":                               tA + tA,
		"A's token, lower case":                           strings.ToLower(tA),
		"A's token padded":                                tA + "==",
		"A's token, base64 with + and /":                  strings.NewReplacer("-", "+", "_", "/").Replace(tA),
		"empty token":                                     "",
		"a single dot":                                    ".",
		"four dots":                                       "....",
		"B's study UID as the token":                      sb,
		"unsecured JWT naming B's study":                  unsecuredJWT(map[string]any{"uid": sb, "pat": demoPatient, "rt": "/a", "exp": hour.Unix(), "iat": now.Unix()}),
		"JWS HS256 keyed with the empty string":           hs256(t, []byte(""), map[string]any{"uid": sb, "pat": demoPatient, "rt": "/a", "exp": hour.Unix(), "iat": now.Unix()}),
		"JWE dir/A128GCM with half the key":               jweWith(t, jwa.DIRECT, jwa.A128GCM, testKey[:16], sb),
		"JWE A256KW/A256GCM with the key":                 jweWith(t, jwa.A256KW, jwa.A256GCM, testKey, sb),
		"JWE dir/A256GCM with a zero key":                 jweWith(t, jwa.DIRECT, jwa.A256GCM, make([]byte, 32), sb),
		"JWE dir/A256CBC-HS512 with the key doubled":      jweWith(t, jwa.DIRECT, jwa.A256CBC_HS512, append(append([]byte{}, testKey...), testKey...), sb),
		"JWE header swapped onto A's token (zip)":         swapHeader(tA, `{"alg":"dir","enc":"A256GCM","zip":"DEF"}`),
		"JWE header swapped onto A's token (no kid)":      swapHeader(tA, `{"alg":"dir","enc":"A256GCM"}`),
		"JWE header swapped onto A's token (unknown kid)": swapHeader(tA, `{"alg":"dir","enc":"A256GCM","kid":"nope"}`),
		"overlong token":                                  strings.Repeat("A", 5000),
	}
	// Each of the five parts of A's token altered.
	parts := strings.Split(tA, ".")
	off := 0
	for i, part := range parts {
		if part != "" {
			tokens[fmt.Sprintf("A's token, part %d altered", i+1)] = flipAt(tA, off+len(part)/2)
		}
		off += len(part) + 1
	}
	for _, name := range keys(tokens) {
		tok := tokens[name]
		for _, study := range []string{sa, sb} {
			for _, suffix := range []string{"", "/metadata"} {
				a.run(atkReq{name: name + " on " + map[bool]string{true: "A's", false: "B's"}[study == sa] + " study" + suffix,
					url: wado + tok + "/studies/" + study + suffix, accept: dicomAccept, want: []int{400, 403, 404}})
			}
		}
	}
	// The token in other places of the URL.
	a.run(atkReq{name: "B's token after A's", url: wado + tA + "/" + tokenOfAddress(addrB) + "/studies/" + sb, accept: dicomAccept, want: []int{400, 403}})
	a.run(atkReq{name: "token as a query parameter", url: wado + "studies/" + sb + "?token=" + tA, accept: dicomAccept, want: []int{400, 403, 404}})
	a.run(atkReq{name: "token path segment with dots", url: wado + tA + "/../" + tokenOfAddress(addrB) + "/studies/" + sb, accept: dicomAccept, want: []int{400}})
	a.run(atkReq{name: "token and nothing else", url: wado + tA, accept: dicomAccept, want: []int{404}})
	a.run(atkReq{name: "token and a slash", url: wado + tA + "/", accept: dicomAccept, want: []int{404}})
	a.run(atkReq{name: "B's series with B's genuine token", url: wado + tokenOfAddress(addrB) + "/studies/" + sb + "/series/" + rb.series, accept: dicomAccept, want: []int{403}})
}

func unsecuredJWT(claims map[string]any) string {
	hdr, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT"})
	body, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(hdr) + "." + enc(body) + "."
}

func hs256(t *testing.T, key []byte, claims map[string]any) string {
	t.Helper()
	payload, _ := json.Marshal(claims)
	signed, err := jws.Sign(payload, jws.WithKey(jwa.HS256, key))
	if err != nil {
		// jwx refuses empty HMAC keys; a one-byte key is the same attack.
		signed, err = jws.Sign(payload, jws.WithKey(jwa.HS256, []byte{0}))
		if err != nil {
			t.Fatal(err)
		}
	}
	return string(signed)
}

// jweWith encrypts claims naming study for A on route /a with the given
// algorithms: tokens a gateway accepting other algorithms would open.
func jweWith(t *testing.T, alg jwa.KeyEncryptionAlgorithm, enc jwa.ContentEncryptionAlgorithm, key []byte, study string) string {
	t.Helper()
	now := time.Now()
	payload, _ := json.Marshal(map[string]any{"uid": study, "pat": demoPatient, "rt": "/a", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()})
	out, err := jwe.Encrypt(payload, jwe.WithKey(alg, key), jwe.WithContentEncryption(enc))
	if err != nil {
		t.Fatalf("jwe %s/%s: %v", alg, enc, err)
	}
	return string(out)
}

// swapHeader replaces the protected header of a compact JWE.
func swapHeader(tok, hdr string) string {
	parts := strings.Split(tok, ".")
	parts[0] = base64.RawURLEncoding.EncodeToString([]byte(hdr))
	return strings.Join(parts, ".")
}

// attackSMART forges, alters and misplaces SMART access tokens on the
// introspection route (/smart) and the local-JWT route (/jwt).
func attackSMART(a *attacker, ehr *testehr.EHR, tokA, tokB, jwtA string, smartEpsA, smartEpsB, jwtEpsA map[string]string, tAMock, sa, sb, baitURL string, baitHits *hitLog) {
	t := a.t
	unauth := []int{401}
	dicomAccept := `multipart/related; type="application/dicom"`
	searchB := func(route string) string { return base + route + "/fhir/ImagingStudy?patient=" + atkPatientB }
	searchA := func(route string) string { return base + route + "/fhir/ImagingStudy?patient=" + demoPatient }
	now := time.Now()
	hour := now.Add(time.Hour)

	// A's genuine token asking for B, on both routes.
	a.run(atkReq{name: "A's token, patient=B (introspection)", url: searchB("/smart"), bearer: tokA, want: []int{403}})
	a.run(atkReq{name: "A's JWT, patient=B (local JWT)", url: searchB("/jwt"), bearer: jwtA, want: []int{403}})
	a.run(atkReq{name: "A's token, patient.identifier=B", url: base + "/smart/fhir/ImagingStudy?patient=" + demoPatient + "&patient.identifier=" + url.QueryEscape(atkMRNSystem+"|"+atkMRNB), bearer: tokA, want: []int{403}})
	a.run(atkReq{name: "B's token, patient=A", url: searchA("/smart"), bearer: tokB, want: []int{403}})

	// Forged and altered tokens, each asking for B.
	attackerKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	attackerJWK, _ := jwk.FromRaw(attackerKey)
	_ = attackerJWK.Set(jwk.KeyIDKey, "ehr-rs-1")
	attackerPub, _ := attackerJWK.PublicKey()
	claimsB := atkJWTClaims(ehr, atkPatientB, hour)
	hmacPub := func() string {
		set := ehr.PublicJWKS()
		for i := 0; i < set.Len(); i++ {
			k, _ := set.Key(i)
			if k.KeyType() == jwa.RSA {
				pem, err := jwk.EncodePEM(k)
				if err != nil {
					t.Fatal(err)
				}
				return atkSignJWT(t, claimsB, jwa.HS256, pem, map[string]any{jws.KeyIDKey: k.KeyID()})
			}
		}
		t.Fatal("the test EHR publishes no RSA key")
		return ""
	}()
	jparts := strings.Split(jwtA, ".")
	forged := map[string]string{
		"alg none":                           unsecuredJWT(claimsB),
		"alg none, upper case":               strings.Replace(unsecuredJWT(claimsB), base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)), base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"NONE","typ":"JWT"}`)), 1),
		"alg none with A's signature":        strings.Split(unsecuredJWT(claimsB), ".")[0] + "." + strings.Split(unsecuredJWT(claimsB), ".")[1] + "." + jparts[2],
		"HS256 keyed with the public key":    hmacPub,
		"RS256 by an unknown key, EHR kid":   atkSignJWT(t, claimsB, jwa.RS256, attackerJWK, map[string]any{jws.KeyIDKey: "ehr-rs-1"}),
		"RS256 with an embedded jwk":         atkSignJWT(t, claimsB, jwa.RS256, attackerJWK, map[string]any{jws.KeyIDKey: "attacker", jws.JWKKey: attackerPub}),
		"RS256 with a jku to the bait":       atkSignJWT(t, claimsB, jwa.RS256, attackerJWK, map[string]any{jws.KeyIDKey: "attacker", jws.JWKSetURLKey: baitURL + "/jwks"}),
		"RS256 with an x5u to the bait":      atkSignJWT(t, claimsB, jwa.RS256, attackerJWK, map[string]any{jws.KeyIDKey: "attacker", jws.X509URLKey: baitURL + "/cert"}),
		"RS256 with a path-traversal kid":    atkSignJWT(t, claimsB, jwa.RS256, attackerJWK, map[string]any{jws.KeyIDKey: "../../../../dev/null"}),
		"A's JWT with B's claims":            replaceJWTPayload(jwtA, claimsB),
		"A's JWT with the patient removed":   replaceJWTPayload(jwtA, func() map[string]any { c := atkJWTClaims(ehr, "", hour); delete(c, "patient"); return c }()),
		"A's JWT truncated":                  jwtA[:len(jwtA)-10],
		"A's JWT without signature":          jparts[0] + "." + jparts[1] + ".",
		"A's JWT, header altered":            base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256","kid":"x"}`)) + "." + jparts[1] + "." + jparts[2],
		"expired JWT for B":                  ehr.IssueToken(testehr.TokenSpec{Format: testehr.JWT, Patient: atkPatientB, Aud: []string{base + "/jwt/fhir"}, Exp: now.Add(-time.Minute)}),
		"JWT for B, other audience":          ehr.IssueToken(testehr.TokenSpec{Format: testehr.JWT, Patient: atkPatientB, Aud: []string{"https://elsewhere.example.org/fhir"}}),
		"opaque token for B, other audience": ehr.IssueToken(testehr.TokenSpec{Patient: atkPatientB, Aud: []string{"https://elsewhere.example.org/fhir"}}),
		"JWT for B, other issuer":            ehr.IssueToken(testehr.TokenSpec{Format: testehr.JWT, Patient: atkPatientB, Aud: []string{base + "/jwt/fhir"}, Iss: "https://evil.example.org/auth"}),
		"JWT for B, not yet valid":           ehr.IssueToken(testehr.TokenSpec{Format: testehr.JWT, Patient: atkPatientB, Aud: []string{base + "/jwt/fhir"}, Nbf: hour}),
		"expired opaque token for B":         ehr.IssueToken(testehr.TokenSpec{Patient: atkPatientB, Exp: now.Add(-time.Minute)}),
		"unknown opaque token":               "not-a-token-" + strconv.FormatInt(now.UnixNano(), 36),
		"A's opaque token altered":           flipAt(tokA, len(tokA)/2),
		"A's opaque token with a suffix":     tokA + "x",
		"A's opaque token, upper case":       strings.ToUpper(tokA),
		"A's token and B's, space-joined":    tokA + " " + tokB,
		"JWT for B without scope":            ehr.IssueToken(testehr.TokenSpec{Format: testehr.JWT, Patient: atkPatientB, Aud: []string{base + "/jwt/fhir"}, Scope: "openid"}),
		"opaque token for B, user scope":     ehr.IssueToken(testehr.TokenSpec{Patient: atkPatientB, Scope: "user/ImagingStudy.rs"}),
		"opaque token for B, scope pattern":  ehr.IssueToken(testehr.TokenSpec{Patient: atkPatientB, Scope: "patient/ImagingStudy.rs?patient=" + atkPatientB}),
		"the PACS password as a token":       orthanc.DefaultPassword,
		"a guessed client secret as token":   atkWrongSecret,
	}
	for _, name := range keys(forged) {
		tok := forged[name]
		for _, route := range []string{"/smart", "/jwt"} {
			// Forgeries that carry B's claims, or nothing usable, must be
			// refused outright; a scope too narrow is a 403.
			a.run(atkReq{name: name + " on " + route, url: searchB(route), bearer: tok, want: []int{401, 403}})
		}
	}
	if got := baitHits.since(0); len(got) != 0 {
		a.ledger.leak("a forged JWT made the gateway fetch the bait server: %v", got)
		t.Errorf("a forged JWT made the gateway fetch its jku or x5u: %v", got)
	}

	// How the token is carried.
	for name, h := range map[string][][2]string{
		"no token":                  nil,
		"empty bearer":              {{"Authorization", "Bearer "}},
		"Basic with A's token":      {{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte(tokA+":"))}},
		"token without scheme":      {{"Authorization", tokA}},
		"two Authorization headers": {{"Authorization", "Bearer " + tokA}, {"Authorization", "Bearer " + tokB}},
		"token in a cookie":         {{"Cookie", "access_token=" + tokA}},
		// A header Caddy's access log records as sent: a token of its own,
		// not checked in the logs (a client that sends tokens in odd
		// headers puts them in access logs; the gateway ignores them).
		"token in X-Access-Token":     {{"X-Access-Token", ehr.IssueToken(testehr.TokenSpec{Patient: demoPatient})}},
		"token with a trailing comma": {{"Authorization", "Bearer " + tokA + ","}},
	} {
		if name == "two Authorization headers" {
			// Ambiguous: refused, or A's (the first) token applies.
			a.run(atkReq{name: name + ", patient=B", url: searchB("/smart"), headers: h, want: []int{400, 401, 403}})
			a.run(atkReq{name: name + ", patient=A", url: searchA("/smart"), headers: h, want: []int{200, 400, 401}, aOnly: true})
			continue
		}
		a.run(atkReq{name: name + ", patient=B", url: searchB("/smart"), headers: h, want: unauth})
		a.run(atkReq{name: name + ", patient=A", url: searchA("/smart"), headers: h, want: unauth})
	}
	a.run(atkReq{name: "token in the query string", url: searchB("/smart") + "&access_token=" + tokA, want: unauth})
	a.run(atkReq{name: "token in the query string, patient=A", url: searchA("/smart") + "&access_token=" + tokA, want: unauth})

	// WADO with SMART tokens.
	tSmartA, tSmartB, tJwtA := tokenOfAddress(smartEpsA[sa]), tokenOfAddress(smartEpsB[sb]), tokenOfAddress(jwtEpsA[sa])
	for _, x := range []struct {
		name, url, bearer string
		want              []int
	}{
		{"A's bearer, B's study token (from B's own search)", base + "/smart/wado/" + tSmartB + "/studies/" + sb, tokA, []int{403}},
		{"A's bearer, B's study token, metadata", base + "/smart/wado/" + tSmartB + "/studies/" + sb + "/metadata", tokA, []int{403}},
		{"A's bearer, A's study token, B's study", base + "/smart/wado/" + tSmartA + "/studies/" + sb, tokA, []int{403}},
		{"B's study token without a bearer", base + "/smart/wado/" + tSmartB + "/studies/" + sb, "", unauth},
		{"A's study token without a bearer", base + "/smart/wado/" + tSmartA + "/studies/" + sa, "", unauth},
		{"A's study token, forged alg-none bearer for B", base + "/smart/wado/" + tSmartB + "/studies/" + sb, forged["alg none"], unauth},
		{"A's mock-route study token on /smart", base + "/smart/wado/" + tAMock + "/studies/" + sa, tokA, []int{403}},
		{"A's /jwt study token on /smart", base + "/smart/wado/" + tJwtA + "/studies/" + sa, tokA, []int{403}},
		{"A's /smart study token on /jwt", base + "/jwt/wado/" + tSmartA + "/studies/" + sa, jwtA, []int{403}},
		{"B's /smart study token on /jwt with A's JWT", base + "/jwt/wado/" + tSmartB + "/studies/" + sb, jwtA, []int{403}},
		{"B's study token, forged HS256 bearer", base + "/jwt/wado/" + tSmartB + "/studies/" + sb, hmacPub, unauth},
		{"A's study token on /a with A's SMART bearer", base + "/a/wado/" + tSmartA + "/studies/" + sa, tokA, []int{403}},
	} {
		a.run(atkReq{name: x.name, url: x.url, bearer: x.bearer, accept: dicomAccept, want: x.want})
	}

	a.run(atkReq{name: "A's bearer on B's whole study", url: base + "/smart/wado/" + tSmartB + "/studies/" + sb + "/rendered", bearer: tokA, accept: "image/png", want: []int{403}})
}
