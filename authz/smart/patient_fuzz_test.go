package smart

import (
	"slices"
	"testing"

	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/pacskey"
)

// FuzzPatientKeys feeds Patient resources (as an EHR answers them) to the
// patient → PACS key selection: it must never panic, and every key it
// returns must be an exact key (pacskey.Parse), the value of
// an identifier of the chosen system or type MR that is not "old", listed
// once.
func FuzzPatientKeys(f *testing.F) {
	for _, seed := range []string{
		`{"resourceType":"Patient","id":"p1","identifier":[{"system":"http://hospital/mrn","value":"MRN-1","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]}}]}`,
		`{"resourceType":"Patient","id":"p1","identifier":[{"system":"http://hospital/mrn","value":"*"},{"system":"http://hospital/mrn","value":"A,B"},{"system":"http://hospital/mrn","value":"ok"}]}`,
		`{"resourceType":"Patient","id":"p1","identifier":[{"use":"old","system":"http://hospital/mrn","value":"OLD"},{"system":"http://hospital/mrn","value":""}]}`,
		`{"resourceType":"Patient","id":"p1","identifier":[{"type":{"coding":[{"code":"MR"}]},"value":"SIA-MRN-000?"},{"type":{"coding":[{"code":"MR"}]},"value":"x\\y"}]}`,
		`{"resourceType":"Patient","id":"other"}`,
		`{"resourceType":"Group","id":"p1"}`,
		`{"resourceType":"Patient","id":"p1","identifier":{"value":"x"}}`,
		`{"resourceType":"Patient","identifier":[null,{"type":null},{"type":{"coding":null}}]}`,
		`[]`, `null`, ``, `{`,
	} {
		f.Add([]byte(seed), true)
		f.Add([]byte(seed), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, bySystem bool) {
		a := &Authorizer{s: &settings{}, logger: zap.NewNop()}
		if bySystem {
			a.s.mrnSystems = []string{"http://hospital/mrn"}
		}
		p, err := parsePatient(body, "p1")
		if err != nil {
			return
		}
		if p.ID != "" && p.ID != "p1" {
			t.Fatalf("accepted a Patient with another id %q", p.ID)
		}
		e := a.selectKeys(p)
		if (e.deny == nil) == (len(e.keys) == 0) {
			t.Fatalf("want keys or a refusal, got %+v", e)
		}
		for i, k := range e.keys {
			if err := pacskey.Check(string(k)); err != nil {
				t.Fatalf("key %q is not exact: %v", k, err)
			}
			if slices.Index(e.keys, k) != i {
				t.Fatalf("key %q listed twice", k)
			}
			found := false
			for _, id := range p.Identifier {
				if id.Value == string(k) && id.Use != "old" && a.isMRN(id.System, id.Type) {
					found = true
				}
			}
			if !found {
				t.Fatalf("key %q is not the value of an eligible identifier", k)
			}
		}
	})
}
