package mock

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

const patientID = "87a339d0-8cae-418e-89c7-8651e6aab3c6"

func mustNew(t *testing.T, c Config) *Authorizer {
	t.Helper()
	a, err := New(c)
	if err != nil {
		t.Fatalf("New(%+v): %v", c, err)
	}
	return a
}

func request(authorization string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/fhir/ImagingStudy?patient="+patientID, nil)
	if authorization != "" {
		r.Header.Set("Authorization", authorization)
	}
	return r
}

func TestAuthorize(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		auth string
		want authz.Principal
	}{
		{
			name: "no token, relative reference",
			cfg:  Config{Patient: patientID},
			want: authz.Principal{Patient: patientID, PatientReference: "Patient/" + patientID,
				Scopes: DefaultScopes, ClientID: "mock"},
		},
		{
			name: "bearer token is hashed, never kept",
			cfg:  Config{Patient: "123", FHIRBaseURL: "https://ehr.example.org/fhir/", Scopes: []string{"patient/*.read"}},
			auth: "Bearer secret-token",
			want: authz.Principal{Patient: "123", PatientReference: "https://ehr.example.org/fhir/Patient/123",
				Scopes: []string{"patient/*.read"}, ClientID: "mock", TokenHash: authz.HashToken("secret-token")},
		},
		{
			name: "basic credentials are not a token",
			cfg:  Config{Patient: "123"},
			auth: "Basic dXNlcjpwYXNz",
			want: authz.Principal{Patient: "123", PatientReference: "Patient/123", Scopes: DefaultScopes, ClientID: "mock"},
		},
		{
			name: "open demo without patient",
			cfg:  Config{DisableAuthzChecks: true},
			auth: "bearer x",
			want: authz.Principal{Unrestricted: true, Scopes: DefaultScopes, ClientID: "mock", TokenHash: authz.HashToken("x")},
		},
		{
			name: "open demo with patient",
			cfg:  Config{DisableAuthzChecks: true, Patient: "123", FHIRBaseURL: "http://127.0.0.1:8080/fhir"},
			want: authz.Principal{Patient: "123", PatientReference: "http://127.0.0.1:8080/fhir/Patient/123",
				Unrestricted: true, Scopes: DefaultScopes, ClientID: "mock"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := mustNew(t, tc.cfg).Authorize(request(tc.auth))
			if err != nil {
				t.Fatalf("Authorize: %v", err)
			}
			if !reflect.DeepEqual(*p, tc.want) {
				t.Errorf("Principal = %+v\nwant        %+v", *p, tc.want)
			}
			if tc.auth != "" && strings.Contains(p.TokenHash, "secret") {
				t.Error("TokenHash contains the token")
			}
		})
	}
}

func TestPrincipalScopesAreACopy(t *testing.T) {
	a := mustNew(t, Config{Patient: "123"})
	p, _ := a.Authorize(request(""))
	p.Scopes[0] = "user/*.*"
	q, _ := a.Authorize(request(""))
	if q.Scopes[0] != DefaultScopes[0] {
		t.Fatalf("changing one principal's scopes changed the next: %v", q.Scopes)
	}
	if DefaultScopes[0] != "patient/ImagingStudy.rs" {
		t.Fatalf("DefaultScopes changed: %v", DefaultScopes)
	}
}

func TestNewRefuses(t *testing.T) {
	for name, c := range map[string]Config{
		"no patient with checks on":   {MRN: []string{"MRN1"}},
		"patient is a reference":      {Patient: "Patient/123"},
		"patient with space":          {Patient: "12 3"},
		"patient too long":            {Patient: strings.Repeat("1", 65)},
		"patient is a parent segment": {Patient: ".."},
		"patient is a dot":            {Patient: "."},
		"wildcard mrn":                {Patient: "123", MRN: []string{"MRN*"}},
		"value list mrn":              {Patient: "123", MRN: []string{"A,B"}},
		"empty mrn":                   {Patient: "123", MRN: []string{""}},
		"relative fhir base":          {Patient: "123", FHIRBaseURL: "ehr/fhir"},
		"fhir base with query":        {Patient: "123", FHIRBaseURL: "https://ehr.example.org/fhir?x=1"},
		"fhir base of another kind":   {Patient: "123", FHIRBaseURL: "ftp://ehr.example.org/fhir"},
		"open demo with bad patient":  {DisableAuthzChecks: true, Patient: "a/b"},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("%s: New(%+v) accepted", name, c)
		}
	}
	_, err := New(Config{})
	if err == nil || !strings.Contains(err.Error(), "patient is required") {
		t.Errorf("empty config: err = %v, want one saying a patient is required", err)
	}
}

func TestPatientKeys(t *testing.T) {
	ctx := context.Background()
	a := mustNew(t, Config{Patient: "123", MRN: []string{"MRN-1", "MRN-2"}})
	p, _ := a.Authorize(request(""))
	keys, err := a.PatientKeys(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(keys, []pacskey.PatientKey{"MRN-1", "MRN-2"}) {
		t.Fatalf("PatientKeys = %v", keys)
	}
	keys[0] = "changed"
	if again, _ := a.PatientKeys(ctx, p); again[0] != "MRN-1" {
		t.Fatalf("PatientKeys returned the authorizer's own slice")
	}

	// Another patient's principal gets nothing.
	_, err = a.PatientKeys(ctx, &authz.Principal{Patient: "456"})
	wantForbidden(t, err, "")

	// No MRN configured: 403 saying so.
	b := mustNew(t, Config{Patient: "123"})
	p, _ = b.Authorize(request(""))
	_, err = b.PatientKeys(ctx, p)
	wantForbidden(t, err, "no MRN configured")

	// An open demo without a patient has no keys either.
	c := mustNew(t, Config{DisableAuthzChecks: true, MRN: []string{"MRN-1"}})
	p, _ = c.Authorize(request(""))
	_, err = c.PatientKeys(ctx, p)
	wantForbidden(t, err, "")
}

func TestPatientIdentifiers(t *testing.T) {
	ctx := context.Background()
	// Without mrn_system the MRNs have no system.
	a := mustNew(t, Config{Patient: "123", MRN: []string{"MRN-1", "MRN-2"}})
	p, _ := a.Authorize(request(""))
	ids, err := a.PatientIdentifiers(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []authz.Identifier{{Value: "MRN-1"}, {Value: "MRN-2"}}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("PatientIdentifiers = %+v, want %+v", ids, want)
	}
	if authz.AnyMatchesToken(ids, "urn:other", true, "MRN-1") || !authz.AnyMatchesToken(ids, "", true, "MRN-1") {
		t.Error("identifiers without a system matched urn:other|MRN-1, or not |MRN-1")
	}

	// With mrn_system every MRN carries it.
	b := mustNew(t, Config{Patient: "123", MRN: []string{"MRN-1"}, MRNSystem: "http://hospital.example.org/mrn"})
	p, _ = b.Authorize(request(""))
	ids, err = b.PatientIdentifiers(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []authz.Identifier{{System: "http://hospital.example.org/mrn", Value: "MRN-1"}}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("PatientIdentifiers = %+v, want %+v", ids, want)
	}

	// Another patient, or none configured: refused as for PatientKeys.
	_, err = b.PatientIdentifiers(ctx, &authz.Principal{Patient: "456"})
	wantForbidden(t, err, "")
	c := mustNew(t, Config{Patient: "123"})
	p, _ = c.Authorize(request(""))
	_, err = c.PatientIdentifiers(ctx, p)
	wantForbidden(t, err, "no MRN configured")

	for _, bad := range []string{"urn:a|b", "http://x y", "urn:x\n"} {
		if _, err := New(Config{Patient: "123", MRN: []string{"M"}, MRNSystem: bad}); err == nil {
			t.Errorf("mrn_system %q accepted", bad)
		}
	}
}

func wantForbidden(t *testing.T, err error, msg string) {
	t.Helper()
	var ae *authz.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
		t.Fatalf("err = %v, want a 403 *authz.Error", err)
	}
	if !strings.Contains(ae.Message, msg) {
		t.Fatalf("message %q does not say %q", ae.Message, msg)
	}
}

func TestConfigJSON(t *testing.T) {
	var c Config
	err := json.Unmarshal([]byte(`{"patient":"123","mrn":["M1"],"mrn_system":"urn:mrn","fhir_base_url":"https://ehr/fhir","disable_authz_checks":true,"scopes":["patient/*.rs"]}`), &c)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Patient: "123", MRN: []string{"M1"}, MRNSystem: "urn:mrn", FHIRBaseURL: "https://ehr/fhir", DisableAuthzChecks: true, Scopes: []string{"patient/*.rs"}}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("decoded %+v, want %+v", c, want)
	}
	b, _ := json.Marshal(Config{Patient: "123"})
	if string(b) != `{"patient":"123"}` {
		t.Fatalf("empty fields are not omitted: %s", b)
	}
}
