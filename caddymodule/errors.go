package caddymodule

import (
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/smart-imaging/smart_imaging/internal/fhir"
	"github.com/smart-imaging/smart_imaging/internal/httpproblem"
)

// problem is a refusal or failure on its way to the client as a FHIR
// OperationOutcome: the one problem type authorizers and sources report too
// (authz.Error and imagesource.Error are the same type).
type problem = httpproblem.Problem

// toProblem finds the problem in err's chain. Errors without one become a
// 502: they come from an upstream.
func toProblem(err error) *problem {
	if p, ok := httpproblem.As(err); ok {
		return p
	}
	return &problem{Status: http.StatusBadGateway, Code: "exception", Message: "the image source failed", Err: err}
}

// fail reports a problem. When the server has handle_errors routes, the
// error is returned as a caddyhttp.HandlerError so they run (with
// {err.status_code} and {err.message}); otherwise the handler writes the
// OperationOutcome itself, so clients always get FHIR JSON.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) error {
	p := toProblem(err)
	if p.Code == "" {
		p.Code = "processing"
	}
	if p.Challenge != "" {
		w.Header().Set("WWW-Authenticate", p.Challenge)
	}
	if p.RetryAfter > 0 {
		secs := int((p.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	setAuditOutcome(r, p)
	if hasErrorRoutes(r) {
		return caddyhttp.Error(p.Status, p)
	}
	severity := "error"
	if p.Status >= 500 {
		severity = "fatal"
	}
	w.Header().Set("Cache-Control", "no-store")
	fhir.WriteJSON(w, p.Status, fhir.NewOperationOutcome(severity, p.Code, p.Message))
	return nil
}

// hasErrorRoutes reports whether the server running r has handle_errors
// routes for this request. Sites share a server per port, and each site's
// error routes are guarded by its host matchers: a site without
// handle_errors must still get the OperationOutcome, not an empty answer.
func hasErrorRoutes(r *http.Request) bool {
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if !ok || srv == nil || srv.Errors == nil {
		return false
	}
	for _, rt := range srv.Errors.Routes {
		if match, err := rt.MatcherSets.AnyMatchWithError(r); err == nil && match {
			return true
		}
	}
	return false
}
