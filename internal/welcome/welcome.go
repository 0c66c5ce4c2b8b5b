// Package welcome writes the small page a route answers at {route}/fhir
// (no resource): where its FHIR and WADO-RS bases are and how callers are
// authorized, as the reference server's welcome does. HTML for browsers,
// JSON for everything else. It holds no secret by construction: the page
// has only the fields of Page.
package welcome

import (
	"encoding/json"
	"html/template"
	"net/http"
	"strconv"
	"strings"
)

// Page is what the welcome page says about a route.
type Page struct {
	// FHIRBase is the route's public FHIR base (…/fhir).
	FHIRBase string `json:"fhir_base"`
	// WADOBase is the WADO-RS address pattern (…/wado/{study token}).
	WADOBase string `json:"wado_base"`
	// AuthMode names how callers are authorized ("smart-on-fhir", …).
	AuthMode string `json:"auth_mode"`
	// AuthNote says what that means for a caller.
	AuthNote string `json:"auth_note,omitempty"`
	// SeeAlso are the route's entry points.
	SeeAlso []string `json:"see_also"`
}

var page = template.Must(template.New("welcome").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SMART Imaging Access</title></head>
<body>
<h1>SMART Imaging Access</h1>
<dl>
<dt>FHIR base</dt><dd><code>{{.FHIRBase}}</code></dd>
<dt>WADO-RS base</dt><dd><code>{{.WADOBase}}</code></dd>
<dt>Authorization</dt><dd>{{.AuthMode}}{{if .AuthNote}}: {{.AuthNote}}{{end}}</dd>
</dl>
<ul>{{range .SeeAlso}}<li><a href="{{.}}">{{.}}</a></li>{{end}}</ul>
</body></html>
`))

// WantsHTML reports whether the request prefers HTML (a browser's Accept
// lists text/html before any JSON type).
func WantsHTML(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt := strings.ToLower(strings.TrimSpace(strings.SplitN(part, ";", 2)[0]))
		switch {
		case mt == "text/html" || mt == "application/xhtml+xml":
			return true
		case strings.Contains(mt, "json"):
			return false
		}
	}
	return false
}

// Write answers the page, in HTML when the caller prefers it.
func Write(w http.ResponseWriter, r *http.Request, p Page) {
	h := w.Header()
	h.Set("Vary", "Accept")
	h.Set("X-Content-Type-Options", "nosniff")
	var buf strings.Builder
	if WantsHTML(r) {
		_ = page.Execute(&buf, p)
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", "default-src 'none'")
	} else {
		b, _ := json.MarshalIndent(p, "", "  ")
		buf.Write(b)
		buf.WriteByte('\n')
		h.Set("Content-Type", "application/json")
	}
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(buf.String()))
	}
}
