// Package upstream holds what every HTTP client of the gateway's upstreams
// (the EHR's authorization server and FHIR API, the PACS) shares: the
// keep-alive default, the refusal to follow redirects, and the one rule
// that maps an upstream the gateway could not get an answer from to a
// status:
//
//   - no answer within the time allowed: 504 Gateway Timeout, issue code
//     "timeout", with Retry-After (RetryAfter);
//   - not reachable at all (connection refused or reset, DNS failure, TLS
//     failure, host unreachable): 502 Bad Gateway, issue code "exception".
//
// An upstream that answers that it is unavailable (503) is passed on as a
// 503 by the part that talks to it; that is not this rule.
package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/smart-imaging/smart_imaging/internal/httpproblem"
)

// IdleConnTimeout is how long an idle keep-alive connection to an upstream
// is kept: below the 1 s after which Orthanc (and other servers with short
// keep-alive timeouts) close idle connections, so a request never races
// that close and fails for no reason of its own.
const IdleConnTimeout = 800 * time.Millisecond

// RetryAfter is the Retry-After sent with a 504 from an upstream timeout.
const RetryAfter = 10 * time.Second

// NewTransport is Go's default transport with the upstream keep-alive
// default (IdleConnTimeout).
func NewTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.IdleConnTimeout = IdleConnTimeout
	return t
}

// NoRedirects, as an http.Client's CheckRedirect, makes the client return a
// redirect as the answer instead of following it: the gateway talks to the
// PACS and the EHR at the URLs it was configured with, never at a host an
// upstream names.
func NoRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// IsTimeout reports whether err is a deadline or network timeout.
func IsTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TimedOut is the answer when an upstream did not answer in time: 504 with
// Retry-After. msg says which upstream ("the PACS did not answer in time").
func TimedOut(msg string, cause error) *httpproblem.Problem {
	return &httpproblem.Problem{Status: http.StatusGatewayTimeout, Code: "timeout", Message: msg,
		RetryAfter: RetryAfter, Err: cause}
}

// Unreachable is the answer when an upstream could not be reached: 502.
// msg says which upstream ("the PACS could not be reached").
func Unreachable(msg string, cause error) *httpproblem.Problem {
	return &httpproblem.Problem{Status: http.StatusBadGateway, Code: "exception", Message: msg, Err: cause}
}

// Failed maps a round trip that got no answer by the rule above: TimedOut
// with timeoutMsg when err is a timeout, else Unreachable with
// unreachableMsg.
func Failed(err error, timeoutMsg, unreachableMsg string) *httpproblem.Problem {
	if IsTimeout(err) {
		return TimedOut(timeoutMsg, err)
	}
	return Unreachable(unreachableMsg, err)
}
