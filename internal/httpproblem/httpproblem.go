// Package httpproblem is the one type for a refusal or failure on its way
// to the client: the HTTP status, the FHIR OperationOutcome issue code, a
// message for the client, Retry-After, a WWW-Authenticate challenge and the
// wrapped cause (for logs). Authorizers (authz.Error) and image sources
// (imagesource.Error) report it under their own names, which are aliases of
// Problem; the Caddy handler writes it as an OperationOutcome.
package httpproblem

import (
	"errors"
	"fmt"
	"time"
)

// Problem is a failure with the answer the client should get.
type Problem struct {
	// Status is the HTTP status.
	Status int
	// Code is the FHIR OperationOutcome issue code ("invalid", "login",
	// "forbidden", "not-found", "transient", "timeout", "exception", …).
	Code string
	// Message says what went wrong in words a client developer
	// understands. It never holds credentials.
	Message string
	// Challenge, when set, becomes the WWW-Authenticate header (a 401, or
	// a 403 insufficient_scope).
	Challenge string
	// RetryAfter, when set, becomes a Retry-After header (503, 504).
	RetryAfter time.Duration
	// Err is the underlying cause, for logs only.
	Err error
}

func (p *Problem) Error() string {
	if p.Err != nil {
		return fmt.Sprintf("%s: %v", p.Message, p.Err)
	}
	return p.Message
}

func (p *Problem) Unwrap() error { return p.Err }

// Errorf builds a Problem with a formatted message.
func Errorf(status int, code, format string, args ...any) *Problem {
	return &Problem{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// As finds a Problem in err's chain.
func As(err error) (*Problem, bool) {
	var p *Problem
	ok := errors.As(err, &p)
	return p, ok
}

// Interface guards
var _ error = (*Problem)(nil)
