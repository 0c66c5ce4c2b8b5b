package orthanc

import (
	"fmt"
	"strings"
	"testing"
)

// outcomeTB records whether a check skipped or failed the test, instead of
// doing either.
type outcomeTB struct {
	testing.TB
	skipped, failed string
}

func (o *outcomeTB) Helper()                           {}
func (o *outcomeTB) Skip(args ...any)                  { o.skipped = "skip" }
func (o *outcomeTB) Skipf(format string, args ...any)  { o.skipped = fmt.Sprintf(format, args...) }
func (o *outcomeTB) Fatalf(format string, args ...any) { o.failed = fmt.Sprintf(format, args...) }

// A CI run with SIA_REQUIRE_ORTHANC=1 must fail, not skip, when Orthanc is
// missing; -short still skips by design.
func TestMissingOrthancFailsWhenRequired(t *testing.T) {
	for _, c := range []struct {
		name           string
		require        string
		short, present bool
		wantFail       bool
		wantSkip       bool
	}{
		{"missing, not required", "", false, false, false, true},
		{"missing, required", "1", false, false, true, false},
		{"present, required", "1", false, true, false, false},
		{"short, required", "1", true, false, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(RequireEnv, c.require)
			t.Setenv("SIA_REQUIRE_DIMSE", "")
			o := &outcomeTB{TB: t}
			skipUnless(o, c.short, c.present)
			if (o.failed != "") != c.wantFail || (o.skipped != "") != c.wantSkip {
				t.Errorf("failed %q skipped %q, want fail %v skip %v", o.failed, o.skipped, c.wantFail, c.wantSkip)
			}
			if c.wantFail && !strings.Contains(o.failed, RequireEnv) {
				t.Errorf("failure %q does not name %s", o.failed, RequireEnv)
			}
		})
	}
}
