package authz

import (
	"context"
	"net/http"
	"slices"

	"github.com/smart-imaging/smart_imaging/pacskey"
)

// Token is a patient.identifier search value: system|value. HasSystem
// distinguishes "|value" (no system) from "value" (any system).
type Token struct {
	System    string
	HasSystem bool
	Value     string
}

// StudySearch is what a study search asks of the PACS, as far as patient
// binding is concerned.
type StudySearch struct {
	// PatientIdentifiers are the patient.identifier values.
	PatientIdentifiers []Token
	// AllStudies is set when the route's lookup mode returns every study
	// (lookup all-studies); otherwise studies are found by PACS key (MRN).
	AllStudies bool
}

// StudyScope is which studies a search may see: every study (All) or
// those whose PACS PatientID is one of PatientKeys.
type StudyScope struct {
	All         bool
	PatientKeys []pacskey.PatientKey
}

// PatientLookup is the part of an Authorizer that names a principal's
// patient in PACS terms.
type PatientLookup interface {
	PatientKeys(ctx context.Context, p *Principal) ([]pacskey.PatientKey, error)
	PatientIdentifiers(ctx context.Context, p *Principal) ([]Identifier, error)
}

// ScopeStudies decides which studies the principal's search may see. A
// patient-bound principal gets its patient's PACS keys, narrowed by
// patient.identifier, which must name one of the patient's own identifiers
// (system and value, FHIR token rules). An unrestricted principal gets what
// patient.identifier names, or every study under lookup all-studies; under
// studies-by-mrn with no patient.identifier it is asked for one (400).
// Refusals are *Error.
func ScopeStudies(ctx context.Context, az PatientLookup, p *Principal, s StudySearch) (StudyScope, error) {
	var scope StudyScope
	var keys []pacskey.PatientKey
	if !p.Unrestricted || !s.AllStudies && len(s.PatientIdentifiers) == 0 {
		if s.AllStudies {
			// Provision refuses this combination; never widen access.
			return scope, Forbidden("lookup all-studies needs an unrestricted route")
		}
		var err error
		keys, err = az.PatientKeys(ctx, p)
		if err != nil {
			return scope, err
		}
		if len(keys) == 0 {
			return scope, Forbidden("the patient has no identifier usable as a PACS key")
		}
	}
	if len(s.PatientIdentifiers) > 0 {
		// patient.identifier narrows to one PACS key. On a patient-bound
		// route it must name one of the patient's own identifiers, system
		// and value (FHIR token rules: system|value, |value without a
		// system, value alone under any system). An unrestricted route has
		// no patient to compare with: the value is the key.
		var idents []Identifier
		if !p.Unrestricted {
			var err error
			if idents, err = az.PatientIdentifiers(ctx, p); err != nil {
				return scope, err
			}
		}
		var wanted []pacskey.PatientKey
		for _, t := range s.PatientIdentifiers {
			key, err := pacskey.Parse(t.Value)
			if err != nil {
				return scope, &Error{Status: http.StatusBadRequest, Code: "invalid", Message: "patient.identifier: " + err.Error()}
			}
			if !p.Unrestricted && (!AnyMatchesToken(idents, t.System, t.HasSystem, t.Value) || !slices.Contains(keys, key)) {
				return scope, Forbidden("patient.identifier does not name an identifier of the patient this access token is bound to (system and value must both match)")
			}
			wanted = append(wanted, key)
		}
		keys = wanted
	}
	if len(keys) == 0 && s.AllStudies {
		scope.All = true
		return scope, nil
	}
	if len(keys) == 0 {
		return scope, &Error{Status: http.StatusBadRequest, Code: "required",
			Message: "this route looks studies up by MRN: give patient.identifier=system|MRN"}
	}
	for _, k := range keys {
		if err := pacskey.Check(string(k)); err != nil {
			return scope, Forbidden("the patient's PACS key is unusable: " + err.Error())
		}
	}
	scope.PatientKeys = keys
	return scope, nil
}

// Interface guards: every Authorizer can scope a search.
var _ PatientLookup = Authorizer(nil)
