package caddymodule

import (
	"context"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/mock"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

func init() {
	caddy.RegisterModule(MockAuthz{})
}

// MockAuthz is the "mock" authorizer: a fixed patient context for demos and
// tests, with no EHR. Any request is accepted as that patient; with
// disable_authz_checks there is no patient binding at all.
type MockAuthz struct {
	mock.Config

	impl *mock.Authorizer
	base string
}

// CaddyModule returns the Caddy module information.
func (MockAuthz) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.smart_imaging.authz.mock",
		New: func() caddy.Module { return new(MockAuthz) },
	}
}

// Provision builds the authorizer.
func (m *MockAuthz) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	cfg := m.Config
	cfg.Patient = repl.ReplaceAll(cfg.Patient, "")
	cfg.FHIRBaseURL = repl.ReplaceAll(cfg.FHIRBaseURL, "")
	cfg.MRNSystem = repl.ReplaceAll(cfg.MRNSystem, "")
	cfg.MRN = append([]string(nil), cfg.MRN...)
	for i := range cfg.MRN {
		cfg.MRN[i] = repl.ReplaceAll(cfg.MRN[i], "")
	}
	impl, err := mock.New(cfg)
	if err != nil {
		return fmt.Errorf("authz mock: %w", err)
	}
	m.impl, m.base = impl, cfg.FHIRBaseURL
	return nil
}

// Authorize implements authz.Authorizer.
func (m *MockAuthz) Authorize(r *http.Request) (*authz.Principal, error) {
	return m.impl.Authorize(r)
}

// PatientKeys implements authz.Authorizer.
func (m *MockAuthz) PatientKeys(ctx context.Context, p *authz.Principal) ([]pacskey.PatientKey, error) {
	return m.impl.PatientKeys(ctx, p)
}

// PatientIdentifiers implements authz.Authorizer.
func (m *MockAuthz) PatientIdentifiers(ctx context.Context, p *authz.Principal) ([]authz.Identifier, error) {
	return m.impl.PatientIdentifiers(ctx, p)
}

// Unrestricted reports whether patient binding is disabled.
func (m *MockAuthz) Unrestricted() bool { return m.DisableAuthzChecks }

// ChecksNoToken reports that authz mock validates no bearer token: study
// tokens on its routes are bound to its fixed grant, not to a token.
func (m *MockAuthz) ChecksNoToken() bool { return true }

// EHRBaseURL is the configured EHR FHIR base, if any.
func (m *MockAuthz) EHRBaseURL() string { return m.base }

// UnmarshalCaddyfile reads:
//
//	authz mock {
//		patient <id>
//		mrn <pacs patient id>...
//		mrn_system <identifier system of the MRNs>
//		fhir_base_url <url>
//		scopes <scope>...
//		disable_authz_checks
//	}
func (m *MockAuthz) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "mock"
	if d.NextArg() {
		return d.ArgErr()
	}
	return m.subdirectives().parseBlock(d, "authz mock")
}

// subdirectives is the table of the block's options.
func (m *MockAuthz) subdirectives() subdirectives {
	return subdirectives{
		{"patient", m.parsePatient},
		{"mrn", someArgs(&m.MRN)},
		{"mrn_system", oneArg(&m.MRNSystem)},
		{"fhir_base_url", oneArg(&m.FHIRBaseURL)},
		{"scopes", func(d *caddyfile.Dispenser) error {
			m.Scopes = append(m.Scopes, d.RemainingArgs()...)
			return nil
		}},
		{"disable_authz_checks", flag(&m.DisableAuthzChecks)},
	}
}

// parsePatient reads "patient <id>", or "patient <id> mrn <mrn>..." on one
// line, as in the demo.
func (m *MockAuthz) parsePatient(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	m.Patient = d.Val()
	for d.NextArg() {
		if d.Val() != "mrn" {
			return d.Errf("unexpected '%s' after patient id (did you mean 'mrn'?)", d.Val())
		}
		m.MRN = append(m.MRN, d.RemainingArgs()...)
		if len(m.MRN) == 0 {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Module          = (*MockAuthz)(nil)
	_ caddy.Provisioner     = (*MockAuthz)(nil)
	_ caddyfile.Unmarshaler = (*MockAuthz)(nil)
	_ AuthzModule           = (*MockAuthz)(nil)
	_ unrestricter          = (*MockAuthz)(nil)
	_ fhirBaser             = (*MockAuthz)(nil)
)
