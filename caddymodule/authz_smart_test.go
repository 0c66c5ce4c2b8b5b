package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/smart"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

func TestSmartAuthzCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`smart-on-fhir {
		fhir_base_url https://ehr.example.org/fhir
		client_id imaging-server
		private_key /etc/smart-imaging/backend.jwk
		private_key_alg ES384
		private_key_id gw-1
		client_secret {env.SMART_SECRET}
		scope system/Patient.rs system/Patient.read
		validation jwt
		introspection_endpoint https://ehr.example.org/oauth2/introspect
		token_endpoint https://ehr.example.org/oauth2/token
		jwks_url https://ehr.example.org/.well-known/jwks.json
		audience https://imaging.example.org/ehr/fhir https://imaging.example.org/fhir
		issuer https://ehr.example.org/oauth2
		patient_claim fhirUser
		accept_scopes patient/DiagnosticReport.read
		mrn_system http://hospital.example.org/mrn urn:oid:1.2.3
		patient_lookup_token caller
		cache_ttl 2m
		inactive_cache_ttl 5s
		cache_size 500
		timeout 3s
	}`)
	var m SmartAuthz
	if err := m.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	c := m.Config
	if c.FHIRBaseURL != "https://ehr.example.org/fhir" || c.ClientID != "imaging-server" ||
		c.PrivateKey != "/etc/smart-imaging/backend.jwk" || c.PrivateKeyAlg != "ES384" || c.PrivateKeyID != "gw-1" ||
		c.ClientSecret != "{env.SMART_SECRET}" || c.Scope != "system/Patient.rs system/Patient.read" ||
		c.Validation != "jwt" || c.IntrospectionEndpoint != "https://ehr.example.org/oauth2/introspect" ||
		c.TokenEndpoint != "https://ehr.example.org/oauth2/token" || c.JWKSURL != "https://ehr.example.org/.well-known/jwks.json" ||
		len(c.Audience) != 2 || c.Issuer != "https://ehr.example.org/oauth2" || c.PatientClaim != "fhirUser" ||
		!slices.Equal(c.AcceptScopes, []string{"patient/DiagnosticReport.read"}) ||
		!slices.Equal(c.MRNSystem, []string{"http://hospital.example.org/mrn", "urn:oid:1.2.3"}) ||
		c.PatientLookupToken != "caller" || c.CacheTTL == nil || time.Duration(*c.CacheTTL) != 2*time.Minute ||
		time.Duration(c.InactiveCacheTTL) != 5*time.Second || c.CacheSize != 500 || time.Duration(c.Timeout) != 3*time.Second {
		t.Fatalf("parsed %+v", c)
	}
	// The secret stays a placeholder in the JSON config.
	b, _ := json.Marshal(m)
	if !strings.Contains(string(b), `"client_secret":"{env.SMART_SECRET}"`) {
		t.Errorf("JSON %s", b)
	}

	for input, want := range map[string]string{
		"smart-on-fhir {\nfhir_base_urll https://x\n}":     "fhir_base_urll",
		"smart-on-fhir {\nvalidation maybe\n}":             "validation",
		"smart-on-fhir {\npatient_claim email\n}":          "patient_claim",
		"smart-on-fhir {\ncache_ttl soon\n}":               "cache_ttl",
		"smart-on-fhir {\ncache_size -1\n}":                "cache_size",
		"smart-on-fhir {\nclient_id a b\n}":                "wrong argument count",
		"smart-on-fhir {\nmrn_system\n}":                   "wrong argument count",
		"smart-on-fhir {\npatient_lookup_token someone\n}": "patient_lookup_token",
		"smart-on-fhir https://a/fhir https://b/fhir {\n}": "wrong argument count",
	} {
		var m SmartAuthz
		err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one naming %q", input, err, want)
		}
	}
}

// TestSmartAuthzProvision loads a smart_imaging handler whose authz is
// smart-on-fhir (JWT validation, no audience configured) and checks that
// placeholders are resolved, that Provision touches no network, and that
// the route's base_url + /fhir becomes the expected audience.
func TestSmartAuthzProvision(t *testing.T) {
	ehr := testehr.New(t)
	key := testehr.GenerateKey(t, jwa.RS384, "gw")
	ehr.RegisterClient(testehr.Client{ID: "gw", Keys: testehr.PublicSet(t, key)})
	ehr.AddPatient("123", testehr.Identifier{System: "urn:mrn", Value: "M-1"})
	keyJSON, _ := json.Marshal(key)
	t.Setenv("TEST_SMART_FHIR_BASE", ehr.FHIRBase())
	t.Setenv("TEST_SMART_KEY", string(keyJSON))

	raw := `{
		"authz": {"kind": "smart-on-fhir", "fhir_base_url": "{env.TEST_SMART_FHIR_BASE}", "client_id": "gw",
			"private_key": "{env.TEST_SMART_KEY}", "jwks_url": "` + ehr.JWKSURL() + `", "mrn_system": ["urn:mrn"]},
		"images": {"kind": "folder", "root": "` + t.TempDir() + `", "lookup": "studies-by-mrn"},
		"base_url": "https://imaging.example.org/ehr"
	}`
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	mod, err := ctx.LoadModuleByID("http.handlers.smart_imaging", json.RawMessage(raw))
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range []testehr.Endpoint{testehr.Discovery, testehr.Token, testehr.JWKS} {
		if n := ehr.Calls(ep); n != 0 {
			t.Errorf("Provision called the EHR's %s endpoint", ep)
		}
	}
	az := mod.(*Handler).authorizer.(*SmartAuthz)
	if az.EHRBaseURL() != ehr.FHIRBase() {
		t.Errorf("EHR base %q", az.EHRBaseURL())
	}
	call := func(aud string) (*authz.Principal, error) {
		tok := ehr.IssueToken(testehr.TokenSpec{Format: testehr.JWT, Patient: "123", Aud: []string{aud}})
		r := httptest.NewRequest(http.MethodGet, "/fhir/ImagingStudy?patient=123", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		return az.Authorize(r)
	}
	p, err := call("https://imaging.example.org/ehr/fhir")
	if err != nil {
		t.Fatalf("token for this route refused: %v", err)
	}
	keys, err := az.PatientKeys(t.Context(), p)
	if err != nil || !slices.Equal(keys, []pacskey.PatientKey{"M-1"}) {
		t.Fatalf("keys %v %v", keys, err)
	}
	_, err = call("https://imaging.example.org/other/fhir")
	var ae *authz.Error
	if !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("token for another route: %v", err)
	}
}

func TestSmartAuthzProvisionErrors(t *testing.T) {
	for name, raw := range map[string]string{
		"no base":              `{"client_id":"gw","client_secret":"x"}`,
		"jwt without audience": `{"fhir_base_url":"https://ehr.example.org/fhir","client_secret":"x","client_id":"gw","validation":"jwt"}`,
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			route := `{"authz": {"kind": "smart-on-fhir", ` + raw[1:] + `, "images": {"kind": "folder", "root": "` + t.TempDir() + `"}}`
			_, err := ctx.LoadModuleByID("http.handlers.smart_imaging", json.RawMessage(route))
			if err == nil {
				t.Fatal("accepted")
			}
			if name == "jwt without audience" && !strings.Contains(err.Error(), "base_url") {
				t.Errorf("error %v does not say how to fix it", err)
			}
		})
	}
}

// TestSmartAuthzIGOptions parses the options of the IG's authorization
// rules: cache_ttl 0, backend_client blocks, and refuses their mistakes.
func TestSmartAuthzIGOptions(t *testing.T) {
	d := caddyfile.NewTestDispenser(`smart-on-fhir https://ehr.example.org/fhir {
		cache_ttl 0
		backend_client registry-sync {
			patients 123 456
			patients 789
		}
		backend_client research {
			all_patients
		}
	}`)
	var m SmartAuthz
	if err := m.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	c := m.Config
	if c.CacheTTL == nil || *c.CacheTTL != 0 {
		t.Errorf("cache_ttl 0 parsed as %v", c.CacheTTL)
	}
	want := []smart.BackendClient{
		{ClientID: "registry-sync", Patients: []string{"123", "456", "789"}},
		{ClientID: "research", AllPatients: true},
	}
	if len(c.BackendClients) != 2 || c.BackendClients[0].ClientID != want[0].ClientID ||
		!slices.Equal(c.BackendClients[0].Patients, want[0].Patients) || c.BackendClients[1].ClientID != "research" || !c.BackendClients[1].AllPatients {
		t.Errorf("backend clients %+v, want %+v", c.BackendClients, want)
	}
	for input, want := range map[string]string{
		"smart-on-fhir {\ncache_ttl -1s\n}":                                   "cache_ttl",
		"smart-on-fhir {\nbackend_client a {\npatinets 1\n}\n}":               "known: patients, all_patients",
		"smart-on-fhir {\nbackend_client a {\n}\n}":                           "either patients",
		"smart-on-fhir {\nbackend_client a {\npatients 1\nall_patients\n}\n}": "either patients",
		"smart-on-fhir {\nbackend_client {\npatients 1\n}\n}":                 "wrong argument count",
		"smart-on-fhir {\nbackend_client a b {\npatients 1\n}\n}":             "wrong argument count",
	} {
		var m SmartAuthz
		err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one naming %q", input, err, want)
		}
	}
	// Provisioning refuses what parsing cannot see.
	for _, bad := range [][]smart.BackendClient{
		{{ClientID: "a", Patients: []string{"ok"}}, {ClientID: "a", AllPatients: true}},
		{{ClientID: "a", Patients: []string{"not an id"}}},
	} {
		cfg := smart.Config{FHIRBaseURL: "https://ehr.example.org/fhir", ClientID: "gw", ClientSecret: "s", BackendClients: bad}
		if _, err := smart.New(t.Context(), cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "backend_client") {
			t.Errorf("%+v: error %v", bad, err)
		}
	}
}

// TestStudyTokenBindingOption parses study_token_binding.
func TestStudyTokenBindingOption(t *testing.T) {
	for input, want := range map[string]string{
		"smart_imaging {\nstudy_token_binding grant\n}": "",
		"smart_imaging {\nstudy_token_binding token\n}": "",
		"smart_imaging {\nstudy_token_binding user\n}":  "token or grant",
		"smart_imaging {\nstudy_token_binding\n}":       "wrong argument count",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if want == "" {
			if err != nil || h.StudyTokenBinding == "" {
				t.Errorf("%s: %v, binding %q", input, err, h.StudyTokenBinding)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one naming %q", input, err, want)
		}
	}
}
