package imagesource

import (
	"fmt"
	"strings"
)

// CheckPatientKey refuses a PACS patient key that a QIDO-RS server could
// read as more than one exact value: empty or blank values (universal
// match), wildcards (* and ?), value lists (,), escapes and multi-value
// separators (\), control characters and overlong values. PatientID is an
// LO: at most 64 characters.
func CheckPatientKey(key string) error {
	if strings.TrimSpace(key) == "" {
		return fmt.Errorf("patient key is empty")
	}
	if len(key) > 64 {
		return fmt.Errorf("patient key is longer than 64 characters")
	}
	for _, c := range key {
		switch {
		case c == '*' || c == '?' || c == ',' || c == '\\' || c == '%' || c == '&' || c == '=' || c == '#':
			return fmt.Errorf("patient key contains %q, which a PACS may treat as a pattern", c)
		case c < 0x20 || c == 0x7f:
			return fmt.Errorf("patient key contains a control character")
		}
	}
	return nil
}
