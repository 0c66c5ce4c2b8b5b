package authz

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/pacskey"
)

func TestReadScopes(t *testing.T) {
	tests := []struct {
		name    string
		scopes  string
		ctx     string
		granted bool
		mods    []string // nil: every study
		ignored []string
	}{
		{name: "plain v2", scopes: "patient/ImagingStudy.rs", ctx: "patient", granted: true},
		{name: "v1 read", scopes: "patient/ImagingStudy.read", ctx: "patient", granted: true},
		{name: "wildcard", scopes: "patient/*.rs", ctx: "patient", granted: true},
		{name: "search only is not read", scopes: "patient/ImagingStudy.s", ctx: "patient"},
		{name: "wrong context", scopes: "system/ImagingStudy.rs", ctx: "patient"},
		{name: "system", scopes: "system/ImagingStudy.rs", ctx: "system", granted: true},
		{name: "one modality", scopes: "patient/ImagingStudy.rs?modality=CT", ctx: "patient", granted: true, mods: []string{"CT"}},
		{name: "system|code and a list", scopes: "patient/ImagingStudy.rs?modality=http://dicom.nema.org/resources/ontology/DCM|mr,US",
			ctx: "patient", granted: true, mods: []string{"MR", "US"}},
		{name: "union of scopes", scopes: "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?modality=MR", ctx: "patient",
			granted: true, mods: []string{"CT", "MR"}},
		{name: "an unrestricted scope wins", scopes: "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.read", ctx: "patient", granted: true},
		{name: "unknown query grants nothing", scopes: "patient/ImagingStudy.rs?status=available", ctx: "patient",
			ignored: []string{"patient/ImagingStudy.rs?status=available"}},
		{name: "modality plus another parameter", scopes: "patient/ImagingStudy.rs?modality=CT&status=final", ctx: "patient",
			ignored: []string{"patient/ImagingStudy.rs?modality=CT&status=final"}},
		{name: "another code system", scopes: "patient/ImagingStudy.rs?modality=http://loinc.org|CT", ctx: "patient",
			ignored: []string{"patient/ImagingStudy.rs?modality=http://loinc.org|CT"}},
		{name: "empty modality", scopes: "patient/ImagingStudy.rs?modality=", ctx: "patient",
			ignored: []string{"patient/ImagingStudy.rs?modality="}},
		{name: "query on a wildcard", scopes: "patient/*.rs?modality=CT", ctx: "patient", ignored: []string{"patient/*.rs?modality=CT"}},
		{name: "ignored next to a granted one", scopes: "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?category=x", ctx: "patient",
			granted: true, mods: []string{"CT"}, ignored: []string{"patient/ImagingStudy.rs?category=x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := ReadScopes(strings.Fields(tt.scopes), tt.ctx, "ImagingStudy")
			if g.Granted != tt.granted || !slices.Equal(g.Modalities, tt.mods) || (g.Modalities == nil) != (tt.mods == nil) ||
				!slices.Equal(g.Ignored, tt.ignored) {
				t.Fatalf("got %+v, want granted %v modalities %v ignored %v", g, tt.granted, tt.mods, tt.ignored)
			}
		})
	}
}

// identLookup is a PatientLookup over fixed identifiers per patient id.
type identLookup map[string][]Identifier

func (f identLookup) PatientKeys(_ context.Context, p *Principal) ([]pacskey.PatientKey, error) {
	var out []pacskey.PatientKey
	for _, id := range f[p.Patient] {
		out = append(out, pacskey.PatientKey(id.Value))
	}
	return out, nil
}

func (f identLookup) PatientIdentifiers(_ context.Context, p *Principal) ([]Identifier, error) {
	ids, ok := f[p.Patient]
	if !ok {
		return nil, Forbidden("no such patient")
	}
	return ids, nil
}

// A backend client acts only for patients on its list, and must name one.
func TestActFor(t *testing.T) {
	const base = "https://ehr.example.org/fhir"
	lookup := identLookup{
		"p1": {{System: "urn:mrn", Value: "MRN-1"}},
		"p2": {{System: "urn:mrn", Value: "MRN-2"}},
		"p3": {{System: "urn:mrn", Value: "MRN-3"}},
	}
	listed := &Principal{Backend: true, Patients: []string{"p1", "p2"}}
	all := &Principal{Backend: true, AllPatients: true}
	tok := func(v string) []Token { return []Token{{System: "urn:mrn", HasSystem: true, Value: v}} }
	tests := []struct {
		name     string
		p        *Principal
		patients []string
		idents   []Token
		want     string // patient acted for; "" refused
	}{
		{name: "listed patient by id", p: listed, patients: []string{"p2"}, want: "p2"},
		{name: "listed patient by absolute reference", p: listed, patients: []string{base + "/Patient/p1"}, want: "p1"},
		{name: "patient outside the list", p: listed, patients: []string{"p3"}},
		{name: "two different patients", p: listed, patients: []string{"p1", "p2"}},
		{name: "no patient named", p: listed},
		{name: "identifier of a listed patient", p: listed, idents: tok("MRN-2"), want: "p2"},
		{name: "identifier of a patient outside the list", p: listed, idents: tok("MRN-3")},
		{name: "all_patients by id", p: all, patients: []string{"p3"}, want: "p3"},
		{name: "all_patients by identifier alone", p: all, idents: tok("MRN-3")},
		{name: "reference to another server", p: all, patients: []string{"https://evil.example.org/fhir/Patient/p1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ActFor(context.Background(), lookup, tt.p, tt.patients, tt.idents, base)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("acting for %q, want a refusal", got.Patient)
				}
				if ae, ok := err.(*Error); !ok || ae.Status != 403 {
					t.Fatalf("error %v, want a 403", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Patient != tt.want || got.PatientReference != base+"/Patient/"+tt.want || !got.Backend {
				t.Fatalf("acting as %+v, want patient %s", got, tt.want)
			}
		})
	}
	// A patient-bound principal is never widened.
	app := &Principal{Patient: "p1"}
	if got, err := ActFor(context.Background(), lookup, app, []string{"p2"}, nil, base); err != nil || got != app {
		t.Fatalf("app principal: %+v, %v", got, err)
	}
	if _, err := app.ForPatient("p2", ""); err != nil {
		t.Fatal(err)
	}
	if app.MaySee("p1") {
		t.Fatal("MaySee is for backend principals only")
	}
}
