package integration

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// dynWorld is what the /dyn attacks need: the allowed PACS and EHR, the
// redirector (allowed) and the bait (not allowed) of the SSRF attempts.
type dynWorld struct {
	pacs       *orthanc.Server
	ehr        *testehr.EHR
	bait       string // URL of a server on no allow list
	baitHits   *hitLog
	redirector string // URL of an allowed server that redirects to the bait
	patientA   *demoPatientData
	secret     string // the gateway's client secret at the EHR
}

// dynSegment encodes a dynamic config as the /dyn path segment.
func dynSegment(doc any) string {
	var raw []byte
	switch d := doc.(type) {
	case string:
		raw = []byte(d)
	default:
		raw, _ = json.Marshal(d)
	}
	return base64.RawURLEncoding.EncodeToString(raw)
}

// dynRoute is the route id the gateway gives a dynamic config under
// parent: a study token for it opens only there.
func dynRoute(parent string, doc any) string {
	raw, _ := base64.RawURLEncoding.DecodeString(dynSegment(doc))
	sum := sha256.Sum256(append([]byte(parent+"\x00"), raw...))
	return parent + "/dyn/" + hex.EncodeToString(sum[:])[:16]
}

type jsonObj = map[string]any

// merge returns a copy of m with extra's keys set (nil deletes).
func merge(m jsonObj, extra jsonObj) jsonObj {
	out := jsonObj{}
	for k, v := range m {
		out[k] = v
	}
	for k, v := range extra {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

// attackDynamic tries to make the gateway, through /dyn configs, send
// requests to hosts off the route's allow list, read local files or
// resolve placeholders. Every attempt must be refused with a 400
// OperationOutcome that names the problem, and the bait server off the
// list must never be reached.
func attackDynamic(a *attacker, w dynWorld) {
	t := a.t
	dynBase := base + "/dynr/dyn/"
	port := w.pacs.Port()
	pacsURL := w.pacs.DICOMwebURL()
	baitU, _ := url.Parse(w.bait)
	baitPort := baitU.Port()
	mockA := jsonObj{"kind": "mock", "patient": demoPatient, "mrn": []string{demoMRN}}
	// The PACS's and the EHR's credentials are the route's (per host):
	// the configs name only where to go.
	dw := func(baseURL string) jsonObj {
		return jsonObj{"kind": "dicomweb", "base_url": baseURL, "lookup": "studies-by-mrn"}
	}
	smartA := func(extra jsonObj) jsonObj {
		return merge(jsonObj{"kind": "smart-on-fhir", "fhir_base_url": w.ehr.FHIRBase(), "client_id": atkClientID}, extra)
	}
	doc := func(authz, images jsonObj) jsonObj { return jsonObj{"authz": authz, "images": images} }
	search := func(d any) string { return dynBase + dynSegment(d) + "/fhir/ImagingStudy?patient=" + demoPatient }
	baitBefore := w.baitHits.count()
	checkBait := func(what string) {
		if got := w.baitHits.since(baitBefore); len(got) != 0 {
			a.ledger.leak("%s: the gateway sent %v to a host off the allow list", what, got)
			t.Errorf("SSRF %s: the gateway sent %v to the bait server off the allow list", what, got)
			baitBefore = w.baitHits.count()
		}
	}

	// Control: an allowed config works, search and retrieve.
	ctrl := doc(mockA, dw(pacsURL))
	eps := legitSearch(t, a.client, search(ctrl), "", w.patientA.studies)
	sa := w.patientA.studies[0]
	a.run(atkReq{name: "dyn control: A's metadata", url: eps[sa] + "/studies/" + sa + "/metadata", accept: "application/dicom+json", want: []int{200}})

	type attempt struct {
		name string
		doc  any
		diag string // the diagnostics must contain one of these ("|"-separated; "" any)
	}
	var attempts []attempt
	addHost := func(name, u string) {
		attempts = append(attempts, attempt{"PACS " + name + " " + u, doc(mockA, dw(u)), "allow list"})
	}
	for _, h := range []string{"127.0.0.2:%d", "localhost:%d", "127.1:%d", "127.0.1:%d", "0x7f.0.0.1:%d", "0x7f000001:%d",
		"2130706433:%d", "017700000001:%d", "0177.0.0.1:%d", "[::1]:%d", "[::ffff:127.0.0.1]:%d", "[::ffff:7f00:1]:%d",
		"[0:0:0:0:0:ffff:127.0.0.1]:%d", "127.0.0.1.nip.io:%d", "127.0.0.1.:%d", "0.0.0.0:%d", "0:%d", "[::]:%d",
		"127.0.0.1:0%d", "LOCALHOST:%d", "169.254.169.254:%d", "metadata.google.internal:%d"} {
		addHost("host off the list", "http://"+fmt.Sprintf(h, port)+"/dicom-web")
	}
	addHost("other port of an allowed IP", "http://127.0.0.1:"+baitPort+"/dicom-web")
	addHost("default port of an allowed IP", "http://127.0.0.1/dicom-web")
	addHost("https default port", "https://127.0.0.1/dicom-web")
	for _, u := range []string{"file:///etc/passwd", "FILE:///etc/passwd", "file://127.0.0.1:" + strconv.Itoa(port) + "/etc/passwd",
		"gopher://127.0.0.1:" + strconv.Itoa(port) + "/", "ftp://127.0.0.1:" + strconv.Itoa(port) + "/", "unix:///var/run/docker.sock",
		"h2c://127.0.0.1:" + baitPort + "/", "ws://127.0.0.1:" + baitPort + "/", "dict://127.0.0.1:" + baitPort + "/"} {
		attempts = append(attempts, attempt{"PACS URL " + u, doc(mockA, dw(u)), "not allowed"})
	}
	attempts = append(attempts,
		attempt{"scheme-relative PACS URL", doc(mockA, dw("//127.0.0.1:"+baitPort+"/dicom-web")), "absolute"},
		attempt{"credentials in the PACS URL", doc(mockA, dw("http://smart:smart-secret@127.0.0.1:"+strconv.Itoa(port)+"/dicom-web")), "credentials"},
		attempt{"allowed host as user info", doc(mockA, dw("http://127.0.0.1:"+strconv.Itoa(port)+"@127.0.0.1:"+baitPort+"/dicom-web")), "credentials"},
		attempt{"images folder /", doc(mockA, jsonObj{"kind": "folder", "root": "/", "lookup": "studies-by-mrn"}), "folder"},
		attempt{"images folder .", doc(mockA, jsonObj{"kind": "folder", "root": ".", "lookup": "studies-by-mrn"}), "folder"},
		attempt{"images folder examples", doc(mockA, jsonObj{"kind": "folder", "root": "../examples/demo/studies", "lookup": "all-studies"}), ""},
		attempt{"placeholder base URL", doc(mockA, dw("{env.SIA_ATTACK_PACS}")), "placeholders"},
		attempt{"placeholder host", doc(mockA, dw("http://{env.HOSTNAME}:"+strconv.Itoa(port)+"/dicom-web")), "placeholders"},
		attempt{"placeholder password", doc(mockA, merge(dw(pacsURL), jsonObj{"username": "u", "password": "{env." + atkSecretEnv + "}"})), "password"},
		attempt{"file placeholder", doc(mockA, merge(dw(pacsURL), jsonObj{"username": "u", "password": "{file./etc/passwd}"})), "password"},
		attempt{"request placeholder as patient", doc(merge(mockA, jsonObj{"patient": "{http.request.header.X-Patient}"}), dw(pacsURL)), "placeholders"},
		attempt{"the PACS as the EHR (a PACS can serve stored bytes as a discovery document or a JWKS)",
			doc(smartA(jsonObj{"fhir_base_url": "http://127.0.0.1:" + strconv.Itoa(port) + "/instances"}), dw(pacsURL)), "allow list for the EHR"},
		attempt{"the EHR as the PACS", doc(mockA, dw(w.ehr.URL()+"/dicom-web")), "allow list for the PACS"},
		attempt{"mock fhir_base_url off the list", doc(merge(mockA, jsonObj{"fhir_base_url": w.bait + "/fhir"}), dw(pacsURL)), "allow list"},
		attempt{"smart fhir_base_url off the list", doc(smartA(jsonObj{"fhir_base_url": w.bait + "/fhir"}), dw(pacsURL)), "allow list"},
		attempt{"smart introspection_endpoint off the list", doc(smartA(jsonObj{"introspection_endpoint": w.bait + "/introspect"}), dw(pacsURL)), "introspection_endpoint"},
		attempt{"smart token_endpoint off the list", doc(smartA(jsonObj{"token_endpoint": w.bait + "/token"}), dw(pacsURL)), "token_endpoint"},
		attempt{"smart jwks_url off the list", doc(smartA(jsonObj{"jwks_url": w.bait + "/jwks"}), dw(pacsURL)), "jwks_url"},
		attempt{"smart private_key absolute path", doc(smartA(jsonObj{"private_key": "/etc/ssl/private/gateway.jwk"}), dw(pacsURL)), "private_key"},
		attempt{"smart private_key ./ path", doc(smartA(jsonObj{"private_key": "./gateway.jwk"}), dw(pacsURL)), "private_key"},
		attempt{"smart private_key ~ path", doc(smartA(jsonObj{"private_key": "~/gateway.jwk"}), dw(pacsURL)), "private_key"},
		attempt{"smart private_key relative path", doc(smartA(jsonObj{"private_key": "etc/smart-imaging/backend.jwk"}), dw(pacsURL)), "private_key"},
		attempt{"smart private_key path through a subdirectory", doc(smartA(jsonObj{"private_key": "artifacts/../../../../../etc/ssl/private/gateway.jwk"}), dw(pacsURL)), "private_key"},
		attempt{"PACS TLS client key file", doc(mockA, merge(dw(pacsURL), jsonObj{"proxy": jsonObj{"transport": jsonObj{"protocol": "http",
			"tls": jsonObj{"client_certificate_file": "certs/client.pem", "client_certificate_key_file": "certs/client.key"}}}})), "images.proxy"},
		attempt{"reverse proxy upstream dial off the list", doc(mockA, merge(dw(pacsURL), jsonObj{"proxy": jsonObj{"upstreams": []jsonObj{{"dial": "127.0.0.1:" + baitPort}}}})), "images.proxy"},
		attempt{"reverse proxy upstream dial by name", doc(mockA, merge(dw(pacsURL), jsonObj{"proxy": jsonObj{"upstreams": []jsonObj{{"dial": "localhost:" + baitPort}}}})), "images.proxy"},
		attempt{"reverse proxy upstream dial IPv6", doc(mockA, merge(dw(pacsURL), jsonObj{"proxy": jsonObj{"upstreams": []jsonObj{{"dial": "[::1]:" + baitPort}}}})), "images.proxy"},
		attempt{"reverse proxy upstream unix socket", doc(mockA, merge(dw(pacsURL), jsonObj{"proxy": jsonObj{"upstreams": []jsonObj{{"dial": "unix//run/orthanc.sock"}}}})), "images.proxy"},
		attempt{"reverse proxy DNS upstreams", doc(mockA, merge(dw(pacsURL), jsonObj{"proxy": jsonObj{"dynamic_upstreams": jsonObj{"source": "a", "name": "localhost", "port": baitPort}}})), "images.proxy"},
		attempt{"reverse proxy forward proxy off the list", doc(mockA, merge(dw(pacsURL), jsonObj{"proxy": jsonObj{"transport": jsonObj{"protocol": "http", "forward_proxy_url": w.bait}}})), "images.proxy"},
		attempt{"reverse proxy fastcgi transport", doc(mockA, merge(dw(pacsURL), jsonObj{"proxy": jsonObj{"transport": jsonObj{"protocol": "fastcgi", "root": "/var/www"}}})), "images.proxy"},
		attempt{"pacs_urls off the list", doc(mockA, merge(dw(pacsURL), jsonObj{"pacs_urls": []string{w.bait + "/dicom-web"}})), "images.pacs_urls"},
		attempt{"authz kind http_basic", doc(jsonObj{"kind": "http_basic"}, dw(pacsURL)), "not allowed"},
		attempt{"authz without kind", doc(jsonObj{"patient": demoPatient}, dw(pacsURL)), "kind"},
		attempt{"images without kind", doc(mockA, jsonObj{"base_url": pacsURL}), "kind"},
		attempt{"unknown top-level field", merge(ctrl, jsonObj{"dynamic_config": jsonObj{"allow_hosts": []string{"*"}}}), "dynamic_config: not settable"},
		attempt{"study_token_key in a dynamic config", merge(ctrl, jsonObj{"study_token_key": base64.StdEncoding.EncodeToString(make32(1))}), "study_token_key: not settable"},
		attempt{"missing images", jsonObj{"authz": mockA}, "required"},
		attempt{"JSON array", `[{"authz":{}}]`, "JSON object"},
		attempt{"trailing data", `{"authz":{"kind":"mock"},"images":{"kind":"dicomweb"}} {}`, "trailing"},
		attempt{"unlimited study token ttl", merge(ctrl, jsonObj{"study_token_ttl": "8760h"}), "at most the route's"},
	)
	for _, x := range attempts {
		status, body := a.run(atkReq{name: "dyn: " + x.name, url: search(x.doc), want: []int{400}})
		if status == 400 && x.diag != "" && !containsAny(diagnosticsOf(body), strings.Split(x.diag, "|")) {
			t.Errorf("dyn: %s: diagnostics %q do not say %q", x.name, diagnosticsOf(body), x.diag)
		}
		if status != 400 {
			// Accepted: see whether it reaches the bait with a retrieve.
			tok := mintDynToken(t, dynRoute("/dynr", x.doc), sa)
			a.run(atkReq{name: "dyn: retrieve through " + x.name, url: dynBase + dynSegment(x.doc) + "/wado/" + tok + "/studies/" + sa + "/metadata",
				accept: "application/dicom+json", want: []int{400}})
		}
		checkBait(x.name)
	}

	// Malformed segments.
	for name, seg := range map[string]string{
		"not base64url":   "!!!not-base64!!!",
		"standard base64": base64.StdEncoding.EncodeToString([]byte(`{"authz":{"kind":"mock"},"images":{"kind":"dicomweb"}}`)) + "+/",
		"padding only":    "====",
		"overlong":        strings.Repeat("A", 9000),
		"not JSON":        base64.RawURLEncoding.EncodeToString([]byte("not json")),
	} {
		a.run(atkReq{name: "dyn segment " + name, url: dynBase + seg + "/fhir/ImagingStudy?patient=" + demoPatient, want: []int{400}})
	}
	checkBait("malformed segments")
	// "%2e%2e" as the segment: Caddy decodes and removes the dot segment,
	// so the parent route (bound to A) answers; never anyone else.
	a.run(atkReq{name: "dyn segment %2e%2e", url: dynBase + "%2e%2e/fhir/ImagingStudy?patient=" + demoPatient, want: []int{200, 400}, aOnly: true})

	// Redirects from an allowed host to the bait are not followed: the
	// search fails, the retrieve is refused, the bait sees nothing.
	redir := doc(mockA, dw(w.redirector+"/dicom-web"))
	status, body := a.run(atkReq{name: "dyn: PACS redirects the search off the list", url: search(redir), want: []int{502}})
	if status == 502 && strings.Contains(string(body), "bait") {
		t.Errorf("the search answer carries the bait's body: %.300s", body)
	}
	checkBait("search through a redirecting PACS")
	tok := mintDynToken(t, dynRoute("/dynr", redir), sa)
	_, body = a.run(atkReq{name: "dyn: PACS redirects the retrieve off the list", url: dynBase + dynSegment(redir) + "/wado/" + tok + "/studies/" + sa + "/metadata",
		accept: "application/dicom+json", want: []int{302, 404, 502}})
	if strings.Contains(string(body), "bait") {
		t.Errorf("the retrieve answer carries the bait's body: %.300s", body)
	}
	checkBait("retrieve through a redirecting PACS")

	tokA := w.ehr.IssueToken(testehr.TokenSpec{Patient: demoPatient, Aud: []string{w.ehr.FHIRBase()}})
	smartRedir := doc(smartA(jsonObj{"fhir_base_url": w.redirector + "/fhir"}), dw(pacsURL))
	a.run(atkReq{name: "dyn: EHR discovery redirects off the list", url: search(smartRedir), bearer: tokA, want: []int{502, 503}})
	checkBait("EHR discovery through a redirect")
	smartEvil := doc(smartA(jsonObj{"fhir_base_url": w.redirector + "/evil-fhir"}), dw(pacsURL))
	a.run(atkReq{name: "dyn: EHR discovery names endpoints off the list", url: search(smartEvil), bearer: tokA, want: []int{400, 502, 503}})
	checkBait("endpoints named by an allowed EHR's discovery")

	attackDynamicLoosening(a, w, dynBase, smartA, dw(pacsURL))

	// A flood of distinct configs, no token needed: each provisions a
	// tenant; evicted ones must release everything. One attempt (the
	// flood), a leak if goroutines or memory grow with it.
	a.ledger.attempt()
	flood := func(i int) string {
		return search(doc(smartA(nil), dw(fmt.Sprintf("%s/flood-%d", pacsURL, i))))
	}
	before, after := dynFlood(t, a.client, 600, 30, flood)
	t.Logf("dyn flood of 600 configs: before %s; after %s", before, after)
	if after.goroutines > before.goroutines+30 || after.heapInuse > before.heapInuse+16<<20 {
		a.ledger.leak("dyn flood: 600 distinct configs without a token grew the gateway from %s to %s", before, after)
		t.Errorf("dyn flood: 600 distinct configs without a token grew the gateway from %s to %s", before, after)
	}

	// A dynamic config bound to A cannot reach B either.
	a.run(atkReq{name: "dyn: patient=B on A's dynamic config", url: dynBase + dynSegment(ctrl) + "/fhir/ImagingStudy?patient=" + atkPatientB, want: []int{403}})
	a.run(atkReq{name: "dyn: A's parent-route token in the dynamic config", url: dynBase + dynSegment(ctrl) + "/wado/" + mintDynToken(t, "/dynr", sa) + "/studies/" + sa, want: []int{403}})
	checkBait("the whole /dyn suite")
}

func containsAny(s string, subs []string) bool {
	for _, x := range subs {
		if strings.Contains(s, x) {
			return true
		}
	}
	return false
}

// mintDynToken mints a study token for A's study on a route with the test
// key (the parent route's key, which dynamic configs inherit).
func mintDynToken(t interface {
	Helper()
	Fatal(...any)
}, route, study string) string {
	t.Helper()
	kr, err := studytoken.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := kr.Mint(studytoken.Claims{StudyUID: study, Patient: demoPatient, Route: route, Expiry: now.Add(time.Hour), IssuedAt: now,
		Binding: mockGrantBinding(kr, demoPatient)})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// attackDynamicLoosening tries to make a /dyn URL grant what the
// operator's configuration does not: with A's own tokens, an identifier
// system that maps A onto B's PACS ID, scopes without imaging, a token
// for another server or issuer, the patient taken from "sub", caches and
// timeouts that outlive revocations or exhaust the server, a study token
// lifetime past the route's. Every such config must be refused (400,
// naming the field); one that serves anything counts as a leak, since the
// URL loosened authorization.
func attackDynamicLoosening(a *attacker, w dynWorld, dynBase string, smartA func(jsonObj) jsonObj, images jsonObj) {
	t := a.t
	ehr := w.ehr
	aud := []string{ehr.FHIRBase()}
	tokA := ehr.IssueToken(testehr.TokenSpec{Patient: demoPatient, Aud: aud})
	tokNoImaging := ehr.IssueToken(testehr.TokenSpec{Patient: demoPatient, Aud: aud, Scope: "launch/patient patient/Observation.rs"})
	tokOtherAud := ehr.IssueToken(testehr.TokenSpec{Patient: demoPatient, Aud: []string{"https://elsewhere.example.org/fhir"}})
	tokSubB := ehr.IssueToken(testehr.TokenSpec{Patient: atkPatientB, OmitPatient: true, Sub: atkPatientB, Aud: aud})
	jwtOtherIss := ehr.IssueToken(testehr.TokenSpec{Format: testehr.JWT, Patient: demoPatient, Aud: aud, Iss: "https://evil.example.org/auth"})
	doc := func(authz jsonObj) jsonObj { return jsonObj{"authz": authz, "images": images} }
	search := func(d any, patient string) string {
		return dynBase + dynSegment(d) + "/fhir/ImagingStudy?patient=" + patient
	}

	// Control: the route's own policy lets A's token see A's studies.
	legitSearch(t, a.client, search(doc(smartA(nil)), demoPatient), tokA, w.patientA.studies)

	for _, x := range []struct {
		name, field string
		authz       jsonObj
		images      jsonObj
		extra       jsonObj
		bearer      string
		patient     string
	}{
		{name: "mrn_system naming the system where A's identifier is B's PACS ID", field: "mrn_system",
			authz: smartA(jsonObj{"mrn_system": []string{atkOtherSystem}}), bearer: tokA, patient: demoPatient},
		{name: "accept_scopes admitting a token without imaging scope", field: "accept_scopes",
			authz: smartA(jsonObj{"accept_scopes": []string{"patient/Observation.rs"}}), bearer: tokNoImaging, patient: demoPatient},
		{name: "audience admitting a token for another server", field: "audience",
			authz: smartA(jsonObj{"audience": []string{"https://elsewhere.example.org/fhir"}}), bearer: tokOtherAud, patient: demoPatient},
		{name: "patient_claim sub taking B from the subject", field: "patient_claim",
			authz: smartA(jsonObj{"patient_claim": "sub"}), bearer: tokSubB, patient: atkPatientB},
		{name: "issuer admitting a JWT from another issuer", field: "issuer",
			authz: smartA(jsonObj{"jwks_url": ehr.JWKSURL(), "issuer": "https://evil.example.org/auth"}), bearer: jwtOtherIss, patient: demoPatient},
		{name: "patient_lookup_token caller", field: "patient_lookup_token",
			authz: smartA(jsonObj{"patient_lookup_token": "caller"}), bearer: tokA, patient: demoPatient},
		{name: "validation jwt", field: "validation",
			authz: smartA(jsonObj{"validation": "jwt"}), bearer: tokA, patient: demoPatient},
		{name: "jwks_url chosen by the URL", field: "jwks_url",
			authz: smartA(jsonObj{"jwks_url": ehr.JWKSURL()}), bearer: tokA, patient: demoPatient},
		{name: "introspection_endpoint chosen by the URL", field: "introspection_endpoint",
			authz: smartA(jsonObj{"introspection_endpoint": ehr.IntrospectionEndpoint()}), bearer: tokA, patient: demoPatient},
		{name: "token_endpoint chosen by the URL", field: "token_endpoint",
			authz: smartA(jsonObj{"token_endpoint": ehr.TokenEndpoint()}), bearer: tokA, patient: demoPatient},
		{name: "scope of the gateway's own token", field: "scope",
			authz: smartA(jsonObj{"scope": "system/*.rs"}), bearer: tokA, patient: demoPatient},
		{name: "cache_ttl of a year (revocations unnoticed)", field: "cache_ttl",
			authz: smartA(jsonObj{"cache_ttl": "8760h"}), bearer: tokA, patient: demoPatient},
		{name: "inactive_cache_ttl", field: "inactive_cache_ttl",
			authz: smartA(jsonObj{"inactive_cache_ttl": "8760h"}), bearer: tokA, patient: demoPatient},
		{name: "cache_size of a billion", field: "cache_size",
			authz: smartA(jsonObj{"cache_size": 1000000000}), bearer: tokA, patient: demoPatient},
		{name: "EHR timeout of an hour", field: "timeout",
			authz: smartA(jsonObj{"timeout": "1h"}), bearer: tokA, patient: demoPatient},
		{name: "QIDO timeout of an hour", field: "qido_timeout",
			authz: smartA(nil), images: merge(images, jsonObj{"qido_timeout": "1h"}), bearer: tokA, patient: demoPatient},
		{name: "a million concurrent QIDO calls", field: "max_concurrent_qido",
			authz: smartA(nil), images: merge(images, jsonObj{"max_concurrent_qido": 1000000}), bearer: tokA, patient: demoPatient},
		{name: "study tokens living past the route's lifetime", field: "study_token_ttl",
			authz: smartA(nil), extra: jsonObj{"study_token_ttl": "23h"}, bearer: tokA, patient: demoPatient},
		{name: "the route's EHR secret used for another client id", field: "client_id",
			authz: smartA(jsonObj{"client_id": "another-app"}), bearer: tokA, patient: demoPatient},
		{name: "a client secret in the URL", field: "client_secret",
			authz: smartA(jsonObj{"client_secret": w.secret}), bearer: tokA, patient: demoPatient},
		{name: "a PACS password in the URL", field: "password",
			authz: smartA(nil), images: merge(images, jsonObj{"username": w.pacs.Username(), "password": w.pacs.Password()}), bearer: tokA, patient: demoPatient},
		{name: "a PACS bearer token in the URL", field: "bearer",
			authz: smartA(nil), images: merge(images, jsonObj{"bearer": "token-of-the-url"}), bearer: tokA, patient: demoPatient},
		{name: "lookup all-studies", field: "lookup",
			authz: smartA(nil), images: merge(images, jsonObj{"lookup": "all-studies"}), bearer: tokA, patient: demoPatient},
		{name: "mock without patient binding", field: "disable_authz_checks",
			authz: jsonObj{"kind": "mock", "disable_authz_checks": true}, bearer: tokA, patient: demoPatient},
	} {
		d := doc(x.authz)
		if x.images != nil {
			d["images"] = x.images
		}
		d = merge(d, x.extra)
		status, body := a.run(atkReq{name: "dyn loosening: " + x.name, url: search(d, x.patient), bearer: x.bearer, want: []int{400}, aOnly: x.patient == demoPatient})
		if status == 200 {
			a.ledger.leak("dyn loosening: %s: the URL's config was served (HTTP 200)", x.name)
			t.Errorf("dyn loosening: %s: served; the URL loosened the route's authorization", x.name)
		} else if status == 400 && !strings.Contains(diagnosticsOf(body), x.field) {
			t.Errorf("dyn loosening: %s: the refusal does not name %q: %q", x.name, x.field, diagnosticsOf(body))
		}
	}
}

// diagnosticsOf is the first issue's diagnostics of an OperationOutcome.
func diagnosticsOf(body []byte) string {
	var oo struct {
		Issue []struct {
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	_ = json.Unmarshal(body, &oo)
	if len(oo.Issue) == 0 {
		return ""
	}
	return oo.Issue[0].Diagnostics
}
