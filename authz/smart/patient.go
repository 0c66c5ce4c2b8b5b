package smart

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/internal/fhirid"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// v2IdentifierType is the code system of identifier type "MR".
const v2IdentifierType = "http://terminology.hl7.org/CodeSystem/v2-0203"

// fhirPatient is the part of a FHIR Patient the gateway reads.
type fhirPatient struct {
	ResourceType string           `json:"resourceType"`
	ID           string           `json:"id"`
	Identifier   []fhirIdentifier `json:"identifier"`
}

type fhirIdentifier struct {
	Use    string           `json:"use"`
	System string           `json:"system"`
	Value  string           `json:"value"`
	Type   *fhirConceptCode `json:"type"`
}

type fhirConceptCode struct {
	Coding []struct {
		System string `json:"system"`
		Code   string `json:"code"`
	} `json:"coding"`
}

// PatientKeys returns the PACS PatientID values of the principal's patient:
// the identifiers of {fhir_base_url}/Patient/{id} whose system is one of
// mrn_system or, when mrn_system is unset, whose type is MR (identifiers
// with use "old" are skipped). Each is checked with
// pacskey.Parse. None usable: 403. Results are cached per
// patient for cache_ttl (a patient without usable identifiers for
// inactive_cache_ttl). Failures are *authz.Error.
func (a *Authorizer) PatientKeys(ctx context.Context, p *authz.Principal) ([]pacskey.PatientKey, error) {
	e, err := a.patientEntry(ctx, p)
	if err != nil {
		return nil, err
	}
	return slices.Clone(e.keys), nil
}

// PatientIdentifiers returns the identifiers PatientKeys takes its values
// from, each with its system ("" when the EHR gives none), from the same
// lookup and cache. Failures are *authz.Error.
func (a *Authorizer) PatientIdentifiers(ctx context.Context, p *authz.Principal) ([]authz.Identifier, error) {
	e, err := a.patientEntry(ctx, p)
	if err != nil {
		return nil, err
	}
	return slices.Clone(e.idents), nil
}

// patientEntry is the principal's patient's lookup, from the cache or the
// EHR. A refusal is an *authz.Error.
func (a *Authorizer) patientEntry(ctx context.Context, p *authz.Principal) (*patientEntry, error) {
	if p == nil || p.Patient == "" || !fhirid.Valid(p.Patient) {
		return nil, authz.Forbidden("the access token has no patient in context")
	}
	id := p.Patient
	if p.Backend && !p.MaySee(id) {
		return nil, authz.Forbidden("this backend client is not authorized for the patient")
	}
	if e, ok := a.patients.get(id, a.now()); ok {
		return e.result()
	}
	var callerToken string
	if a.callerTok != nil {
		ct, ok := a.callerTok.get(p.TokenHash, a.now())
		// A backend client's token has no patient: it reads the patient
		// its request named (MaySee checked above).
		if !ok || ct.patient != id && !(p.Backend && ct.patient == "") {
			return nil, &authz.Error{Status: http.StatusServiceUnavailable, Code: "transient",
				Message:    "the caller's access token is no longer at hand for the patient lookup; retry",
				RetryAfter: time.Second}
		}
		callerToken = ct.token
	}
	v, err := a.flight(ctx, "patient:"+id, func(ctx context.Context) (any, error) {
		if e, ok := a.patients.get(id, a.now()); ok {
			return e, nil
		}
		e, cache, fail := a.lookupPatient(ctx, id, callerToken)
		if fail != nil {
			a.logger.Warn("patient lookup failed", failFields(fail)...)
			return nil, fail
		}
		if cache {
			now := a.now()
			ttl := a.s.patientTTL()
			if e.deny != nil {
				ttl = a.s.inactiveTTL
			}
			a.patients.put(id, e, now.Add(ttl), now)
		}
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*patientEntry).result()
}

func (e *patientEntry) result() (*patientEntry, error) {
	if e.deny != nil {
		d := *e.deny
		return nil, &d
	}
	return e, nil
}

// lookupPatient reads the Patient and picks its PACS keys. cache reports
// whether the outcome belongs to the patient (and may be shared).
func (a *Authorizer) lookupPatient(ctx context.Context, id, callerToken string) (e *patientEntry, cache bool, fail *authz.Error) {
	const what = "FHIR server"
	u := a.s.fhirBase + "/Patient/" + url.PathEscape(id)
	for attempt := 0; ; attempt++ {
		token := callerToken
		if token == "" {
			if token, fail = a.backendToken(ctx); fail != nil {
				return nil, false, fail
			}
		}
		req, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			return nil, false, badGateway(what, "Patient URL is invalid", err)
		}
		req.Header.Set("Accept", "application/fhir+json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, fail := a.do(ctx, what, req)
		if fail != nil {
			return nil, false, fail
		}
		switch resp.status {
		case http.StatusOK:
			pat, err := parsePatient(resp.body, id)
			if err != nil {
				return nil, false, badGateway(what, "answered a Patient read with something that is not that Patient", err)
			}
			return a.selectKeys(pat), true, nil
		case http.StatusUnauthorized, http.StatusForbidden:
			if callerToken != "" {
				// The caller's token may not allow Patient reads; another
				// caller's may, so this is not cached.
				return &patientEntry{deny: authz.Forbidden("the EHR refused to read the patient with the caller's access token")}, false, nil
			}
			if attempt == 0 {
				a.dropBackendToken(token)
				continue
			}
			return nil, false, badGateway(what, fmt.Sprintf("refused the gateway's Patient read: HTTP %d", resp.status), nil)
		case http.StatusNotFound, http.StatusGone:
			return nil, false, badGateway(what, "does not know the patient in the token's context", nil)
		}
		return nil, false, statusError(what, resp.status, resp.header)
	}
}

func parsePatient(body []byte, id string) (*fhirPatient, error) {
	var p fhirPatient
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("patient JSON: %w", err)
	}
	if p.ResourceType != "Patient" {
		return nil, errors.New("resourceType is not Patient")
	}
	if p.ID != "" && p.ID != id {
		return nil, errors.New("the Patient has another id")
	}
	return &p, nil
}

// selectKeys picks the PACS keys among the patient's identifiers.
func (a *Authorizer) selectKeys(p *fhirPatient) *patientEntry {
	var keys []pacskey.PatientKey
	var idents []authz.Identifier
	matched, refused := 0, 0
	for _, ident := range p.Identifier {
		if ident.Use == "old" || !a.isMRN(ident.System, ident.Type) {
			continue
		}
		matched++
		key, err := pacskey.Parse(ident.Value)
		if err != nil {
			refused++
			continue
		}
		if !slices.Contains(keys, key) {
			keys = append(keys, key)
		}
		id := authz.Identifier{System: ident.System, Value: ident.Value}
		if !slices.Contains(idents, id) {
			idents = append(idents, id)
		}
	}
	if refused > 0 {
		// Values are PHI: only counts are logged.
		a.logger.Debug("patient identifiers refused as PACS keys", zap.Int("refused", refused), zap.Int("matched", matched))
	}
	if len(keys) == 0 {
		how := "identifier type MR"
		if len(a.s.mrnSystems) > 0 {
			how = "mrn_system " + strings.Join(a.s.mrnSystems, ", ")
		}
		msg := "the patient has no identifier usable as a PACS key (" + how + ")"
		if refused > 0 {
			msg = "the patient's identifiers (" + how + ") cannot be used as exact PACS keys"
		}
		return &patientEntry{deny: authz.Forbidden(msg)}
	}
	return &patientEntry{keys: keys, idents: idents}
}

func (a *Authorizer) isMRN(system string, typ *fhirConceptCode) bool {
	if len(a.s.mrnSystems) > 0 {
		return slices.Contains(a.s.mrnSystems, system)
	}
	if typ == nil {
		return false
	}
	for _, c := range typ.Coding {
		if c.Code == "MR" && (c.System == "" || c.System == v2IdentifierType) {
			return true
		}
	}
	return false
}
