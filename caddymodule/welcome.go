package caddymodule

import (
	"net/http"

	"github.com/smart-imaging/smart_imaging/internal/welcome"
)

// serveWelcome answers GET {route}/fhir: the route's FHIR and WADO-RS
// bases and its authorization mode (issue 18 item 5). No token needed;
// nothing in it is a secret.
func (h *Handler) serveWelcome(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return h.fail(w, r, &problem{Status: http.StatusMethodNotAllowed, Code: "not-supported",
			Message: "the welcome page supports GET only"})
	}
	base := h.publicBase(r)
	p := welcome.Page{
		FHIRBase: base + "/fhir",
		WADOBase: base + "/wado/{study token}",
		SeeAlso:  []string{base + "/fhir/metadata", base + "/fhir/ImagingStudy?patient={id}"},
	}
	switch a := h.authorizer.(type) {
	case *MockAuthz:
		p.AuthMode = "mock"
		p.AuthNote = "demo: no access token is checked; every caller is the configured patient"
		if a.Unrestricted() {
			p.AuthNote = "open demo: no access token is checked and patient binding is off"
		}
	case *SmartAuthz:
		p.AuthMode = "smart-on-fhir"
		p.AuthNote = "send the EHR's access token as Authorization: Bearer; search with ?patient= naming its patient"
	case *DualAuthz:
		p.AuthMode = "smart-on-fhir-independent"
		p.AuthNote = "dual launch: get a token from this server's own authorization endpoints (" + base + "/fhir/.well-known/smart-configuration)"
		p.SeeAlso = append(p.SeeAlso, base+"/fhir/.well-known/smart-configuration")
	default:
		p.AuthMode = "custom"
	}
	if h.dynamic != nil {
		p.SeeAlso = append(p.SeeAlso, base+"/dyn/{base64url(JSON)}/fhir")
	}
	welcome.Write(w, r, p)
	return nil
}
