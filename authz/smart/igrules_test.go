package smart

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

func withBackendClients(c *Config, _ *testehr.EHR) {
	c.BackendClients = []BackendClient{
		{ClientID: "registry", Patients: []string{"123"}},
		{ClientID: "research", AllPatients: true},
	}
}

// System scopes without patient context: a configured backend client,
// nothing else.
func TestBackendClients(t *testing.T) {
	f := setup(t, withBackendClients)
	system := func(client, scope string) string {
		return f.issue(testehr.TokenSpec{ClientID: client, OmitPatient: true, Scope: scope, Sub: client})
	}
	for _, scope := range []string{"system/ImagingStudy.rs", "system/ImagingStudy.read", "system/*.rs", "system/*.read"} {
		p := f.allow(system("registry", scope))
		if !p.Backend || p.Patient != "" || !slices.Equal(p.Patients, []string{"123"}) || p.AllPatients {
			t.Fatalf("%s: principal %+v", scope, p)
		}
	}
	if p := f.allow(system("research", "system/ImagingStudy.rs")); !p.AllPatients {
		t.Fatalf("all_patients client: %+v", p)
	}

	// An unknown client with a system scope.
	_, err := f.authorize(system("someone-else", "system/ImagingStudy.rs"))
	mustRefuse(t, err, 403, "")
	if !strings.Contains(err.Message, "not a backend client") {
		t.Errorf("message %q", err.Message)
	}
	// A patient-context token with system scopes never gains system
	// access: it stays bound to its patient.
	p := f.allow(f.issue(testehr.TokenSpec{ClientID: "registry", Patient: "123", Scope: "system/ImagingStudy.rs patient/ImagingStudy.rs"}))
	if p.Backend || p.Patient != "123" {
		t.Fatalf("patient token with system scope became %+v", p)
	}
	_, err = f.authorize(f.issue(testehr.TokenSpec{ClientID: "registry", Patient: "123", Scope: "system/ImagingStudy.rs"}))
	mustRefuse(t, err, 403, `error="insufficient_scope"`)
	// A backend client with only patient scopes.
	_, err = f.authorize(system("registry", "patient/ImagingStudy.rs"))
	mustRefuse(t, err, 403, "")

	// The backend client's patient lookups stay within its list.
	bp := f.allow(system("registry", "system/ImagingStudy.rs"))
	other, _ := bp.ForPatient("123", "")
	if _, err := f.a.PatientKeys(context.Background(), other); err != nil {
		t.Fatalf("listed patient: %v", err)
	}
	forged := *bp
	forged.Patient = "456"
	if _, err := f.a.PatientKeys(context.Background(), &forged); err == nil {
		t.Fatal("a backend principal read the keys of a patient outside its list")
	}
}

// A route without backend_client grants nothing to system scopes.
func TestSystemScopeWithoutBackendClients(t *testing.T) {
	f := setup(t, nil)
	tok := f.issue(testehr.TokenSpec{ClientID: "registry", OmitPatient: true, Scope: "system/ImagingStudy.rs system/*.read"})
	_, err := f.authorize(tok)
	mustRefuse(t, err, 403, "")
	if !strings.Contains(err.Message, "does not offer SMART Backend Services") {
		t.Errorf("message %q", err.Message)
	}
}

// Granular scopes restrict the principal; a query the gateway does not
// understand grants nothing and the refusal names the scope.
func TestGranularScopes(t *testing.T) {
	f := setup(t, withBackendClients)
	p := f.allow(f.issue(testehr.TokenSpec{Patient: "123", Scope: "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?modality=MR patient/ImagingStudy.rs?status=x"}))
	if !slices.Equal(p.Modalities, []string{"CT", "MR"}) || !slices.Equal(p.IgnoredScopes, []string{"patient/ImagingStudy.rs?status=x"}) {
		t.Fatalf("principal %+v", p)
	}
	_, err := f.authorize(f.issue(testehr.TokenSpec{Patient: "123", Scope: "patient/ImagingStudy.rs?status=final"}))
	mustRefuse(t, err, 403, `error="insufficient_scope"`)
	if !strings.Contains(err.Message, "patient/ImagingStudy.rs?status=final") {
		t.Errorf("the refusal does not name the ignored scope: %q", err.Message)
	}
	bp := f.allow(f.issue(testehr.TokenSpec{ClientID: "registry", OmitPatient: true, Scope: "system/ImagingStudy.rs?modality=US"}))
	if !bp.Backend || !slices.Equal(bp.Modalities, []string{"US"}) {
		t.Fatalf("backend principal %+v", bp)
	}
}

// The published smart-configuration names the modes this route offers.
func TestSMARTConfigurationModes(t *testing.T) {
	f := setup(t, nil)
	doc, err := f.a.SMARTConfiguration(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	caps := doc["capabilities"].([]string)
	if !slices.Contains(caps, CapabilityAppLaunch) || slices.Contains(caps, CapabilityBackend) {
		t.Errorf("App Launch only route: capabilities %v", caps)
	}
	if !slices.Contains(doc["grant_types_supported"].([]string), "authorization_code") {
		t.Errorf("grant types %v", doc["grant_types_supported"])
	}
	g := setup(t, withBackendClients)
	doc, err = g.a.SMARTConfiguration(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	caps = doc["capabilities"].([]string)
	if !slices.Contains(caps, CapabilityAppLaunch) || !slices.Contains(caps, CapabilityBackend) || !slices.Contains(caps, CapabilityImagingAccess) {
		t.Errorf("capabilities %v", caps)
	}
	for field, want := range map[string]string{
		"grant_types_supported":                            "client_credentials",
		"token_endpoint_auth_methods_supported":            "private_key_jwt",
		"scopes_supported":                                 "system/ImagingStudy.rs",
		"token_endpoint_auth_signing_alg_values_supported": "RS384",
	} {
		if v, _ := doc[field].([]string); !slices.Contains(v, want) {
			t.Errorf("%s = %v, want it to hold %s", field, doc[field], want)
		}
	}
	if !slices.Contains(doc["grant_types_supported"].([]string), "authorization_code") {
		t.Errorf("grant types %v lack authorization_code", doc["grant_types_supported"])
	}
}
