package authz

import (
	"net/url"
	"strings"
)

// SystemDCM is the DICOM code system of modality codes.
const SystemDCM = "http://dicom.nema.org/resources/ontology/DCM"

// ScopeGrant is what a token's scopes grant on a resource in one SMART
// context ("patient" or "system").
type ScopeGrant struct {
	// Granted is set when some scope allows read and search.
	Granted bool
	// Modalities is nil when some scope allows every study; otherwise the
	// union of the modalities that the scopes' ?modality= queries allow.
	Modalities []string
	// Ignored are scopes of the right context and resource whose query the
	// gateway does not understand: they grant nothing (deny on doubt).
	Ignored []string
}

// ReadScopes works out what scopes grant on resource ("ImagingStudy") in
// context ("patient" or "system"). SMART v1 (.read, .*) and v2 forms that
// grant both r and s (.rs, .cruds …) count, on the resource or on "*". A
// v2 query restricts the scope: ?modality=CT or ?modality=CT,MR (codes,
// optionally with the DICOM system as system|code) limits it to studies
// of those modalities; several scopes add up. Any other query, or a query
// on "*", makes the scope grant nothing and is reported in Ignored.
func ReadScopes(scopes []string, context, resource string) ScopeGrant {
	var g ScopeGrant
	all := false
	for _, s := range scopes {
		ctx, rest, ok := strings.Cut(s, "/")
		if !ok || ctx != context {
			continue
		}
		res, perm, ok := strings.Cut(rest, ".")
		if !ok || (res != resource && res != "*") {
			continue
		}
		perm, query, hasQuery := strings.Cut(perm, "?")
		if !grantsReadSearch(perm) {
			continue
		}
		if !hasQuery {
			all, g.Granted = true, true
			continue
		}
		mods, ok := modalityQuery(query)
		if !ok || res == "*" {
			g.Ignored = append(g.Ignored, s)
			continue
		}
		g.Granted = true
		g.Modalities = append(g.Modalities, mods...)
	}
	if all {
		g.Modalities = nil
	}
	return g
}

// grantsReadSearch reports whether a scope's permission part allows read
// and search: v1 "read" or "*", or a v2 string with r and s.
func grantsReadSearch(perm string) bool {
	switch perm {
	case "read", "*":
		return true
	}
	return isV2Perm(perm) && strings.Contains(perm, "r") && strings.Contains(perm, "s")
}

// modalityQuery reads a scope query that restricts by modality and nothing
// else. ok is false for anything else, an empty value, or a code under
// another system than DICOM's.
func modalityQuery(query string) ([]string, bool) {
	q, err := url.ParseQuery(query)
	if err != nil || len(q) != 1 || len(q["modality"]) == 0 {
		return nil, false
	}
	var mods []string
	for _, v := range q["modality"] {
		for _, code := range strings.Split(v, ",") {
			if sys, c, hasSys := strings.Cut(code, "|"); hasSys {
				if sys != SystemDCM {
					return nil, false
				}
				code = c
			}
			code = strings.TrimSpace(code)
			if code == "" || !isModalityCode(code) {
				return nil, false
			}
			mods = append(mods, strings.ToUpper(code))
		}
	}
	return mods, true
}

// isModalityCode accepts what DICOM modality codes look like: up to 16
// letters, digits and underscores (a CS value).
func isModalityCode(s string) bool {
	if len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
