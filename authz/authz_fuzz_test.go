package authz

import (
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/internal/fhirid"
)

// FuzzPatientIDFromReference feeds patient references (search parameters,
// token claims) to the reducer: it must never panic, and what it accepts
// must be a FHIR id that the reference names exactly, on the EHR's server
// when absolute.
func FuzzPatientIDFromReference(f *testing.F) {
	const ehr = "https://ehr.example.org/fhir"
	for _, s := range []string{"123", "Patient/123", ehr + "/Patient/123", ehr + "/Patient/123/_history/1",
		"https://evil.example.org/fhir/Patient/123", "Group/123", "Patient/", "Patient/..", "..", ".", "Patient/a/b",
		" 123 ", "Patient/Patient/123", ehr + "//Patient/123", ehr + "/Patient/%2e%2e", "*", "a,b", "a\\b", "Patient/*",
		strings.Repeat("a", 65), "Patient?identifier=x", "urn:uuid:123", "http://ehr.example.org/fhir/Patient/123"} {
		f.Add(s, ehr)
		f.Add(s, "")
		f.Add(s, ehr+"/")
	}
	f.Fuzz(func(t *testing.T, ref, base string) {
		id, ok := PatientIDFromReference(ref, base)
		if !ok {
			if id != "" {
				t.Fatalf("refused %q but returned %q", ref, id)
			}
			return
		}
		if !fhirid.Valid(id) || strings.Trim(id, ".") == "" {
			t.Fatalf("accepted %q as id %q, which is not a FHIR id", ref, id)
		}
		r := strings.TrimSpace(ref)
		switch {
		case strings.Contains(r, "://"):
			if base == "" || r != strings.TrimRight(base, "/")+"/Patient/"+id {
				t.Fatalf("absolute reference %q (base %q) accepted as %q", ref, base, id)
			}
		case r != id && r != "Patient/"+id:
			t.Fatalf("reference %q accepted as %q", ref, id)
		}
	})
}
