package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
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

// studyQuery turns the caller and the search into a source query: which
// PACS keys (or all studies) and which study UIDs.
func (h *Handler) studyQuery(r *http.Request, p *authz.Principal, sp fhir.Search) (imagesource.Query, error) {
	q := imagesource.Query{StudyUIDs: sp.StudyUIDs}
	var keys []string
	if !p.Unrestricted || h.lookup == imagesource.LookupStudiesByMRN && len(sp.PatientIdentifiers) == 0 {
		if h.lookup == imagesource.LookupAllStudies {
			// Provision refuses this combination; never widen access.
			return q, authz.Forbidden("lookup all-studies needs an unrestricted route")
		}
		var err error
		keys, err = h.authorizer.PatientKeys(r.Context(), p)
		if err != nil {
			return q, err
		}
		if len(keys) == 0 {
			return q, authz.Forbidden("the patient has no identifier usable as a PACS key")
		}
	}
	if len(sp.PatientIdentifiers) > 0 {
		// patient.identifier narrows to one PACS key. On a patient-bound
		// route it must name one of the patient's own identifiers, system
		// and value (FHIR token rules: system|value, |value without a
		// system, value alone under any system). An unrestricted route has
		// no patient to compare with: the value is the key.
		var idents []authz.Identifier
		if !p.Unrestricted {
			var err error
			if idents, err = h.authorizer.PatientIdentifiers(r.Context(), p); err != nil {
				return q, err
			}
		}
		var wanted []string
		for _, t := range sp.PatientIdentifiers {
			if err := imagesource.CheckPatientKey(t.Value); err != nil {
				return q, &problem{Status: http.StatusBadRequest, Code: "invalid", Message: "patient.identifier: " + err.Error()}
			}
			if !p.Unrestricted && (!authz.AnyMatchesToken(idents, t.System, t.HasSystem, t.Value) || !slices.Contains(keys, t.Value)) {
				return q, authz.Forbidden("patient.identifier does not name an identifier of the patient this access token is bound to (system and value must both match)")
			}
			wanted = append(wanted, t.Value)
		}
		keys = wanted
	}
	if len(keys) == 0 && h.lookup == imagesource.LookupAllStudies {
		q.All = true
		return q, nil
	}
	if len(keys) == 0 {
		return q, &problem{Status: http.StatusBadRequest, Code: "required",
			Message: "this route looks studies up by MRN: give patient.identifier=system|MRN"}
	}
	for _, k := range keys {
		if err := imagesource.CheckPatientKey(k); err != nil {
			return q, authz.Forbidden("the patient's PACS key is unusable: " + err.Error())
		}
	}
	q.PatientIDs = keys
	return q, nil
}

// writeBundle filters, sorts and pages the studies and writes the Bundle.
func (h *Handler) writeBundle(w http.ResponseWriter, r *http.Request, p *authz.Principal, sp fhir.Search, studies []imagesource.Study) error {
	if len(sp.LastUpdated) > 0 {
		kept := studies[:0:0]
		for _, st := range studies {
			t, ok := fhir.StudyUpdated(st.Attributes, nil)
			if !ok {
				continue
			}
			match := true
			for _, f := range sp.LastUpdated {
				match = match && f.Matches(t)
			}
			if match {
				kept = append(kept, st)
			}
		}
		studies = kept
	}
	// A stable order (newest first, then UID) makes paging consistent.
	slices.SortStableFunc(studies, func(a, b imagesource.Study) int {
		da := a.Attributes.String(dicomjson.TagStudyDate) + a.Attributes.String(dicomjson.TagStudyTime)
		db := b.Attributes.String(dicomjson.TagStudyDate) + b.Attributes.String(dicomjson.TagStudyTime)
		if c := strings.Compare(db, da); c != 0 {
			return c
		}
		return strings.Compare(a.Attributes.String(dicomjson.TagStudyInstanceUID), b.Attributes.String(dicomjson.TagStudyInstanceUID))
	})
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
	count := sp.Count
	if count == 0 {
		count = defaultPageSize
	}
	from := min(sp.Offset, total)
	to := min(from+count, total)
	page := studies[from:to]
	bundle, err := h.searchBundle(r, p, page)
	if err != nil {
		return h.fail(w, r, err)
	}
	bundle.Total = &total
	bundle.Link = []fhir.BundleLink{{Relation: "self", URL: pageURL(base, r.URL.Query(), from, count)}}
	if to < total {
		bundle.Link = append(bundle.Link, fhir.BundleLink{Relation: "next", URL: pageURL(base, r.URL.Query(), to, count)})
	}
	if from > 0 {
		bundle.Link = append(bundle.Link, fhir.BundleLink{Relation: "previous", URL: pageURL(base, r.URL.Query(), max(0, from-count), count)})
	}
	w.Header().Set("Cache-Control", "no-store")
	fhir.WriteJSON(w, http.StatusOK, bundle)
	return nil
}

// defaultPageSize is the page size when _count is not given.
const defaultPageSize = 100

func pageURL(base string, q url.Values, offset, count int) string {
	q = maps.Clone(q)
	q.Set("_offset", strconv.Itoa(offset))
	q.Set("_count", strconv.Itoa(count))
	return base + "/fhir/ImagingStudy?" + q.Encode()
}

// searchBundle maps studies to ImagingStudy resources, each with an
// Endpoint whose address carries a study token bound to the study, the
// caller's patient and this route.
func (h *Handler) searchBundle(r *http.Request, p *authz.Principal, studies []imagesource.Study) (*fhir.Bundle, error) {
	base := h.publicBase(r)
	bundle := fhir.NewSearchBundle("")
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
