// Package authz decides who is asking and which patient they may see: the
// Authorizer interface and its kinds, the Principal they produce, patient
// binding rules, which studies a search may see (ScopeStudies) and the
// errors they report. The study token that binds a
// WADO-RS address to one study and patient lives in authz/studytoken.
package authz

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/smart-imaging/smart_imaging/internal/fhirid"
	"github.com/smart-imaging/smart_imaging/internal/httpproblem"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// Principal is the caller as an Authorizer established it.
type Principal struct {
	// Patient is the FHIR logical id of the patient in context ("123").
	// Empty only when Unrestricted is set.
	Patient string
	// PatientReference is the absolute reference used as ImagingStudy.subject
	// ("https://ehr.example.org/fhir/Patient/123"), or "Patient/123" when the
	// authorizer knows no FHIR base.
	PatientReference string
	// Unrestricted is set by routes configured with disable_authz_checks:
	// no patient binding at all (open demos).
	Unrestricted bool
	// Scopes are the granted scopes.
	Scopes []string
	// ClientID is the OAuth client that obtained the token.
	ClientID string
	// User is the end user (fhirUser or sub), for audit.
	User string
	// Expires is when the access token expires (zero: unknown).
	Expires time.Time
	// TokenHash is a short, non-reversible hash of the access token, safe to
	// log; empty when no token was presented.
	TokenHash string
	// Backend is set for a SMART Backend Services client: system scopes,
	// no patient in context. Patient is then empty until a request names
	// one it may see (ForPatient).
	Backend bool
	// Patients are the FHIR ids a backend client may see (its configured
	// backend_client list); AllPatients lets it see any patient.
	Patients    []string
	AllPatients bool
	// Modalities, when not nil, restrict what the principal sees to
	// studies with one of these DICOM modalities (SMART v2 granular
	// scopes such as patient/ImagingStudy.rs?modality=CT).
	Modalities []string
	// IgnoredScopes are granted scopes whose query the gateway does not
	// understand: they grant nothing, and refusals name them.
	IgnoredScopes []string
}

// AllowsModalities reports whether the principal's modality restriction
// (none: every study) allows a study with these modalities: one of them
// must be allowed, compared case-insensitively. A study with no known
// modality is refused to a restricted principal (deny on doubt).
func (p *Principal) AllowsModalities(study []string) bool {
	if p.Modalities == nil {
		return true
	}
	for _, m := range study {
		for _, a := range p.Modalities {
			if strings.EqualFold(m, a) {
				return true
			}
		}
	}
	return false
}

// MaySee reports whether a backend principal may see patient id.
func (p *Principal) MaySee(id string) bool {
	if !p.Backend || id == "" {
		return false
	}
	return p.AllPatients || slices.Contains(p.Patients, id)
}

// ForPatient returns a copy of a backend principal acting for the patient
// a request named (its FHIR id and absolute reference), or a 403 when the
// client may not see that patient. A patient-bound principal is returned
// as is.
func (p *Principal) ForPatient(id, reference string) (*Principal, error) {
	if !p.Backend {
		return p, nil
	}
	if !p.MaySee(id) {
		return nil, Forbidden("this backend client is not authorized for the patient in the request")
	}
	cp := *p
	cp.Patient, cp.PatientReference = id, reference
	return &cp, nil
}

// Authorizer establishes the Principal behind a request.
type Authorizer interface {
	// Authorize checks the request's credentials. Failures are *Error.
	Authorize(r *http.Request) (*Principal, error)
	// PatientKeys returns the PACS PatientID values (MRNs) of the
	// principal's patient. Failures are *Error.
	PatientKeys(ctx context.Context, p *Principal) ([]pacskey.PatientKey, error)
	// PatientIdentifiers returns the identifiers those values come from,
	// each with its system, so that patient.identifier=system|value is
	// matched on both. Failures are *Error.
	PatientIdentifiers(ctx context.Context, p *Principal) ([]Identifier, error)
}

// Identifier is a patient identifier used as a PACS key: a FHIR
// Identifier's system ("" when it has none) and value.
type Identifier struct {
	System string
	Value  string
}

// MatchesToken applies FHIR token search rules to a patient.identifier
// value: system|value needs both to match, |value an identifier without a
// system, and a value alone (hasSystem false) matches under any system.
// Values compare exactly (a PACS key is matched exactly too).
func (id Identifier) MatchesToken(system string, hasSystem bool, value string) bool {
	if id.Value != value {
		return false
	}
	return !hasSystem || id.System == system
}

// AnyMatchesToken reports whether one of ids matches the token.
func AnyMatchesToken(ids []Identifier, system string, hasSystem bool, value string) bool {
	for _, id := range ids {
		if id.MatchesToken(system, hasSystem, value) {
			return true
		}
	}
	return false
}

type routeFHIRBaseKey struct{}

// WithRouteFHIRBase returns ctx carrying the public FHIR base of the route
// that serves the request ("https://imaging.example.org/ehr/fhir"), as the
// handler derives it. An authorizer with no audience configured requires a
// token's audience, when the token or its introspection carries one, to
// name this base.
func WithRouteFHIRBase(ctx context.Context, base string) context.Context {
	return context.WithValue(ctx, routeFHIRBaseKey{}, base)
}

// RouteFHIRBase is the base WithRouteFHIRBase put in ctx, or "".
func RouteFHIRBase(ctx context.Context) string {
	s, _ := ctx.Value(routeFHIRBaseKey{}).(string)
	return s
}

// Error is an authorization failure with the status the client should
// see: 401 (code "login", with a Challenge), 403 ("forbidden", "security"),
// or an EHR failure (502, 503, 504). It is the one problem type every part
// of the gateway reports (httpproblem.Problem).
type Error = httpproblem.Problem

// Unauthorized is a 401 for a missing or invalid token.
func Unauthorized(msg string, cause error) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: "login", Message: msg, Err: cause,
		Challenge: `Bearer error="invalid_token", error_description="` + sanitizeHeader(msg) + `"`}
}

// ErrExpired is wrapped by the 401 CheckExpiry returns.
var ErrExpired = errors.New("access token expired")

// CheckExpiry refuses a principal whose access token has expired at now
// (401, WWW-Authenticate: Bearer error="invalid_token"). It runs on every
// request, cached principals included; a zero Expires (unknown, checked
// at the authorization server on each request) passes.
func CheckExpiry(p *Principal, now time.Time) error {
	if p == nil || p.Expires.IsZero() || now.Before(p.Expires) {
		return nil
	}
	return Unauthorized("the access token has expired", ErrExpired)
}

// Forbidden is a 403 for a caller who may not see what it asked for.
func Forbidden(msg string) *Error {
	return &Error{Status: http.StatusForbidden, Code: "forbidden", Message: msg}
}

func sanitizeHeader(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r < 0x20 || r > 0x7e {
			return ' '
		}
		return r
	}, s)
}

// HashToken returns a short hex digest of a token, safe for logs and cache
// keys shown to operators.
func HashToken(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:6])
}

// BearerToken extracts the bearer token from the Authorization header ("" if
// there is none). The scheme is case-insensitive (RFC 6750 / RFC 9110).
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return ""
	}
	return strings.TrimSpace(h[7:])
}

// PatientIDFromReference reduces "123", "Patient/123" or
// "https://ehr/fhir/Patient/123" to "123". fhirBase, when given, must prefix
// an absolute reference, and "Patient/" must follow it. It reports false for
// anything else (another resource type, a different server, an empty id, an
// id that is not a FHIR id by fhirid.Valid).
func PatientIDFromReference(ref, fhirBase string) (string, bool) {
	ref = strings.TrimSpace(ref)
	if strings.Contains(ref, "://") {
		if fhirBase == "" {
			return "", false
		}
		base := strings.TrimRight(fhirBase, "/") + "/"
		if !strings.HasPrefix(ref, base+"Patient/") {
			return "", false
		}
		ref = strings.TrimPrefix(ref, base)
	}
	ref = strings.TrimPrefix(ref, "Patient/")
	if !fhirid.Valid(ref) {
		return "", false
	}
	return ref, true
}

// CheckPatientParam enforces patient binding on a search parameter value:
// it must name the principal's patient. fhirBase is the EHR FHIR base for
// absolute references ("" if unknown).
func CheckPatientParam(p *Principal, value, fhirBase string) error {
	if p.Unrestricted {
		return nil
	}
	id, ok := PatientIDFromReference(value, fhirBase)
	if !ok || id != p.Patient || p.Patient == "" {
		return Forbidden("the patient in the request is not the patient this access token is bound to")
	}
	return nil
}

// HasPatientReadScope reports whether any of the granted scopes allows
// patient-level read and search of resource ("ImagingStudy"), directly or
// through "*". SMART v1 (.read, .*) and v2 forms granting both r and s (.rs,
// .cruds …) are accepted; v2 scopes with query restrictions are not.
func HasPatientReadScope(scopes []string, resource string) bool {
	for _, s := range scopes {
		ctx, rest, ok := strings.Cut(s, "/")
		if !ok || ctx != "patient" {
			continue
		}
		res, perm, ok := strings.Cut(rest, ".")
		if !ok || (res != resource && res != "*") {
			continue
		}
		if q := strings.IndexByte(perm, '?'); q >= 0 {
			// v2 scopes may carry query restrictions; we cannot honour them,
			// so such a scope does not grant unrestricted reads.
			continue
		}
		switch perm {
		case "read", "*":
			return true
		}
		if isV2Perm(perm) && strings.Contains(perm, "r") && strings.Contains(perm, "s") {
			return true
		}
	}
	return false
}

// isV2Perm reports whether perm is a SMART v2 permission string: letters of
// "cruds" in that order, each at most once.
func isV2Perm(perm string) bool {
	if perm == "" {
		return false
	}
	order := "cruds"
	last := -1
	for i := 0; i < len(perm); i++ {
		j := strings.IndexByte(order, perm[i])
		if j <= last {
			return false
		}
		last = j
	}
	return true
}
