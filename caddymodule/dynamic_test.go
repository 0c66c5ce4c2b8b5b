package caddymodule

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/authz/smart"
	"github.com/smart-imaging/smart_imaging/internal/dynconfig"
)

func TestDynamicConfigCaddyfile(t *testing.T) {
	parse := func(block string) (*Handler, error) {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("smart_imaging {\n\tdynamic_config {\n" + block + "\n\t}\n}"))
		return &h, err
	}
	h, err := parse(`allow_hosts pacs:8042 ehr.example.org
		allow_ehr_hosts ehr2.example.org
		allow_pacs_hosts pacs2:8042
		credentials pacs:8042 basic u p
		credentials ehr.example.org private_key gw /k.jwk
		allow_url_credentials
		authz smart-on-fhir {
			mrn_system urn:a urn:b
			patient_claim fhirUser
		}`)
	if err != nil {
		t.Fatal(err)
	}
	d := h.Dynamic
	if strings.Join(d.AllowEHRHosts, " ") != "ehr2.example.org" || strings.Join(d.AllowPACSHosts, " ") != "pacs2:8042" {
		t.Errorf("role lists: %q %q", d.AllowEHRHosts, d.AllowPACSHosts)
	}
	if !d.AllowURLCredentials || len(d.Credentials) != 2 || d.SMART == nil || strings.Join(d.SMART.MRNSystem, " ") != "urn:a urn:b" || d.SMART.PatientClaim != "fhirUser" {
		t.Errorf("parsed %+v (policy %+v)", d, d.SMART)
	}
	if c := d.Credentials[1]; c.Host != "ehr.example.org" || c.Kind != dynconfig.CredPrivateKey || c.ClientID != "gw" || c.PrivateKey != "/k.jwk" {
		t.Errorf("credential %+v", c)
	}

	for _, x := range []struct{ block, want string }{
		{"allow_hosts a\n credentials a digest u p", "credentials <host[:port]> basic"},
		{"allow_hosts a\n credentials a basic u", "credentials <host[:port]> basic"},
		{"allow_hosts a\n credentials a", "credentials <host[:port]> basic"},
		{"allow_hosts a\n allow_url_credentials yes", "wrong argument count"},
		{"allow_hosts a\n authz mock {\n}", "authz smart-on-fhir"},
		{"allow_hosts a\n authz smart-on-fhir {\n fhir_base_url https://ehr/fhir\n}", "fhir_base_url is not part of the policy"},
		{"allow_hosts a\n authz smart-on-fhir {\n client_secret s\n}", "client_secret is not part of the policy"},
		{"allow_hosts a\n authz smart-on-fhir {\n validation jwt\n}", "needs audience"},
		{"allow_hosts a\n authz smart-on-fhir {\n mrn_systen x\n}", "unrecognized"},
		{"allow_hosts a\n authz smart-on-fhir {\n}\n authz smart-on-fhir {\n}", "already set"},
		{"allow_hosts a\n mrn_system x", "known: allow_hosts, allow_ehr_hosts, allow_pacs_hosts, credentials"},
	} {
		if _, err := parse(x.block); err == nil || !strings.Contains(err.Error(), x.want) {
			t.Errorf("%q: error %v, want %q", x.block, err, x.want)
		}
	}
}

func TestNewDynamicTenantsChecksThePolicy(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	parent := &Handler{ttl: time.Hour, logger: zap.NewNop()}
	t.Setenv("SIA_TEST_PACS_PASSWORD", "pw")
	good := DynamicConfig{
		AllowHosts:  []string{"pacs:8042", "ehr.example.org"},
		Credentials: []dynconfig.Credential{{Host: "pacs:8042", Kind: dynconfig.CredBasic, Username: "u", Password: "{env.SIA_TEST_PACS_PASSWORD}"}},
		SMART:       &smart.Config{MRNSystem: []string{"urn:a"}},
	}
	d, err := newDynamicTenants(ctx, parent, good)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.policy.Credentials[0].Password; got != "pw" {
		t.Errorf("the credential's placeholder resolved to %q", got)
	}
	if d.policy.MaxStudyTokenTTL != time.Hour || d.maxConfigs != 32 {
		t.Errorf("defaults: ttl %s, max configs %d", d.policy.MaxStudyTokenTTL, d.maxConfigs)
	}

	for name, mutate := range map[string]func(c *DynamicConfig){
		"no hosts":                 func(c *DynamicConfig) { c.AllowHosts = nil },
		"credentials off the list": func(c *DynamicConfig) { c.Credentials[0].Host = "elsewhere:8042" },
		"an unset variable":        func(c *DynamicConfig) { c.Credentials[0].Password = "{env.SIA_TEST_UNSET_VARIABLE}" },
		"a key file that is not there": func(c *DynamicConfig) {
			c.Credentials = append(c.Credentials, dynconfig.Credential{Host: "ehr.example.org", Kind: dynconfig.CredPrivateKey, ClientID: "gw", PrivateKey: "/nonexistent/backend.jwk"})
		},
		"the EHR in the policy": func(c *DynamicConfig) { c.SMART = &smart.Config{FHIRBaseURL: "https://ehr.example.org/fhir"} },
		"jwt without audience":  func(c *DynamicConfig) { c.SMART = &smart.Config{JWKSURL: "https://ehr.example.org/jwks"} },
	} {
		c := good
		c.Credentials = append([]dynconfig.Credential(nil), good.Credentials...)
		mutate(&c)
		if _, err := newDynamicTenants(ctx, parent, c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
