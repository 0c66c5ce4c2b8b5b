package caddymodule

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/smart-imaging/smart_imaging/internal/fhir"
)

// smartConfigurer is implemented by authorizers that can describe the
// authorization server in a SMART configuration document.
type smartConfigurer interface {
	SMARTConfiguration(ctx context.Context) (map[string]any, error)
}

// serveMetadata answers GET /fhir/metadata with the CapabilityStatement. It
// needs no token.
func (h *Handler) serveMetadata(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return h.fail(w, r, &problem{Status: http.StatusMethodNotAllowed, Code: "not-supported", Message: "metadata supports GET only"})
	}
	opts := fhir.CapabilityOptions{BaseURL: h.publicBase(r) + "/fhir", CORS: h.cors != nil}
	var doc map[string]any
	if sc, ok := h.authorizer.(smartConfigurer); ok {
		doc, _ = sc.SMARTConfiguration(r.Context())
	} else if as, ok := h.authorizer.(routeAuthServer); ok {
		doc = as.RouteSMARTConfiguration(h.publicBase(r))
	}
	opts.AuthorizeURL, _ = doc["authorization_endpoint"].(string)
	opts.TokenURL, _ = doc["token_endpoint"].(string)
	opts.IntrospectURL, _ = doc["introspection_endpoint"].(string)
	opts.RevokeURL, _ = doc["revocation_endpoint"].(string)
	fhir.WriteJSON(w, http.StatusOK, fhir.NewCapabilityStatement(opts))
	return nil
}

// serveSMARTConfiguration answers GET /fhir/.well-known/smart-configuration
// with the authorization server's endpoints, so a SMART client can discover
// the imaging server on its own.
func (h *Handler) serveSMARTConfiguration(w http.ResponseWriter, r *http.Request) error {
	sc, ok := h.authorizer.(smartConfigurer)
	if !ok {
		return h.fail(w, r, &problem{Status: http.StatusNotFound, Code: "not-found",
			Message: "this route has no SMART authorization server (authz mock)"})
	}
	doc, err := sc.SMARTConfiguration(r.Context())
	if err != nil {
		return h.fail(w, r, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	return json.NewEncoder(w).Encode(doc)
}
