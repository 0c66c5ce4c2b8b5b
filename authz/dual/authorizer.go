package dual

import (
	"context"
	"errors"
	"github.com/smart-imaging/smart_imaging/pacskey"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
)

// Capability strings published in the route's smart-configuration.
const (
	CapabilityImagingAccess = "smart-imaging-access"
	CapabilityDualLaunch    = "smart-imaging-access-dual-launch"
)

func hashToken(t string) string { return authz.HashToken(t) }

// Authorize accepts only access tokens this server issued for this route
// (their audience is the route's FHIR base, from the request's context),
// unexpired, with a patient-level ImagingStudy read scope. Failures are
// *authz.Error (401 for a missing, foreign, tampered or expired token).
func (srv *Server) Authorize(r *http.Request) (*authz.Principal, error) {
	raw := authz.BearerToken(r)
	if raw == "" {
		e := authz.Unauthorized("an access token is required", nil)
		e.Challenge = `Bearer realm="smart_imaging"`
		return nil, e
	}
	var g grant
	exp, err := srv.seal.open(purposeAccess, raw, srv.now(), &g)
	if err != nil {
		if errors.Is(err, ErrExpired) {
			return nil, authz.Unauthorized("the access token has expired", nil)
		}
		return nil, authz.Unauthorized("the access token is not valid here", nil)
	}
	want := authz.RouteFHIRBase(r.Context())
	if want == "" || g.Audience != want {
		return nil, authz.Unauthorized("the access token was issued for another imaging route", nil)
	}
	scopes := strings.Fields(g.Scope)
	if !authz.HasPatientReadScope(scopes, "ImagingStudy") {
		return nil, &authz.Error{Status: http.StatusForbidden, Code: "forbidden", Message: "the access token's scope does not allow ImagingStudy reads",
			Challenge: `Bearer error="insufficient_scope", scope="patient/ImagingStudy.rs"`}
	}
	if !isFHIRID(g.Patient) || len(g.Identifiers) == 0 {
		return nil, authz.Forbidden("the access token has no patient in context")
	}
	srv.patients.put(g.Patient, g.Identifiers, exp)
	return &authz.Principal{
		Patient:          g.Patient,
		PatientReference: srv.s.fhirBase + "/Patient/" + g.Patient,
		Scopes:           scopes,
		ClientID:         g.ClientID,
		User:             g.User,
		Expires:          exp,
		TokenHash:        authz.HashToken(raw),
	}, nil
}

// PatientKeys returns the PACS keys of the principal's patient, as read
// from the EHR when the user approved (carried in the access token).
func (srv *Server) PatientKeys(ctx context.Context, p *authz.Principal) ([]pacskey.PatientKey, error) {
	ids, err := srv.PatientIdentifiers(ctx, p)
	if err != nil {
		return nil, err
	}
	var keys []pacskey.PatientKey
	for _, id := range ids {
		k, err := pacskey.Parse(id.Value)
		if err != nil {
			continue // never a pattern; patientKeys already dropped these
		}
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// PatientIdentifiers returns the identifiers PatientKeys takes its values
// from.
func (srv *Server) PatientIdentifiers(_ context.Context, p *authz.Principal) ([]authz.Identifier, error) {
	if p == nil || p.Patient == "" {
		return nil, authz.Forbidden("the access token has no patient in context")
	}
	ids, ok := srv.patients.get(p.Patient, srv.now())
	if !ok {
		return nil, &authz.Error{Status: http.StatusServiceUnavailable, Code: "transient",
			Message: "the patient's identifiers are no longer at hand; retry", RetryAfter: time.Second}
	}
	return ids, nil
}

// SMARTConfiguration is the route's own smart-configuration: this
// server's endpoints, under base (the route's public URL).
func (srv *Server) SMARTConfiguration(base string) map[string]any {
	return map[string]any{
		"authorization_endpoint":                           base + "/oauth/authorize",
		"token_endpoint":                                   base + "/oauth/token",
		"grant_types_supported":                            []string{"authorization_code"},
		"response_types_supported":                         []string{"code"},
		"code_challenge_methods_supported":                 []string{"S256"},
		"token_endpoint_auth_methods_supported":            []string{"private_key_jwt", "none"},
		"token_endpoint_auth_signing_alg_values_supported": []string{"RS384", "ES384", "RS256", "ES256"},
		"scopes_supported":                                 []string{"launch/patient", "patient/ImagingStudy.rs", "patient/ImagingStudy.read"},
		"capabilities": []string{CapabilityImagingAccess, CapabilityDualLaunch, "launch-standalone",
			"client-public", "client-confidential-asymmetric", "context-standalone-patient",
			"permission-patient", "permission-v1", "permission-v2"},
	}
}

// Check fetches the EHR's smart-configuration again (readiness).
func (srv *Server) Check(ctx context.Context) error {
	srv.ehr.mu.Lock()
	srv.ehr.conf = nil
	srv.ehr.mu.Unlock()
	_, err := srv.ehr.discover(ctx)
	return err
}

// identCache maps a patient to the identifiers the latest access token
// for that patient carried, until that token expires. Bounded.
type identCache struct {
	mu sync.Mutex
	m  map[string]identEntry
}

type identEntry struct {
	ids []authz.Identifier
	exp time.Time
}

const maxIdentEntries = 50000

func newIdentCache() *identCache { return &identCache{m: map[string]identEntry{}} }

func (c *identCache) put(patient string, ids []authz.Identifier, exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxIdentEntries {
		now := time.Now()
		for k, e := range c.m {
			if !now.Before(e.exp) || len(c.m) >= maxIdentEntries {
				delete(c.m, k)
			}
		}
	}
	if old, ok := c.m[patient]; ok && old.exp.After(exp) && slices.Equal(old.ids, ids) {
		return
	}
	c.m[patient] = identEntry{ids: slices.Clone(ids), exp: exp}
}

func (c *identCache) get(patient string, now time.Time) ([]authz.Identifier, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[patient]
	if !ok || !now.Before(e.exp) {
		return nil, false
	}
	return slices.Clone(e.ids), true
}
