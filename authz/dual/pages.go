package dual

import (
	"html/template"
	"net/http"
)

// Pages are plain HTML forms: they work without JavaScript, every value
// from the EHR or the request is escaped by html/template, and they may
// not be framed (clickjacking).

var errorTmpl = template.Must(template.New("error").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Imaging access: error</title></head>
<body><h1>Imaging access could not be authorized</h1><p>{{.}}</p></body></html>
`))

var consentTmpl = template.Must(template.New("consent").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Authorize access to imaging studies</title>
<style>body{font-family:sans-serif;max-width:36em;margin:2em auto}button{font-size:1em;margin-right:1em}</style></head>
<body>
<h1>Authorize access to imaging studies</h1>
<p>The application <strong id="client">{{.ClientID}}</strong> asks to read the imaging studies
(images and reports of studies) of</p>
<p id="patient"><strong>{{if .PatientName}}{{.PatientName}}{{else}}Patient {{.Patient}}{{end}}</strong></p>
<p>Signed in at the EHR as <span id="user">{{if .UserName}}{{.UserName}}{{else if .User}}{{.User}}{{else}}(unknown user){{end}}</span>.</p>
<p>Access requested: <code id="scope">{{.Scope}}</code></p>
<form method="post" action="decision">
<input type="hidden" name="csrf" value="{{.CSRF}}">
<button type="submit" name="decision" value="approve" id="approve">Approve</button>
<button type="submit" name="decision" value="deny" id="deny">Deny</button>
</form>
</body></html>
`))

func pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}

func errorPage(w http.ResponseWriter, status int, msg string) {
	pageHeaders(w)
	w.WriteHeader(status)
	_ = errorTmpl.Execute(w, msg)
}

func consentPage(w http.ResponseWriter, f flow) {
	pageHeaders(w)
	w.WriteHeader(http.StatusOK)
	_ = consentTmpl.Execute(w, f)
}
