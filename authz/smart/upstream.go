package smart

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/internal/upstream"
)

// maxBody bounds every response body read from the EHR.
const maxBody = 1 << 20

// retryAfter is the Retry-After sent when the EHR says it is unavailable.
const retryAfter = 10 * time.Second

// Error statuses for EHR trouble (documented in the package doc):
//
//   - the EHR answers 429/502/503/504: 503 with Retry-After;
//   - no answer within the timeout: 504 with Retry-After, and unreachable
//     (connection refused, DNS, reset): 502, by the rule every upstream
//     shares (package internal/upstream);
//   - an answer that is not what the protocol says (bad status, not JSON,
//     missing fields): 502.

// unavailable is the answer when the EHR says it is unavailable.
func unavailable(what string, err error) *authz.Error {
	return &authz.Error{Status: http.StatusServiceUnavailable, Code: "transient",
		Message: "the EHR " + what + " is unavailable", RetryAfter: retryAfter, Err: err}
}

func badGateway(what, msg string, err error) *authz.Error {
	return &authz.Error{Status: http.StatusBadGateway, Code: "exception",
		Message: "the EHR " + what + " " + msg, Err: err}
}

// transportError classifies a failed round trip (upstream.Failed).
func transportError(what string, err error) *authz.Error {
	return upstream.Failed(err, "the EHR "+what+" did not answer in time", "the EHR "+what+" is unreachable")
}

// statusError classifies an unexpected HTTP status.
func statusError(what string, status int, hdr http.Header) *authz.Error {
	err := fmt.Errorf("HTTP %d", status)
	switch status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		e := unavailable(what, err)
		if s, perr := strconv.Atoi(hdr.Get("Retry-After")); perr == nil && s > 0 && s <= 300 {
			e.RetryAfter = time.Duration(s) * time.Second
		}
		return e
	}
	return badGateway(what, fmt.Sprintf("answered HTTP %d", status), err)
}

// response is a fully read EHR answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends req with the per-call timeout and reads the (bounded) body.
func (a *Authorizer) do(ctx context.Context, what string, req *http.Request) (*response, *authz.Error) {
	ctx, cancel := context.WithTimeout(ctx, a.s.timeout)
	defer cancel()
	resp, err := a.client.Do(req.WithContext(ctx))
	if err != nil {
		return nil, transportError(what, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, transportError(what, err)
	}
	if len(body) > maxBody {
		return nil, badGateway(what, "answered with an oversized body", nil)
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: body}, nil
}
