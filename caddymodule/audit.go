package caddymodule

import (
	"context"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/smart-imaging/smart_imaging/authz"
)

// auditRecord collects one request's decision for the audit line. It never
// holds a token: only the token's short hash.
type auditRecord struct {
	action    string // "search", "retrieve", "metadata", …
	principal *authz.Principal
	study     string
	studies   int
	allowed   bool
	reason    string
	status    int
}

type auditKey struct{}

func auditFrom(r *http.Request) *auditRecord {
	rec, _ := r.Context().Value(auditKey{}).(*auditRecord)
	if rec == nil {
		return &auditRecord{}
	}
	return rec
}

func setAuditOutcome(r *http.Request, p *problem) {
	rec := auditFrom(r)
	rec.allowed = false
	rec.reason = p.Message
	rec.status = p.Status
}

// setPrincipal records the caller for the audit line and fills Caddy's
// user placeholder, so the access log's user_id shows who asked.
func setPrincipal(r *http.Request, p *authz.Principal) {
	auditFrom(r).principal = p
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok || p == nil {
		return
	}
	user := p.User
	if user == "" {
		user = p.ClientID
	}
	repl.Set("http.auth.user.id", user)
	repl.Set("http.auth.user.client_id", p.ClientID)
	repl.Set("http.smart_imaging.patient", p.Patient)
}

// withAudit runs serve and writes one structured audit line for it.
func (h *Handler) withAudit(w http.ResponseWriter, r *http.Request, action string, serve func(http.ResponseWriter, *http.Request) error) error {
	start := time.Now()
	rec := &auditRecord{action: action, allowed: true}
	r = r.WithContext(context.WithValue(r.Context(), auditKey{}, rec))
	cw := &countingWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	// The request is counted the moment its status is committed, before
	// any of the body leaves: a client that has the answer can scrape the
	// metrics and find it counted. One that ends without writing (an error
	// for Caddy's error routes) is counted on return, also before the
	// client sees anything.
	cw.onCommit = func(status int) { h.countRequest(r, rec, status) }
	var err error
	// Logged in a defer so an aborted stream (panic ErrAbortHandler) is
	// audited too.
	defer func() { h.logDecision(r, rec, cw, err, start) }()
	err = serve(cw, r)
	return err
}

func (h *Handler) logDecision(r *http.Request, rec *auditRecord, cw *countingWriter, err error, start time.Time) {
	if err != nil && rec.reason == "" {
		rec.allowed = false
		rec.reason = err.Error()
	}
	if cw.status == 0 {
		// Nothing was written (an error left to Caddy's error routes):
		// counted now, still before the client sees anything.
		h.countRequest(r, rec, rec.status)
	} else if rec.status == 0 {
		rec.status = cw.status
	}
	ce := h.audit.Check(zapcore.InfoLevel, "decision")
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.String("route", h.route(r)),
		zap.String("action", rec.action),
		zap.Bool("allowed", rec.allowed),
		zap.Int("status", rec.status),
		zap.Int64("bytes_sent", cw.bytes),
		zap.Duration("duration", time.Since(start)),
	}
	if p := rec.principal; p != nil {
		fields = append(fields,
			zap.String("client_id", p.ClientID),
			zap.String("user", p.User),
			zap.String("patient", p.Patient),
			zap.String("token_hash", p.TokenHash))
	}
	if rec.study != "" {
		fields = append(fields, zap.String("study", rec.study))
	}
	if rec.action == "search" && rec.allowed {
		fields = append(fields, zap.Int("studies", rec.studies))
	}
	if !rec.allowed || rec.reason != "" {
		fields = append(fields, zap.String("reason", rec.reason))
	}
	ce.Write(fields...)
}

// countRequest adds one to the request counter for r with the outcome
// known so far (a refusal is recorded in rec before its answer is written).
func (h *Handler) countRequest(r *http.Request, rec *auditRecord, status int) {
	if rec.status != 0 {
		status = rec.status
	}
	metricRequests.WithLabelValues(h.metricRoute(r), rec.action, outcomeOf(status, rec.allowed), statusLabel(status)).Inc()
}

// countingWriter counts the status and body bytes of a response, and calls
// onCommit once, when the status is committed (status is then non-zero). It
// keeps http.ResponseController working (Flush) through Unwrap.
type countingWriter struct {
	*caddyhttp.ResponseWriterWrapper
	status   int
	bytes    int64
	onCommit func(status int)
}

// commit records the status of the first header or body write.
func (c *countingWriter) commit(code int) {
	c.status = code
	if c.onCommit != nil {
		c.onCommit(code)
	}
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 && code >= 200 {
		c.commit(code)
	}
	c.ResponseWriterWrapper.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.commit(http.StatusOK)
	}
	n, err := c.ResponseWriterWrapper.Write(b)
	c.bytes += int64(n)
	return n, err
}

// Interface guards
var (
	_ http.ResponseWriter                       = (*countingWriter)(nil)
	_ interface{ Unwrap() http.ResponseWriter } = (*countingWriter)(nil)
)
