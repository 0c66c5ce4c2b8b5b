package dwroot

import (
	"net/url"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/pacskey"
)

// FuzzParse: no path or query panics, and no accepted query lets a
// PatientID other than the caller's keys through Restrict, or carries a
// wildcard in an identifying key.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"studies", "studies/1.2/series", "studies/1.2/series/3.4/instances", "x/../studies"} {
		f.Add(s, "PatientID=MRN-1&limit=10")
	}
	f.Add("studies", "PatientID=*&AccessionNumber=A%5CB")
	f.Add("series", "00100020=MRN-2&StudyDate=20200101-")
	f.Fuzz(func(t *testing.T, path, query string) {
		_, _ = ParseSearch(path)
		v, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		p, err := ParseParams(v)
		if err != nil {
			return
		}
		keys := []pacskey.PatientKey{"MRN-1"}
		for _, k := range p.Restrict(keys) {
			if k != "MRN-1" {
				t.Fatalf("Restrict let %q through", k)
			}
		}
		if strings.ContainsAny(p.Accession+p.Modality, "*?\\,") {
			t.Fatalf("a pattern was accepted: %+v", p)
		}
		if p.Limit < 1 || p.Limit > MaxLimit || p.Offset < 0 {
			t.Fatalf("limit/offset out of bounds: %+v", p)
		}
	})
}
