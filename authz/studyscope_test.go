package authz

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"

	"github.com/smart-imaging/smart_imaging/pacskey"
)

// patientLookup answers for one patient with fixed identifiers and counts
// the calls, so a test sees which lookups a search needed.
type patientLookup struct {
	idents     []Identifier
	err        error
	keyCalls   int
	identCalls int
}

func (l *patientLookup) PatientKeys(context.Context, *Principal) ([]pacskey.PatientKey, error) {
	l.keyCalls++
	if l.err != nil {
		return nil, l.err
	}
	var keys []pacskey.PatientKey
	for _, id := range l.idents {
		keys = append(keys, pacskey.PatientKey(id.Value))
	}
	return keys, nil
}

func (l *patientLookup) PatientIdentifiers(context.Context, *Principal) ([]Identifier, error) {
	l.identCalls++
	return l.idents, l.err
}

func TestScopeStudies(t *testing.T) {
	const mrnSys = "urn:oid:1.2.3"
	bound := &Principal{Patient: "123"}
	open := &Principal{Unrestricted: true}
	mrn := []Identifier{{System: mrnSys, Value: "MRN-1"}, {System: "urn:other", Value: "X-9"}}
	tests := []struct {
		name    string
		p       *Principal
		idents  []Identifier
		search  StudySearch
		want    StudyScope
		status  int    // 0: no error
		code    string // FHIR issue code when status != 0
		noIdent bool   // PatientIdentifiers must not be asked
	}{
		{name: "bound: all the patient's keys", p: bound, idents: mrn,
			want: StudyScope{PatientKeys: []pacskey.PatientKey{"MRN-1", "X-9"}}, noIdent: true},
		{name: "bound: identifier narrows to one key", p: bound, idents: mrn,
			search: StudySearch{PatientIdentifiers: []Token{{System: mrnSys, HasSystem: true, Value: "MRN-1"}}},
			want:   StudyScope{PatientKeys: []pacskey.PatientKey{"MRN-1"}}},
		{name: "bound: value alone matches under any system", p: bound, idents: mrn,
			search: StudySearch{PatientIdentifiers: []Token{{Value: "X-9"}}},
			want:   StudyScope{PatientKeys: []pacskey.PatientKey{"X-9"}}},
		{name: "bound: right value, wrong system", p: bound, idents: mrn,
			search: StudySearch{PatientIdentifiers: []Token{{System: "urn:other", HasSystem: true, Value: "MRN-1"}}},
			status: http.StatusForbidden, code: "forbidden"},
		{name: "bound: |value needs an identifier without a system", p: bound, idents: mrn,
			search: StudySearch{PatientIdentifiers: []Token{{HasSystem: true, Value: "MRN-1"}}},
			status: http.StatusForbidden, code: "forbidden"},
		{name: "bound: another patient's MRN", p: bound, idents: mrn,
			search: StudySearch{PatientIdentifiers: []Token{{Value: "MRN-2"}}},
			status: http.StatusForbidden, code: "forbidden"},
		{name: "bound: wildcard identifier is invalid", p: bound, idents: mrn,
			search: StudySearch{PatientIdentifiers: []Token{{Value: "MRN*"}}},
			status: http.StatusBadRequest, code: "invalid"},
		{name: "bound: no usable key", p: bound,
			status: http.StatusForbidden, code: "forbidden"},
		{name: "bound: a key the PACS would read as a pattern", p: bound, idents: []Identifier{{Value: "A,B"}},
			status: http.StatusForbidden, code: "forbidden"},
		{name: "bound: all-studies never widens access", p: bound, idents: mrn,
			search: StudySearch{AllStudies: true},
			status: http.StatusForbidden, code: "forbidden"},
		{name: "open: all studies", p: open, search: StudySearch{AllStudies: true},
			want: StudyScope{All: true}},
		{name: "open: identifier is the key", p: open,
			search:  StudySearch{PatientIdentifiers: []Token{{System: mrnSys, HasSystem: true, Value: "ANY-1"}}},
			want:    StudyScope{PatientKeys: []pacskey.PatientKey{"ANY-1"}},
			noIdent: true},
		{name: "open: by MRN without identifier uses the configured keys", p: open, idents: mrn,
			want: StudyScope{PatientKeys: []pacskey.PatientKey{"MRN-1", "X-9"}}},
		{name: "open: by MRN with neither identifier nor keys", p: open,
			status: http.StatusForbidden, code: "forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &patientLookup{idents: tt.idents}
			got, err := ScopeStudies(context.Background(), l, tt.p, tt.search)
			if tt.status != 0 {
				var ae *Error
				if !errors.As(err, &ae) || ae.Status != tt.status || ae.Code != tt.code {
					t.Fatalf("error %v, want status %d code %q", err, tt.status, tt.code)
				}
				return
			}
			if err != nil {
				t.Fatalf("error %v", err)
			}
			if got.All != tt.want.All || !slices.Equal(got.PatientKeys, tt.want.PatientKeys) {
				t.Errorf("scope %+v, want %+v", got, tt.want)
			}
			if tt.noIdent && l.identCalls != 0 {
				t.Errorf("asked for the patient's identifiers %d times, want none", l.identCalls)
			}
		})
	}
}

func TestScopeStudiesPassesLookupFailures(t *testing.T) {
	upstream := &Error{Status: http.StatusBadGateway, Code: "exception", Message: "EHR down"}
	_, err := ScopeStudies(context.Background(), &patientLookup{err: upstream}, &Principal{Patient: "1"}, StudySearch{})
	if !errors.Is(err, upstream) {
		t.Fatalf("error %v, want the lookup's own error", err)
	}
}
