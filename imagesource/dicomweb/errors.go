package dicomweb

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/internal/upstream"
)

// DefaultRetryAfter is passed on with a PACS's 503 that names no delay.
const DefaultRetryAfter = 5 * time.Second

// maxRetryAfter caps the delay a PACS may ask for.
const maxRetryAfter = time.Hour

// credentialsError is the answer when the PACS refuses the gateway: the
// client can do nothing about it, so it is a 502 that names the cause.
func credentialsError(status int) *imagesource.Error {
	return &imagesource.Error{
		Status:  http.StatusBadGateway,
		Code:    "exception",
		Message: fmt.Sprintf("the PACS refused the gateway's credentials (HTTP %d); check the images dicomweb basic_auth or bearer setting", status),
	}
}

// unavailableError passes a PACS's 503 on with its Retry-After.
func unavailableError(retryAfter string) *imagesource.Error {
	return &imagesource.Error{
		Status:     http.StatusServiceUnavailable,
		Code:       "transient",
		Message:    "the PACS is temporarily unavailable (HTTP 503); retry later",
		RetryAfter: parseRetryAfter(retryAfter, time.Now()),
	}
}

// parseRetryAfter reads delay-seconds or an HTTP date; DefaultRetryAfter
// when absent or unreadable, capped at an hour.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	d := DefaultRetryAfter
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	if d < time.Second {
		d = time.Second
	}
	if d > maxRetryAfter {
		d = maxRetryAfter
	}
	return d
}

// qidoStatusError maps a failed QIDO-RS answer. Every QIDO request is
// built by the gateway, so a 4xx is the gateway's or the PACS's fault: 502.
func qidoStatusError(status int, retryAfter string) *imagesource.Error {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return credentialsError(status)
	case status == http.StatusServiceUnavailable:
		return unavailableError(retryAfter)
	case status == http.StatusNotFound:
		return imagesource.Errorf(http.StatusBadGateway, "exception",
			"the PACS has no QIDO-RS service at the configured base URL (HTTP 404)")
	case status >= 500:
		return imagesource.Errorf(http.StatusBadGateway, "exception", "the PACS failed to answer the search (HTTP %d)", status)
	}
	return imagesource.Errorf(http.StatusBadGateway, "exception", "the PACS rejected the search (HTTP %d)", status)
}

// retrieveStatusError maps a failed WADO-RS answer: the client's own
// mistakes (400, 404, 406) keep their status, the PACS's become 502/503.
// detail is what the PACS said, already sanitized.
func retrieveStatusError(status int, retryAfter, detail string) *imagesource.Error {
	withDetail := func(msg string) string {
		if detail != "" {
			return msg + ": " + detail
		}
		return msg
	}
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return credentialsError(status)
	case http.StatusServiceUnavailable:
		return unavailableError(retryAfter)
	case http.StatusBadRequest:
		return &imagesource.Error{Status: http.StatusBadRequest, Code: "invalid",
			Message: withDetail("the PACS rejected the request (HTTP 400)")}
	case http.StatusNotFound, http.StatusGone:
		return imagesource.Errorf(http.StatusNotFound, "not-found",
			"the PACS has no such study, series, instance, frame or bulk data (HTTP %d)", status)
	case http.StatusNotAcceptable:
		return &imagesource.Error{Status: http.StatusNotAcceptable, Code: "not-supported",
			Message: withDetail("the PACS cannot answer in the media type the Accept header asks for (HTTP 406)")}
	}
	if status >= 500 {
		return imagesource.Errorf(http.StatusBadGateway, "exception", "the PACS failed to answer the retrieve (HTTP %d)", status)
	}
	return imagesource.Errorf(http.StatusBadGateway, "exception", "the PACS refused the retrieve (HTTP %d)", status)
}

// errorDetail extracts a short human-readable reason from a PACS error
// body: the Details or Message field of a JSON body (Orthanc), never URLs
// or anything else. Empty when there is nothing safe to show.
func errorDetail(body []byte) string {
	var e struct {
		Details string `json:"Details"`
		Message string `json:"Message"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	d := e.Details
	if d == "" {
		d = e.Message
	}
	if len(d) > 200 || strings.Contains(d, "://") {
		return ""
	}
	for _, c := range d {
		if c < 0x20 || c > 0x7e {
			return ""
		}
	}
	return d
}

// transportError maps a failure to get an answer at all. timeout is the
// bound that applied, for the message.
func transportError(ctx context.Context, err error, what string, timeout time.Duration) error {
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) && !errors.Is(context.Cause(ctx), errQIDOTimeout) {
		// The client went away: nothing to tell it.
		return fmt.Errorf("dicomweb: %s: %w", what, err)
	}
	if upstream.IsTimeout(err) || errors.Is(context.Cause(ctx), errQIDOTimeout) {
		msg := "the PACS did not answer in time"
		if timeout > 0 {
			msg = fmt.Sprintf("the PACS did not answer within %v", timeout)
		}
		return upstream.TimedOut(msg, err)
	}
	return upstream.Unreachable("the PACS could not be reached ("+describeNetError(err)+")", err)
}

// errQIDOTimeout is the cancel cause of a QIDO call that ran out of time.
var errQIDOTimeout = errors.New("QIDO-RS timeout")

// describeNetError names the cause of a network failure in a few words,
// without addresses.
func describeNetError(err error) string {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var recErr tls.RecordHeaderError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	case errors.As(err, &dnsErr):
		return "host name not found"
	case errors.As(err, &certErr), errors.As(err, &unknownCA), errors.As(err, &hostErr):
		return "its TLS certificate was not accepted"
	case errors.As(err, &recErr):
		return "TLS handshake failed: is the base URL's scheme right?"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed early"
	case strings.Contains(err.Error(), "tls:"):
		return "TLS handshake failed"
	}
	return "network error"
}
