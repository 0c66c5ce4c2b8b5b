package caddymodule

import (
	"context"
	"net/http"
	"time"

	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/internal/fhir"
)

// checker is implemented by authorizers and image sources that can test
// their upstream cheaply (one QIDO, one discovery fetch).
type checker interface {
	Check(ctx context.Context) error
}

// readinessTimeout bounds the whole readiness check.
const readinessTimeout = 5 * time.Second

// serveLive answers GET /health/live: the process serves requests. It
// touches nothing upstream, so a load balancer may call it often.
func (h *Handler) serveLive(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	fhir.WriteJSON(w, http.StatusOK, fhir.NewOperationOutcome("information", "informational", "live"))
	return nil
}

// serveReady answers GET /health/ready: the study token key is usable, and
// the image source and the authorization server answer. Each failure is one
// issue in the OperationOutcome; credentials never appear.
func (h *Handler) serveReady(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), readinessTimeout)
	defer cancel()
	oo := fhir.OperationOutcome{}
	add := func(severity, code, msg string) {
		oo.Issue = append(oo.Issue, fhir.NewOperationOutcome(severity, code, msg).Issue...)
	}
	ok := true
	if _, err := h.keys.Mint(selfTestClaims()); err != nil {
		ok = false
		add("fatal", "exception", "study token key: "+err.Error())
	} else {
		add("information", "informational", "study token key: ok (key id "+h.keys.CurrentKeyID()+")")
	}
	for _, part := range []struct {
		name string
		c    any
	}{{"image source", h.source}, {"authorization server", h.authorizer}} {
		c, can := part.c.(checker)
		if !can {
			add("information", "informational", part.name+": nothing to check")
			continue
		}
		if err := c.Check(ctx); err != nil {
			ok = false
			add("error", "transient", part.name+": "+toProblem(err).Message)
			continue
		}
		add("information", "informational", part.name+": ok")
	}
	status := http.StatusOK
	if !ok {
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "5")
	}
	w.Header().Set("Cache-Control", "no-store")
	fhir.WriteJSON(w, status, oo)
	return nil
}

func selfTestClaims() studytoken.Claims {
	now := time.Now()
	return studytoken.Claims{StudyUID: "1.2.3", Route: "self-test", IssuedAt: now, Expiry: now.Add(time.Minute)}
}
