package authz

import (
	"context"
	"errors"
)

// maxBackendCandidates bounds how many listed patients a backend search
// by patient.identifier alone looks up to find whose identifier it is.
const maxBackendCandidates = 64

// ActFor is the principal a search acts as. A patient-bound or
// unrestricted principal is returned as is. A backend client must name
// the patient on every search: by ?patient= / ?subject= (every value the
// same patient, one it may see), or by patient.identifier alone, which
// must be an identifier of one of its listed patients (a client with
// all_patients names the patient by id). fhirBase is the EHR FHIR base.
// Refusals are *Error (403; EHR trouble keeps its status).
func ActFor(ctx context.Context, lookup PatientLookup, p *Principal, patients []string, idents []Token, fhirBase string) (*Principal, error) {
	if !p.Backend {
		return p, nil
	}
	if len(patients) > 0 {
		id := ""
		for _, v := range patients {
			got, ok := PatientIDFromReference(v, fhirBase)
			if !ok || id != "" && got != id {
				return nil, Forbidden("a backend client's search must name one patient of the EHR")
			}
			id = got
		}
		return p.ForPatient(id, patientReference(fhirBase, id))
	}
	if len(idents) == 0 {
		return nil, Forbidden("a backend client must name the patient on every search (patient, subject or patient.identifier)")
	}
	if p.AllPatients || len(p.Patients) > maxBackendCandidates {
		return nil, Forbidden("this backend client names the patient with ?patient= (its list is too long to search by identifier)")
	}
	for _, id := range p.Patients {
		cand, err := p.ForPatient(id, patientReference(fhirBase, id))
		if err != nil {
			return nil, err
		}
		have, err := lookup.PatientIdentifiers(ctx, cand)
		if err != nil {
			var ae *Error
			if errors.As(err, &ae) && ae.Status >= 500 {
				return nil, err
			}
			continue // this patient cannot be read: not the one named
		}
		all := true
		for _, t := range idents {
			all = all && AnyMatchesToken(have, t.System, t.HasSystem, t.Value)
		}
		if all {
			return cand, nil
		}
	}
	return nil, Forbidden("patient.identifier names no patient this backend client may see")
}

func patientReference(fhirBase, id string) string {
	if fhirBase == "" {
		return "Patient/" + id
	}
	return fhirBase + "/Patient/" + id
}
