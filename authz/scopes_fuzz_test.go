package authz

import (
	"strings"
	"testing"
)

// FuzzReadScopes: whatever the scope string, a query other than a clean
// ?modality= list never grants, and granted modalities are codes.
func FuzzReadScopes(f *testing.F) {
	for _, s := range []string{
		"patient/ImagingStudy.rs", "patient/ImagingStudy.rs?modality=CT,MR",
		"patient/ImagingStudy.rs?modality=http://dicom.nema.org/resources/ontology/DCM|US",
		"patient/ImagingStudy.rs?modality=CT&modality=MR", "patient/ImagingStudy.rs?status=x",
		"patient/*.rs?modality=CT", "system/ImagingStudy.read?modality=%43T", "patient/ImagingStudy.rs?",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, scope string) {
		g := ReadScopes([]string{scope}, "patient", "ImagingStudy")
		_, query, hasQuery := strings.Cut(scope, "?")
		if g.Granted && hasQuery {
			if g.Modalities == nil {
				t.Fatalf("%q: a query scope granted every study", scope)
			}
			if !strings.Contains(query, "modality=") {
				t.Fatalf("%q: a query without modality granted", scope)
			}
		}
		for _, m := range g.Modalities {
			if m == "" || !isModalityCode(m) || strings.ToUpper(m) != m {
				t.Fatalf("%q: granted modality %q", scope, m)
			}
		}
		if g.Granted && len(g.Ignored) > 0 {
			t.Fatalf("%q: one scope both granted and ignored", scope)
		}
	})
}
