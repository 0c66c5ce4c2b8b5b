package fhir

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
)

// NewOperationOutcome builds an OperationOutcome with one issue. severity is
// fatal, error, warning or information; code is an R4 IssueType code
// ("invalid", "login", "forbidden", "not-found", "exception", "transient",
// "timeout", …). An empty diagnostics is left out.
func NewOperationOutcome(severity, code, diagnostics string) OperationOutcome {
	return OperationOutcome{Issue: []OperationOutcomeIssue{{Severity: severity, Code: code, Diagnostics: diagnostics}}}
}

// encodeFailure is written when a value cannot be encoded; it is a constant
// so that path cannot fail again.
const encodeFailure = `{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception","diagnostics":"the server could not encode its answer"}]}` + "\n"

// WriteJSON writes v as FHIR JSON with the given status and
// Content-Type application/fhir+json; charset=utf-8. The value is encoded
// before anything is written, so an encoding failure becomes a 500
// OperationOutcome instead of a truncated body.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // URLs with & stay readable; the media type is not HTML
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(encodeFailure)
	}
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
