package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"
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

		strict := preferStrict(r)
		sp, err := fhir.ParseSearch(r.URL.Query(), strict)
		if err != nil {
			return h.fail(w, r, &problem{Status: http.StatusBadRequest, Code: "invalid", Message: err.Error()})
		}
		if !p.Unrestricted && len(sp.Patients) == 0 && len(sp.PatientIdentifiers) == 0 {
			return h.fail(w, r, authz.Forbidden("this route needs ?patient= naming the patient in context"))
		}
		if p.Backend {
			// A backend client acts for the patient its search names.
			var idents []authz.Token
			for _, t := range sp.PatientIdentifiers {
				idents = append(idents, authz.Token(t))
			}
			if p, err = authz.ActFor(r.Context(), h.authorizer, p, sp.Patients, idents, h.fhirBase()); err != nil {
				return h.fail(w, r, err)
			}
			setPrincipal(r, p)
		}
		for _, v := range sp.Patients {
			if err := authz.CheckPatientParam(p, v, h.fhirBase()); err != nil {
				return h.fail(w, r, err)
			}
		}
		q, err := h.studyQuery(r, p, sp)
		if err != nil {
			return h.fail(w, r, err)
		}
		if sp.IdentifierGiven && len(sp.StudyUIDs) == 0 {
			// identifier named only other systems: nothing can match.
			return h.writeBundle(w, r, p, sp, nil)
		}

		start := time.Now()
		studies, err := h.source.FindStudies(r.Context(), q)
		metricSourceDuration.WithLabelValues(h.metricRoute(r), "find_studies").Observe(time.Since(start).Seconds())
		if err != nil {
			return h.fail(w, r, err)
		}
		return h.writeBundle(w, r, p, sp, studies)
	})
}

// preferStrict reports Prefer: handling=strict.
func preferStrict(r *http.Request) bool {
	for _, v := range r.Header.Values("Prefer") {
		for _, part := range strings.Split(v, ",") {
			if strings.EqualFold(strings.ReplaceAll(strings.TrimSpace(part), " ", ""), "handling=strict") {
				return true
			}
		}
	}
	return false
}

// studyQuery turns the caller and the search into a source query; which
// PACS keys the caller may see is authz's decision (authz.ScopeStudies).
func (h *Handler) studyQuery(r *http.Request, p *authz.Principal, sp fhir.Search) (imagesource.Query, error) {
	ss := authz.StudySearch{AllStudies: h.lookup == imagesource.LookupAllStudies}
	for _, t := range sp.PatientIdentifiers {
		ss.PatientIdentifiers = append(ss.PatientIdentifiers, authz.Token(t))
	}
	scope, err := authz.ScopeStudies(r.Context(), h.authorizer, p, ss)
	if err != nil {
		return imagesource.Query{StudyUIDs: sp.StudyUIDs}, err
	}
	return imagesource.Query{All: scope.All, PatientIDs: scope.PatientKeys, StudyUIDs: sp.StudyUIDs}, nil
}

// writeBundle filters, sorts and pages the studies (fhir.SelectStudies,
// fhir.PageOf) and writes the Bundle.
func (h *Handler) writeBundle(w http.ResponseWriter, r *http.Request, p *authz.Principal, sp fhir.Search, studies []imagesource.Study) error {
	studies = fhir.SelectStudies(studies, sp.LastUpdated)
	if p.Modalities != nil {
		// A modality-restricted token sees only studies of its modalities.
		studies = slices.DeleteFunc(studies, func(st imagesource.Study) bool {
			return !p.AllowsModalities(fhir.StudyModalities(st))
		})
	}
	auditFrom(r).studies = len(studies)
	total := len(studies)
	base := h.publicBase(r)
	if sp.SummaryCount {
		b := fhir.NewSearchBundle(base + "/fhir/ImagingStudy?" + r.URL.RawQuery)
		b.Total = &total
		w.Header().Set("Cache-Control", "no-store")
		fhir.WriteJSON(w, http.StatusOK, b)
		return nil
	}
	pg := fhir.PageOf(total, sp.Offset, sp.Count)
	bundle, err := h.searchBundle(r, p, studies[pg.From:pg.To])
	if err != nil {
		return h.fail(w, r, err)
	}
	bundle.Total = &total
	bundle.Link = pg.Links(base+"/fhir/ImagingStudy", r.URL.Query())
	w.Header().Set("Cache-Control", "no-store")
	fhir.WriteJSON(w, http.StatusOK, bundle)
	return nil
}

// searchBundle maps studies to ImagingStudy resources, each with an
// Endpoint whose address carries a study token bound to the study, the
// caller's patient and this route.
func (h *Handler) searchBundle(r *http.Request, p *authz.Principal, studies []imagesource.Study) (*fhir.Bundle, error) {
	base := h.publicBase(r)
	bundle := fhir.NewSearchBundle("")
	now := time.Now()
	exp, err := studytoken.ExpiryFor(now, h.ttl, p)
	if err != nil {
		return nil, err
	}
	route := h.route(r)
	binding := h.keys.Bind(studytoken.BindingOf(h.binding, authz.BearerToken(r), p))
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
		tok, err := h.keys.Mint(studytoken.Claims{StudyUID: uid, Patient: p.Patient, Route: route, Expiry: exp, IssuedAt: now,
			Binding: binding, Modalities: fhir.StudyModalities(st)})
		if err != nil {
			return nil, &problem{Status: http.StatusInternalServerError, Code: "exception", Message: "could not issue a study token", Err: err}
		}
		// The Endpoint's id derives from the token so it changes with it and
		// says nothing about the study.
		sum := sha256.Sum256([]byte(tok))
		epID := hex.EncodeToString(sum[:16])
		epURL := "urn:uuid:" + epID[0:8] + "-" + epID[8:12] + "-" + epID[12:16] + "-" + epID[16:20] + "-" + epID[20:32]
		ep := fhir.WADOEndpoint(epID, base+"/wado/"+tok, !p.Unrestricted)
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
