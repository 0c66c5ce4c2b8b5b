// Package pacskey is the PACS patient key: the exact PatientID value under
// which a PACS files a patient's studies. authz produces keys from what the
// EHR says about the caller's patient; imagesource consumes them to find
// studies. Neither of those packages imports the other: both import this
// leaf.
package pacskey

import (
	"errors"
	"fmt"
	"strings"
)

// PatientKey is a PACS PatientID value that a QIDO-RS server can only read
// as one exact value. Values of this type come from Parse (or are checked
// with it again by a source before use).
type PatientKey string

// MaxLen is the longest key: PatientID is an LO, at most 64 characters.
const MaxLen = 64

// ErrUnusable is what every Parse refusal is (errors.Is); the refusal's
// own text says why.
var ErrUnusable = errors.New("unusable patient key")

// refusal is a Parse error: its message, and ErrUnusable for errors.Is.
type refusal string

func (r refusal) Error() string        { return string(r) }
func (r refusal) Is(target error) bool { return target == ErrUnusable }

func refuse(format string, args ...any) error { return refusal(fmt.Sprintf(format, args...)) }

// Parse refuses a PACS patient key that a QIDO-RS server could read as more
// than one exact value: empty or blank values (universal match), wildcards
// (* and ?), value lists (,), escapes and multi-value separators (\), URL
// syntax (% & = #), control characters and overlong values.
func Parse(s string) (PatientKey, error) {
	if strings.TrimSpace(s) == "" {
		return "", refuse("patient key is empty")
	}
	if len(s) > MaxLen {
		return "", refuse("patient key is longer than %d characters", MaxLen)
	}
	for _, c := range s {
		switch {
		case c == '*' || c == '?' || c == ',' || c == '\\' || c == '%' || c == '&' || c == '=' || c == '#':
			return "", refuse("patient key contains %q, which a PACS may treat as a pattern", c)
		case c < 0x20 || c == 0x7f:
			return "", refuse("patient key contains a control character")
		}
	}
	return PatientKey(s), nil
}

// Check reports Parse's refusal of s, if any.
func Check(s string) error {
	_, err := Parse(s)
	return err
}

// String is the key's value.
func (k PatientKey) String() string { return string(k) }

// Interface guards
var (
	_ fmt.Stringer = PatientKey("")
	_ error        = refusal("")
)
