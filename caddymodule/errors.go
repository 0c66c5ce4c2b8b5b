package caddymodule

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/internal/fhir"
)

// problem is a refusal or failure on its way to the client as a FHIR
// OperationOutcome.
type problem struct {
	Status     int
	Code       string // FHIR issue code
	Message    string
	Challenge  string // WWW-Authenticate
	RetryAfter time.Duration
	Err        error // cause, for logs only
}

func (p *problem) Error() string {
	if p.Err != nil {
		return p.Message + ": " + p.Err.Error()
	}
	return p.Message
}

func (p *problem) Unwrap() error { return p.Err }

// toProblem turns any error from the authorizer or the image source into a
// problem. Unknown errors become a 502: they come from an upstream.
func toProblem(err error) *problem {
	var p *problem
	if errors.As(err, &p) {
		return p
	}
	var ae *authz.Error
	if errors.As(err, &ae) {
		return &problem{Status: ae.Status, Code: ae.Code, Message: ae.Message, Challenge: ae.Challenge, RetryAfter: ae.RetryAfter, Err: ae.Err}
	}
	if se, ok := imagesource.AsError(err); ok {
		return &problem{Status: se.Status, Code: se.Code, Message: se.Message, RetryAfter: se.RetryAfter, Err: se.Err}
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

// noRedirects makes an http.Client return a redirect as the answer instead
// of following it: the gateway talks to the PACS and the EHR at the URLs it
// was configured with, never at a host an upstream names.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
