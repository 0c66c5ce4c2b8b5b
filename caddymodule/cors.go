package caddymodule

import (
	"net/http"
	"slices"
	"strings"
)

// corsPolicy answers browser apps on FHIR and WADO alike.
type corsPolicy struct {
	any     bool
	origins []string
}

func newCORSPolicy(origins []string) *corsPolicy {
	if len(origins) == 0 {
		return nil
	}
	return &corsPolicy{any: slices.Contains(origins, "*"), origins: origins}
}

const (
	corsAllowHeaders  = "Authorization, Accept, Content-Type, Prefer"
	corsExposeHeaders = "Content-Type, Content-Length, Content-Location, Location, WWW-Authenticate, Retry-After"
	corsAllowMethods  = "GET, HEAD, OPTIONS"
)

// apply sets the CORS headers of a response to an allowed origin. It
// reports whether the request was a preflight, which it answered.
func (c *corsPolicy) apply(w http.ResponseWriter, r *http.Request) (preflight bool) {
	if c == nil {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	h := w.Header()
	h.Add("Vary", "Origin")
	allowed := c.any || slices.Contains(c.origins, origin)
	if allowed {
		if c.any {
			h.Set("Access-Control-Allow-Origin", "*")
		} else {
			h.Set("Access-Control-Allow-Origin", origin)
		}
		h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
	}
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		return false
	}
	if allowed {
		h.Set("Access-Control-Allow-Methods", corsAllowMethods)
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", "3600")
	}
	w.WriteHeader(http.StatusNoContent)
	return true
}

// validOrigin reports whether s is "*" or a scheme://host[:port] origin.
func validOrigin(s string) bool {
	if s == "*" {
		return true
	}
	scheme, rest, ok := strings.Cut(s, "://")
	return ok && (scheme == "http" || scheme == "https") && rest != "" && !strings.ContainsAny(rest, "/?#* ")
}
