package dynconfig

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func readRef(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../refconfig/testdata/" + name + ".json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func refPolicy() *Policy {
	return &Policy{
		AllowHosts:       []string{"launcher.imaging.argo.run", "fhir-myrecord.cerner.com", "fhir.epic.com", "devmtx-restapis-stable.meditech.com", "orthanc:8042", "hackathon.siim.org"},
		AllowMock:        true,
		MaxStudyTokenTTL: time.Hour,
	}
}

// TestReferenceConfigsRefusedOnPurpose: what the reference lets a URL do
// and this gateway never does is a refusal naming the reference field and
// saying why, whatever the route allows.
func TestReferenceConfigsRefusedOnPurpose(t *testing.T) {
	p := refPolicy()
	p.AllowURLCredentials = true
	for _, c := range []struct {
		config, field string
		sentinel      error
		why           string
	}{
		{"open", "authorization.disableAuthzChecks", ErrNotSettable, "never turns patient binding off"},
		{"delayed", "authorization.disableAuthzChecks", ErrNotSettable, "never turns patient binding off"},
		{"siim-hackathon", "authorization.disableAuthzChecks", ErrNotSettable, "never turns patient binding off"},
		{"open-dimse", "authorization.disableAuthzChecks", ErrNotSettable, "never turns patient binding off"},
		{"hardcoded-patient", "images.lookup", ErrBadValue, "every patient's studies"},
		{"meditech-sandbox", "authorization.type", ErrBadValue, "takes the patient from the request"},
		{"smart-sandbox-independent", "authorization.type", ErrBadValue, "registered apps"},
		{"epic-sandbox", "images.mrn", ErrNotSettable, "operator"},
	} {
		_, err := p.Parse(readRef(t, c.config))
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, c.sentinel) || e.Field != c.field || !strings.Contains(e.Reason, c.why) {
			t.Errorf("%s: got %v, want a refusal of %s (%v) saying %q", c.config, err, c.field, c.sentinel, c.why)
		}
	}
}

// TestReferenceCredentialsFollowTheRoute: the reference's configs carry
// credentials, which a route takes from a URL only with
// allow_url_credentials; without it the refusal names the reference field.
// Hosts off the allow list are refused as in our JSON.
func TestReferenceCredentialsFollowTheRoute(t *testing.T) {
	raw := readRef(t, "smart-sandbox")
	p := refPolicy()
	_, err := p.Parse(raw)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrURLCredentials) || e.Field != "authorization.client.jwk.alg" && e.Field != "authorization.client.jwkPrivate" {
		t.Fatalf("URL credentials without allow_url_credentials: %v", err)
	}

	p.AllowURLCredentials = true
	ten, err := p.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if ten.Authz.Kind != AuthzSMART || ten.Authz.ClientID != "imaging-client" || ten.Authz.PrivateKeyAlg != "ES384" ||
		ten.Authz.PrivateKeyID != "refdrop-test-es384" || !strings.Contains(ten.Authz.PrivateKey, `"d":`) ||
		ten.Images.BaseURL != "http://orthanc:8042/dicom-web" || ten.Images.Username != "argonaut" || ten.Images.Lookup != LookupStudiesByMRN {
		t.Errorf("smart-sandbox mapped to %+v", ten)
	}

	p.AllowHosts = []string{"orthanc:8042"}
	_, err = p.Parse(raw)
	if !errors.As(err, &e) || !errors.Is(err, ErrOffAllowList) || e.Field != "authorization.fhirBaseUrl" {
		t.Errorf("EHR off the list: %v", err)
	}
}

// TestReferenceMatchesOurJSON: a reference config without credentials and
// our JSON for the same tenant give the same tenant, the operator's
// credentials filled in for both.
func TestReferenceMatchesOurJSON(t *testing.T) {
	var ref map[string]any
	if err := json.Unmarshal(readRef(t, "cerner-sandbox"), &ref); err != nil {
		t.Fatal(err)
	}
	a := ref["authorization"].(map[string]any)
	a["client"] = map[string]any{"client_id": "gw"}
	delete(ref["images"].(map[string]any), "authentication")
	ref["images"].(map[string]any)["delay"] = map[string]any{"lookupUntil": 4833623642}
	refRaw, _ := json.Marshal(ref)
	ours := []byte(`{"authz": {"kind": "smart-on-fhir", "fhir_base_url": "https://fhir-myrecord.cerner.com/r4/ec2458f2-1e24-41c8-b71b-0e701af7583d", "client_id": "gw"},
		"images": {"kind": "dicomweb", "base_url": "http://orthanc:8042/dicom-web", "lookup": "studies-by-mrn"},
		"delay": {"lookup_until": "2123-03-04T17:14:02Z"}}`)
	p := refPolicy()
	p.Credentials = []Credential{
		{Host: "fhir-myrecord.cerner.com", Kind: CredClientSecret, ClientID: "gw", ClientSecret: "s"},
		{Host: "orthanc:8042", Kind: CredBasic, Username: "u", Password: "pw"},
	}
	fromRef, err := p.Parse(refRaw)
	if err != nil {
		t.Fatal(err)
	}
	fromOurs, err := p.Parse(ours)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromRef, fromOurs) {
		t.Errorf("reference JSON gave %+v\nour JSON gave %+v", fromRef, fromOurs)
	}
	if fromRef.Images.Password != "pw" || fromRef.Authz.ClientSecret != "s" {
		t.Errorf("the operator's credentials were not filled in: %+v", fromRef)
	}
}

// TestReferenceMockNamesItsPatient: the mock's patient and its MR-typed
// identifier become the tenant's patient and MRN.
func TestReferenceMockNamesItsPatient(t *testing.T) {
	var ref map[string]any
	if err := json.Unmarshal(readRef(t, "hardcoded-patient"), &ref); err != nil {
		t.Fatal(err)
	}
	ref["images"].(map[string]any)["lookup"] = "studies-by-mrn"
	raw, _ := json.Marshal(ref)
	p := refPolicy()
	p.AllowURLCredentials = true
	ten, err := p.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if ten.Authz.Kind != AuthzMock || ten.Authz.Patient != "87a339d0-8cae-418e-89c7-8651e6aab3c6" ||
		!reflect.DeepEqual(ten.Authz.MRN, []string{"293ee354-f8ad-4345-b10c-759fdfdcc082"}) {
		t.Errorf("mock mapped to %+v", ten.Authz)
	}
	p.AllowMock = false
	if _, err := p.Parse(raw); !errors.Is(err, ErrBadValue) || !strings.Contains(err.Error(), "authorization.type") {
		t.Errorf("mock on a route without allow_mock: %v", err)
	}
}

// TestReferenceUnknownFieldsRefused: a misspelt member is refused, a
// "//" comment member is not.
func TestReferenceUnknownFieldsRefused(t *testing.T) {
	p := refPolicy()
	p.AllowURLCredentials = true
	base := `{"authorization": {"type": "smart-on-fhir", "fhirBaseUrl": "https://fhir.epic.com/x", %s "client": {"client_id": "c"}},
		"images": {"type": "dicom-web", "endpoint": "http://orthanc:8042/dicom-web", "//endpoint": "http://elsewhere"}}`
	if _, err := p.Parse([]byte(strings.Replace(base, "%s", `"//note": "a comment",`, 1))); err != nil {
		t.Errorf("comment members refused: %v", err)
	}
	if _, err := p.Parse([]byte(strings.Replace(base, "%s", `"fhirBaseURL": "https://evil.example",`, 1))); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "fhirBaseURL") {
		t.Errorf("misspelt member: %v", err)
	}
}
