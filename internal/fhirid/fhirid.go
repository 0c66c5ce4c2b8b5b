// Package fhirid is the one rule for a FHIR logical id, as the gateway
// accepts one from a configuration, an access token, a search or a DICOM
// UID: the FHIR id datatype, [A-Za-z0-9\-\.]{1,64}, except ids made of dots
// only ("." and ".." and longer runs). FHIR's grammar allows those, but an
// id becomes a URL path segment ({fhir_base}/Patient/{id}), where "." and
// ".." mean the current and the parent directory: no real server issues
// them, and accepting them would let an id walk out of the Patient
// resource. Every id the gateway takes in passes Valid.
package fhirid

// MaxLen is the longest FHIR id.
const MaxLen = 64

// Valid reports whether s is a FHIR id under the rule above.
func Valid(s string) bool {
	if s == "" || len(s) > MaxLen {
		return false
	}
	onlyDots := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
		onlyDots = onlyDots && c == '.'
	}
	return !onlyDots
}
