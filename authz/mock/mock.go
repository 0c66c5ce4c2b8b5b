// Package mock is the authorizer for demos and tests: it accepts every
// request, token or not, and puts a fixed patient in context.
package mock

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/internal/fhirid"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// DefaultScopes are granted when Config.Scopes is empty.
var DefaultScopes = []string{"patient/ImagingStudy.rs"}

// Config configures the mock authorizer (authz mock { ... } in a
// Caddyfile).
type Config struct {
	// Patient is the FHIR logical id every request is bound to. Required
	// unless DisableAuthzChecks is set.
	Patient string `json:"patient,omitempty"`
	// MRN are the PACS PatientID values of that patient.
	MRN []string `json:"mrn,omitempty"`
	// MRNSystem is the identifier system of every MRN. Empty: the MRNs
	// are identifiers without a system, which patient.identifier matches
	// as "MRN" or "|MRN" but never as "system|MRN".
	MRNSystem string `json:"mrn_system,omitempty"`
	// FHIRBaseURL makes PatientReference absolute when set.
	FHIRBaseURL string `json:"fhir_base_url,omitempty"`
	// DisableAuthzChecks turns off patient binding: an open demo.
	DisableAuthzChecks bool `json:"disable_authz_checks,omitempty"`
	// Scopes granted to every caller; DefaultScopes when empty.
	Scopes []string `json:"scopes,omitempty"`
}

// Authorizer is the mock authz.Authorizer. It is immutable and safe for
// concurrent use.
type Authorizer struct {
	cfg     Config
	ref     string
	scopes  []string
	patient string
}

// New validates c and returns the authorizer.
func New(c Config) (*Authorizer, error) {
	if c.Patient == "" && !c.DisableAuthzChecks {
		return nil, errors.New("mock authorizer: patient is required unless disable_authz_checks is set")
	}
	if c.Patient != "" && !fhirid.Valid(c.Patient) {
		return nil, fmt.Errorf("mock authorizer: patient %q is not a FHIR id (letters, digits, '-' and '.', at most 64, not only dots)", c.Patient)
	}
	for _, mrn := range c.MRN {
		if err := pacskey.Check(mrn); err != nil {
			return nil, fmt.Errorf("mock authorizer: mrn %q: %w", mrn, err)
		}
	}
	if strings.ContainsAny(c.MRNSystem, "| \t\r\n") {
		// A token's system ends at its first '|': such a system could never
		// be matched.
		return nil, fmt.Errorf("mock authorizer: mrn_system %q holds '|' or white space", c.MRNSystem)
	}
	base := strings.TrimRight(c.FHIRBaseURL, "/")
	if base != "" {
		u, err := url.Parse(base)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("mock authorizer: fhir_base_url %q is not an absolute http(s) URL", c.FHIRBaseURL)
		}
	}
	a := &Authorizer{cfg: c, patient: c.Patient, scopes: slices.Clone(c.Scopes)}
	a.cfg.MRN = slices.Clone(c.MRN)
	if len(a.scopes) == 0 {
		a.scopes = slices.Clone(DefaultScopes)
	}
	if c.Patient != "" {
		a.ref = "Patient/" + c.Patient
		if base != "" {
			a.ref = base + "/" + a.ref
		}
	}
	return a, nil
}

// Authorize accepts any request. A bearer token, if present, is not checked;
// only its hash is kept for audit.
func (a *Authorizer) Authorize(r *http.Request) (*authz.Principal, error) {
	return &authz.Principal{
		Patient:          a.patient,
		PatientReference: a.ref,
		Unrestricted:     a.cfg.DisableAuthzChecks,
		Scopes:           slices.Clone(a.scopes),
		ClientID:         "mock",
		TokenHash:        authz.HashToken(authz.BearerToken(r)),
	}, nil
}

// PatientKeys returns the configured MRNs of the configured patient.
func (a *Authorizer) PatientKeys(_ context.Context, p *authz.Principal) ([]pacskey.PatientKey, error) {
	if p == nil || p.Patient == "" || p.Patient != a.patient {
		return nil, authz.Forbidden("the mock authorizer knows no MRN for this patient")
	}
	if len(a.cfg.MRN) == 0 {
		return nil, authz.Forbidden("mock patient " + a.patient + " has no MRN configured")
	}
	keys := make([]pacskey.PatientKey, len(a.cfg.MRN))
	for i, mrn := range a.cfg.MRN {
		keys[i] = pacskey.PatientKey(mrn) // checked by New
	}
	return keys, nil
}

// PatientIdentifiers returns the configured MRNs with the configured
// mrn_system ("" when none is set).
func (a *Authorizer) PatientIdentifiers(ctx context.Context, p *authz.Principal) ([]authz.Identifier, error) {
	keys, err := a.PatientKeys(ctx, p)
	if err != nil {
		return nil, err
	}
	ids := make([]authz.Identifier, len(keys))
	for i, k := range keys {
		ids[i] = authz.Identifier{System: a.cfg.MRNSystem, Value: string(k)}
	}
	return ids, nil
}

// Interface guards
var _ authz.Authorizer = (*Authorizer)(nil)
