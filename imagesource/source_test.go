package imagesource

import (
	"errors"
	"github.com/smart-imaging/smart_imaging/pacskey"
	"testing"
)

func TestCheckObject(t *testing.T) {
	bound := Retrieval{StudyUID: "1.2.3", PatientIDs: []pacskey.PatientKey{"MRN-1", "MRN-2"}}
	open := Retrieval{StudyUID: "1.2.3", Unrestricted: true}
	for _, tc := range []struct {
		name     string
		r        Retrieval
		studies  []string
		patients []string
		ok       bool
	}{
		{"the study and a key", bound, []string{"1.2.3"}, []string{"MRN-2"}, true},
		{"padding", bound, []string{"1.2.3\x00"}, []string{" MRN-1 "}, true},
		{"another study", bound, []string{"1.2.4"}, []string{"MRN-1"}, false},
		{"a study UID prefix", bound, []string{"1.2.3.1"}, []string{"MRN-1"}, false},
		{"two study UIDs", bound, []string{"1.2.3", "1.2.3"}, []string{"MRN-1"}, false},
		{"no study UID", bound, nil, []string{"MRN-1"}, false},
		{"another patient", bound, []string{"1.2.3"}, []string{"MRN-3"}, false},
		{"PatientID in another case", bound, []string{"1.2.3"}, []string{"mrn-1"}, false},
		{"two PatientIDs", bound, []string{"1.2.3"}, []string{"MRN-1", "MRN-2"}, false},
		{"no PatientID", bound, []string{"1.2.3"}, nil, false},
		{"an empty PatientID", Retrieval{StudyUID: "1.2.3", PatientIDs: []pacskey.PatientKey{""}}, []string{"1.2.3"}, []string{""}, false},
		{"no keys (zero value denies)", Retrieval{StudyUID: "1.2.3"}, []string{"1.2.3"}, []string{"MRN-1"}, false},
		{"no study asked for", Retrieval{Unrestricted: true}, []string{""}, nil, false},
		{"unrestricted: any patient", open, []string{"1.2.3"}, []string{"ANYONE"}, true},
		{"unrestricted: no PatientID", open, []string{"1.2.3"}, nil, true},
		{"unrestricted: still the study", open, []string{"9.9"}, []string{"ANYONE"}, false},
	} {
		err := tc.r.CheckObject(tc.studies, tc.patients)
		if tc.ok != (err == nil) {
			t.Errorf("%s: err = %v", tc.name, err)
		}
		if err != nil && !errors.Is(err, ErrForeignObject) {
			t.Errorf("%s: %v does not wrap ErrForeignObject", tc.name, err)
		}
	}
}
