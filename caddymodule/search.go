package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/fhir"
)

// serveSearch answers GET /fhir/ImagingStudy?patient=… with a searchset
// Bundle of the patient's studies, each with its WADO-RS Endpoint.
func (h *Handler) serveSearch(w http.ResponseWriter, r *http.Request) error {
	return h.withAudit(w, r, "search", func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			return h.fail(w, r, &problem{Status: http.StatusMethodNotAllowed, Code: "not-supported",
				Message: "ImagingStudy supports search with GET only"})
		}
		p, err := h.authorize(r)
		if err != nil {
			return h.fail(w, r, err)
		}

		query := r.URL.Query()
		patientParams := append(query["patient"], query["subject"]...)
		if !p.Unrestricted {
			if len(patientParams) == 0 {
				return h.fail(w, r, authz.Forbidden("this route needs ?patient= naming the patient in context"))
			}
		}
		for _, v := range patientParams {
			if err := authz.CheckPatientParam(p, v, h.fhirBase()); err != nil {
				return h.fail(w, r, err)
			}
		}

		q := imagesource.Query{}
		switch h.lookup {
		case imagesource.LookupAllStudies:
			q.All = true
		default:
			keys, err := h.authorizer.PatientKeys(r.Context(), p)
			if err != nil {
				return h.fail(w, r, err)
			}
			for _, k := range keys {
				if err := imagesource.CheckPatientKey(k); err != nil {
					return h.fail(w, r, authz.Forbidden("the patient's PACS key is unusable: "+err.Error()))
				}
			}
			if len(keys) == 0 {
				return h.fail(w, r, authz.Forbidden("the patient has no identifier usable as a PACS key"))
			}
			q.PatientIDs = keys
		}

		start := time.Now()
		studies, err := h.source.FindStudies(r.Context(), q)
		metricSourceDuration.WithLabelValues(h.route(r), "find_studies").Observe(time.Since(start).Seconds())
		if err != nil {
			return h.fail(w, r, err)
		}
		auditFrom(r).studies = len(studies)

		bundle, err := h.searchBundle(r, p, studies)
		if err != nil {
			return h.fail(w, r, err)
		}
		w.Header().Set("Cache-Control", "no-store")
		fhir.WriteJSON(w, http.StatusOK, bundle)
		return nil
	})
}

// searchBundle maps studies to ImagingStudy resources, each with an
// Endpoint whose address carries a study token bound to the study, the
// caller's patient and this route.
func (h *Handler) searchBundle(r *http.Request, p *authz.Principal, studies []imagesource.Study) (*fhir.Bundle, error) {
	base := h.publicBase(r)
	bundle := fhir.NewSearchBundle(base + "/fhir/ImagingStudy?" + r.URL.RawQuery)
	now := time.Now()
	exp := now.Add(h.ttl)
	if !p.Expires.IsZero() && p.Expires.Before(exp) {
		exp = p.Expires
	}
	route := h.route(r)
	type entry struct {
		study    fhir.ImagingStudy
		endpoint fhir.Endpoint
		epURL    string
	}
	for _, st := range studies {
		uid := st.Attributes.String(dicomjson.TagStudyInstanceUID)
		if uid == "" {
			continue
		}
		tok, err := h.keys.Mint(studytoken.Claims{StudyUID: uid, Patient: p.Patient, Route: route, Expiry: exp, IssuedAt: now})
		if err != nil {
			return nil, &problem{Status: http.StatusInternalServerError, Code: "exception", Message: "could not issue a study token", Err: err}
		}
		// The Endpoint's id derives from the token so it changes with it and
		// says nothing about the study.
		sum := sha256.Sum256([]byte(tok))
		epID := hex.EncodeToString(sum[:16])
		epURL := "urn:uuid:" + epID[0:8] + "-" + epID[8:12] + "-" + epID[12:16] + "-" + epID[16:20] + "-" + epID[20:32]
		ep := fhir.WADOEndpoint(epID, base+"/wado/"+tok)
		is := fhir.ImagingStudyFrom(st, fhir.MapOptions{
			ID:          fhir.ResourceID(uid),
			Subject:     fhir.Reference{Reference: p.PatientReference},
			EndpointRef: epURL,
		})
		bundle.AddMatch(base+"/fhir/ImagingStudy/"+is.ID, is)
		bundle.AddInclude(epURL, ep)
	}
	return bundle, nil
}
