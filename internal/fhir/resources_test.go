package fhir

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
)

func TestWADOEndpoint(t *testing.T) {
	ep := WADOEndpoint("", "https://imaging.example.org/ehr/wado/tok", true)
	b := mustValid(t, ep)
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if _, hasID := got["id"]; hasID {
		t.Errorf("empty id emitted: %s", b)
	}
	if got["resourceType"] != "Endpoint" || got["status"] != "active" || got["address"] != "https://imaging.example.org/ehr/wado/tok" {
		t.Errorf("unexpected endpoint: %s", b)
	}
	ct := got["connectionType"].(map[string]any)
	if ct["system"] != SystemConnectionType || ct["code"] != "dicom-wado-rs" {
		t.Errorf("connectionType = %v", ct)
	}
	pt := got["payloadType"].([]any)[0].(map[string]any)["coding"].([]any)[0].(map[string]any)
	if pt["system"] != SystemPayloadType || pt["code"] != "any" {
		t.Errorf("payloadType = %v", pt)
	}
	if !reflect.DeepEqual(got["payloadMimeType"], []any{"application/dicom"}) {
		t.Errorf("payloadMimeType = %v", got["payloadMimeType"])
	}
	exts := map[string]any{}
	for _, e := range got["extension"].([]any) {
		m := e.(map[string]any)
		exts[m["url"].(string)] = m["valueBoolean"]
	}
	want := map[string]any{ExtRequiresAccessToken: true, ExtRequiresAccessTokenS4S: true}
	if !reflect.DeepEqual(exts, want) {
		t.Errorf("extensions = %v, want %v", exts, want)
	}
	// An open route needs no token: the extension would be false there,
	// so it is left out.
	open, err := json.Marshal(WADOEndpoint("", "https://x.example/wado/tok", false))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(open), "requires-access-token") {
		t.Errorf("an open route's Endpoint claims a token is required: %s", open)
	}

	withID := mustValid(t, WADOEndpoint("e", "https://x.example/wado", true))
	if !strings.Contains(string(withID), `"id":"e"`) {
		t.Errorf("id missing: %s", withID)
	}
}

func TestCapabilityStatement(t *testing.T) {
	date := time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("", -7200))
	cs := NewCapabilityStatement(CapabilityOptions{
		Date: date, SoftwareVersion: "v1.2.3", BaseURL: "https://imaging.example.org/ehr/fhir",
		AuthorizeURL: "https://ehr.example.org/authorize", TokenURL: "https://ehr.example.org/token",
		IntrospectURL: "https://ehr.example.org/introspect",
		SearchParams: []SearchParam{
			{Name: "started", Type: "date", Definition: "http://hl7.org/fhir/SearchParameter/ImagingStudy-started"},
			{Name: "patient", Type: "reference", Definition: "http://hl7.org/fhir/SearchParameter/clinical-patient", Documentation: "replaced"},
		},
	})
	b := mustValid(t, cs)
	var got struct {
		ResourceType   string
		Status         string
		Date           string
		Kind           string
		FHIRVersion    string `json:"fhirVersion"`
		Format         []string
		Software       map[string]string
		Implementation map[string]string
		Rest           []struct {
			Mode     string
			Security struct {
				Extension []Extension
				Service   []CodeableConcept
			}
			Resource []RestResource
		}
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.ResourceType != "CapabilityStatement" || got.Status != "active" || got.Kind != "instance" ||
		got.FHIRVersion != "4.0.1" || !reflect.DeepEqual(got.Format, []string{"json"}) {
		t.Errorf("header: %s", b)
	}
	if got.Date != "2025-01-02T05:04:05Z" {
		t.Errorf("date = %q", got.Date)
	}
	if got.Software["name"] != "smart_imaging" || got.Software["version"] != "v1.2.3" {
		t.Errorf("software = %v", got.Software)
	}
	if got.Implementation["url"] != "https://imaging.example.org/ehr/fhir" {
		t.Errorf("implementation = %v", got.Implementation)
	}
	if len(got.Rest) != 1 || got.Rest[0].Mode != "server" {
		t.Fatalf("rest: %s", b)
	}
	rest := got.Rest[0]
	if svc := rest.Security.Service; len(svc) != 1 || svc[0].Coding[0].Code != "SMART-on-FHIR" || svc[0].Coding[0].System != SystemRestfulSecurityService {
		t.Errorf("security.service = %+v", svc)
	}
	if len(rest.Security.Extension) != 1 || rest.Security.Extension[0].URL != ExtOAuthURIs {
		t.Fatalf("security.extension = %+v", rest.Security.Extension)
	}
	uris := map[string]string{}
	for _, e := range rest.Security.Extension[0].Extension {
		uris[e.URL] = e.ValueURI
	}
	wantURIs := map[string]string{"authorize": "https://ehr.example.org/authorize", "token": "https://ehr.example.org/token", "introspect": "https://ehr.example.org/introspect"}
	if !reflect.DeepEqual(uris, wantURIs) {
		t.Errorf("oauth-uris = %v", uris)
	}

	// What fhirclient.js does: find ImagingStudy, then its patient param.
	var study *RestResource
	for i := range rest.Resource {
		if rest.Resource[i].Type == "ImagingStudy" {
			study = &rest.Resource[i]
		}
	}
	if study == nil {
		t.Fatalf("no ImagingStudy resource: %s", b)
	}
	if !reflect.DeepEqual(study.Interaction, []RestInteraction{{Code: "search-type"}}) ||
		!reflect.DeepEqual(study.SearchInclude, []string{"ImagingStudy:endpoint"}) {
		t.Errorf("ImagingStudy = %+v", study)
	}
	params := map[string]SearchParam{}
	var order []string
	for _, p := range study.SearchParam {
		if _, dup := params[p.Name]; dup {
			t.Errorf("searchParam %s twice", p.Name)
		}
		params[p.Name] = p
		order = append(order, p.Name)
	}
	if want := []string{"patient", "subject", "identifier", "_lastUpdated", "started"}; !reflect.DeepEqual(order, want) {
		t.Errorf("searchParams = %v, want %v", order, want)
	}
	for name, typ := range map[string]string{"patient": "reference", "subject": "reference", "identifier": "token", "_lastUpdated": "date", "started": "date"} {
		if params[name].Type != typ {
			t.Errorf("searchParam %s type %q, want %q", name, params[name].Type, typ)
		}
	}
	if params["patient"].Documentation != "replaced" {
		t.Errorf("option did not replace the default patient param")
	}
}

func TestCapabilityStatementWithoutOAuth(t *testing.T) {
	cs := NewCapabilityStatement(CapabilityOptions{})
	b := mustValid(t, cs)
	if strings.Contains(string(b), ExtOAuthURIs) {
		t.Errorf("oauth-uris without URLs: %s", b)
	}
	if cs.Date == "" || !reDateTime.MatchString(cs.Date) {
		t.Errorf("date = %q", cs.Date)
	}
	var m struct{ Implementation map[string]any }
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Implementation["url"]; ok {
		t.Errorf("implementation.url without a base URL: %s", b)
	}
	if m.Implementation["description"] == nil {
		t.Errorf("implementation.description missing (R4 requires it): %s", b)
	}
}

func TestSearchBundle(t *testing.T) {
	b := NewSearchBundle("https://imaging.example.org/ehr/fhir/ImagingStudy?patient=123")
	ep := WADOEndpoint("", "https://imaging.example.org/ehr/wado/tok", true)
	const epURL = "urn:uuid:7d30f876-3d28-4c21-9f9d-13bfa9dd42a0"
	for _, uid := range []string{"1.2.3", "1.2.4"} {
		ds := dicomjson.Dataset{}
		ds.SetString(dicomjson.TagStudyInstanceUID, "UI", uid)
		ds.SetString(dicomjson.TagModalitiesInStudy, "CS", "CT")
		is := ImagingStudyFrom(imagesource.Study{Attributes: ds}, MapOptions{
			Subject: Reference{Reference: "https://ehr.example.org/fhir/Patient/123"}, EndpointRef: epURL})
		b.AddMatch("https://imaging.example.org/ehr/fhir/ImagingStudy/"+is.ID, is)
		b.AddInclude(epURL, ep)
	}
	raw := mustValid(t, b)
	if *b.Total != 2 {
		t.Errorf("total = %d, want 2 (includes not counted)", *b.Total)
	}
	if len(b.Entry) != 3 {
		t.Errorf("entries = %d, want 2 studies + 1 shared endpoint", len(b.Entry))
	}

	var back Bundle
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if back.Type != "searchset" || back.Link[0].Relation != "self" {
		t.Errorf("decoded bundle: %+v", back)
	}
	var modes []string
	for _, e := range back.Entry {
		modes = append(modes, e.Search.Mode)
	}
	if !reflect.DeepEqual(modes, []string{"match", "include", "match"}) {
		t.Errorf("modes = %v", modes)
	}
	// A client resolves endpoint[0].reference to the included entry.
	st, ok := back.Entry[0].Resource.(*ImagingStudy)
	if !ok {
		t.Fatalf("entry 0 decoded as %T", back.Entry[0].Resource)
	}
	var found *Endpoint
	for _, e := range back.Entry {
		if e.FullURL == st.Endpoint[0].Reference {
			found, _ = e.Resource.(*Endpoint)
		}
	}
	if found == nil || found.Address != ep.Address {
		t.Errorf("endpoint reference %q does not resolve in the bundle", st.Endpoint[0].Reference)
	}
	again, err := json.Marshal(back)
	if err != nil || string(again) != string(raw) {
		t.Errorf("round trip changed the bundle:\n%s\n%s (%v)", raw, again, err)
	}
}

func TestEmptySearchBundle(t *testing.T) {
	b := NewSearchBundle("")
	raw := mustValid(t, b)
	if string(raw) != `{"resourceType":"Bundle","type":"searchset","total":0}` {
		t.Errorf("empty bundle = %s", raw)
	}
}

func TestDecodeUnknownResourceKept(t *testing.T) {
	in := `{"resourceType":"Bundle","type":"collection","entry":[{"fullUrl":"https://x.example/Patient/1","resource":{"resourceType":"Patient","id":"1"}}]}`
	var b Bundle
	if err := json.Unmarshal([]byte(in), &b); err != nil {
		t.Fatal(err)
	}
	if b.Entry[0].Resource.ResourceType() != "Patient" {
		t.Errorf("resource type = %q", b.Entry[0].Resource.ResourceType())
	}
	out, _ := json.Marshal(b)
	if string(out) != in {
		t.Errorf("round trip:\n%s\n%s", in, out)
	}
	if _, err := DecodeResource([]byte(`{"id":"x"}`)); err == nil {
		t.Error("resource without resourceType accepted")
	}
}

func TestWriteJSON(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteJSON(rec, http.StatusForbidden, NewOperationOutcome("error", "forbidden", "patient does not match the token's patient & scope"))
	if rec.Code != http.StatusForbidden {
		t.Errorf("status = %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/fhir+json; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	body := rec.Body.Bytes()
	for _, e := range fhirCheck(body) {
		t.Error(e)
	}
	want := `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"forbidden","diagnostics":"patient does not match the token's patient & scope"}]}` + "\n"
	if string(body) != want {
		t.Errorf("body = %s", body)
	}
	if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length = %q, body %d bytes", cl, len(body))
	}
}

func TestWriteJSONEncodingFailure(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteJSON(rec, http.StatusOK, map[string]any{"bad": make(chan int)})
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("status = %d, want 500", rec.Code)
	}
	r, err := DecodeResource(rec.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if oo, ok := r.(*OperationOutcome); !ok || oo.Issue[0].Code != "exception" {
		t.Errorf("body = %s", rec.Body)
	}
}

func TestOperationOutcomeOmitsEmptyDiagnostics(t *testing.T) {
	b := mustValid(t, NewOperationOutcome("error", "not-found", ""))
	if strings.Contains(string(b), "diagnostics") {
		t.Errorf("empty diagnostics emitted: %s", b)
	}
}
