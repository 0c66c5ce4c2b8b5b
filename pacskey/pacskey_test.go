package pacskey

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	ok := []string{"MRN-1", "SIA-MRN-0001", "a b", "Ü-1", strings.Repeat("9", MaxLen), "..", "x.y/z"}
	for _, s := range ok {
		k, err := Parse(s)
		if err != nil || string(k) != s {
			t.Errorf("Parse(%q) = %q, %v; want the key itself", s, k, err)
		}
	}
	bad := map[string]string{
		"":                            "empty",
		"   ":                         "empty",
		"MRN*":                        "pattern",
		"MRN?":                        "pattern",
		"A,B":                         "pattern",
		`A\B`:                         "pattern",
		"A%2A":                        "pattern",
		"A&PatientName=x":             "pattern",
		"A#":                          "pattern",
		"A\x00":                       "control",
		"A\nB":                        "control",
		"A\x7f":                       "control",
		strings.Repeat("9", MaxLen+1): "longer",
	}
	for s, why := range bad {
		k, err := Parse(s)
		if err == nil {
			t.Errorf("Parse(%q) = %q, want a refusal (%s)", s, k, why)
			continue
		}
		if !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), why) {
			t.Errorf("Parse(%q) error %q: want ErrUnusable saying %q", s, err, why)
		}
		if Check(s) == nil {
			t.Errorf("Check(%q) accepted what Parse refuses", s)
		}
	}
}
