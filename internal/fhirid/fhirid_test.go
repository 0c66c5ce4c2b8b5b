package fhirid

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	valid := []string{"123", "a", "Patient-1", "87a339d0-8cae-418e-89c7-8651e6aab3c6", "1.2.840.10008", ".a", "a..b", "..a", "-", strings.Repeat("x", MaxLen)}
	for _, s := range valid {
		if !Valid(s) {
			t.Errorf("Valid(%q) = false, want true", s)
		}
	}
	invalid := []string{"", ".", "..", "...", strings.Repeat("x", MaxLen+1), "a/b", "a b", "a_b", "a%2F", "é", "a\x00", "Patient/1", "a|b"}
	for _, s := range invalid {
		if Valid(s) {
			t.Errorf("Valid(%q) = true, want false", s)
		}
	}
}
