package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/studyzip"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/dwroot"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// ownerCacheTTL bounds how long a study found to be the caller's stays
// so without a new lookup; ownerCacheMax bounds the cache's size.
const (
	ownerCacheTTL = time.Minute
	ownerCacheMax = 100_000
)

// parseDICOMwebRoot reads "dicomweb_root" (no arguments).
func (h *Handler) parseDICOMwebRoot(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	h.DICOMwebRoot = true
	return nil
}

// notFoundStudy is the one answer for a study that does not exist and a
// study of another patient: they must be indistinguishable.
func notFoundStudy() *problem {
	return &problem{Status: http.StatusNotFound, Code: "not-found", Message: "no such study"}
}

// serveDICOMwebRoot answers {route}/dicomweb/…: QIDO-RS searches bound to
// the caller's patient and WADO-RS retrieves of the patient's studies.
func (h *Handler) serveDICOMwebRoot(w http.ResponseWriter, r *http.Request, rest string) error {
	action := "retrieve"
	if dwroot.IsSearch(rest) {
		action = "qido"
	}
	return h.withAudit(w, r, action, func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			return h.fail(w, r, &problem{Status: http.StatusMethodNotAllowed, Code: "not-supported",
				Message: "the DICOMweb root supports GET only"})
		}
		p, err := h.authorize(r)
		if err != nil {
			return h.fail(w, r, err)
		}
		scope, err := authz.ScopeStudies(r.Context(), h.authorizer, p, authz.StudySearch{AllStudies: h.lookup == imagesource.LookupAllStudies})
		if err != nil {
			return h.fail(w, r, err)
		}
		if action == "qido" {
			return h.serveQIDO(w, r, p, scope, rest)
		}
		return h.serveRootRetrieve(w, r, p, scope, rest)
	})
}

// serveQIDO answers a QIDO-RS search: the gateway, not the query, decides
// the PatientID; every study is checked again before it is shown.
func (h *Handler) serveQIDO(w http.ResponseWriter, r *http.Request, p *authz.Principal, scope authz.StudyScope, rest string) error {
	search, err := dwroot.ParseSearch(rest)
	if err != nil {
		return h.fail(w, r, &problem{Status: http.StatusBadRequest, Code: "invalid", Message: err.Error()})
	}
	params, err := dwroot.ParseParams(r.URL.Query())
	if err != nil {
		return h.fail(w, r, &problem{Status: http.StatusBadRequest, Code: "invalid", Message: err.Error()})
	}
	if search.Level == dwroot.Instances && search.StudyUID == "" && len(params.StudyUIDs) != 1 {
		return h.fail(w, r, &problem{Status: http.StatusBadRequest, Code: "invalid",
			Message: "an instance search needs a study: /studies/{uid}/instances or StudyInstanceUID={uid}"})
	}
	q := imagesource.Query{All: scope.All, PatientIDs: scope.PatientKeys, StudyUIDs: params.StudyUIDs,
		StudiesOnly: search.Level == dwroot.Studies}
	if search.StudyUID != "" {
		q.StudyUIDs = []string{search.StudyUID}
	}
	var keys []pacskey.PatientKey
	if !scope.All {
		keys = params.Restrict(scope.PatientKeys)
		q.PatientIDs = keys
	} else if params.HasPatientID {
		keys = []pacskey.PatientKey{pacskey.PatientKey(params.PatientID)}
	}
	var results []dicomjson.Dataset
	if scope.All || len(keys) > 0 {
		start := time.Now()
		studies, err := h.source.FindStudies(r.Context(), q)
		metricSourceDuration.WithLabelValues(h.metricRoute(r), "find_studies").Observe(time.Since(start).Seconds())
		if err != nil {
			return h.fail(w, r, err)
		}
		if results, err = h.qidoResults(r, p, search, params, keys, studies); err != nil {
			return h.fail(w, r, err)
		}
	}
	auditFrom(r).studies = len(results)
	results = dwroot.Page(results, params)
	if results == nil {
		results = []dicomjson.Dataset{}
	}
	body, err := json.Marshal(results)
	if err != nil {
		return h.fail(w, r, &problem{Status: http.StatusInternalServerError, Code: "exception", Message: "could not encode the answer", Err: err})
	}
	w.Header().Set("Content-Type", "application/dicom+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}

// qidoResults turns the source's studies into the search's results, each
// with its RetrieveURL on this root.
func (h *Handler) qidoResults(r *http.Request, p *authz.Principal, search dwroot.Search, params dwroot.Params,
	keys []pacskey.PatientKey, studies []imagesource.Study) ([]dicomjson.Dataset, error) {
	root := h.publicBase(r) + "/dicomweb"
	var out []dicomjson.Dataset
	for _, st := range studies {
		uid := st.Attributes.String(dicomjson.TagStudyInstanceUID)
		if uid == "" || (search.StudyUID != "" && uid != search.StudyUID) {
			continue
		}
		if len(keys) > 0 && !dwroot.OwnedBy(st.Attributes, keys) {
			continue
		}
		studyURL := root + "/studies/" + uid
		switch search.Level {
		case dwroot.Studies:
			if !params.Match(st.Attributes, st.Attributes) {
				continue
			}
			ds := maps.Clone(st.Attributes)
			ds.SetString(dicomjson.TagRetrieveURL, "UR", studyURL)
			out = append(out, ds)
		case dwroot.Series, dwroot.Instances:
			for _, se := range st.Series {
				ds := maps.Clone(se.Attributes)
				suid := ds.String(dicomjson.TagSeriesInstanceUID)
				if suid == "" || (search.SeriesUID != "" && suid != search.SeriesUID) {
					continue
				}
				ds.SetString(dicomjson.TagStudyInstanceUID, "UI", uid)
				seriesURL := studyURL + "/series/" + suid
				if search.Level == dwroot.Series {
					if !params.Match(st.Attributes, ds) {
						continue
					}
					ds.SetString(dicomjson.TagRetrieveURL, "UR", seriesURL)
					out = append(out, ds)
					continue
				}
				if len(params.SeriesUIDs) > 0 && !params.Match(st.Attributes, ds) {
					continue
				}
				insts, err := h.seriesInstances(r, p, keys, uid, suid, se)
				if err != nil {
					return nil, err
				}
				for _, in := range insts {
					if !params.Match(st.Attributes, in) {
						continue
					}
					in.SetString(dicomjson.TagRetrieveURL, "UR", seriesURL+"/instances/"+in.String(dicomjson.TagSOPInstanceUID))
					out = append(out, in)
				}
			}
		}
	}
	return out, nil
}

// instanceTags are the attributes an instance result carries.
var instanceTags = []string{dicomjson.TagSOPClassUID, dicomjson.TagSOPInstanceUID, dicomjson.TagInstanceNumber,
	dicomjson.TagRows, dicomjson.TagColumns, dicomjson.TagNumberOfFrames, dicomjson.TagBitsAllocated,
	dicomjson.TagStudyInstanceUID, dicomjson.TagSeriesInstanceUID, dicomjson.TagModality}

// maxSeriesMetadata bounds the series metadata read to list instances
// when the source does not list them itself.
const maxSeriesMetadata = 64 << 20

// seriesInstances lists a series' instances: the source's own list, else
// the series metadata retrieved through the source (checked by it like
// any retrieve), reduced to instance-level attributes.
func (h *Handler) seriesInstances(r *http.Request, p *authz.Principal, keys []pacskey.PatientKey, study, series string, se imagesource.Series) ([]dicomjson.Dataset, error) {
	var full []dicomjson.Dataset
	if se.Instances != nil {
		full = se.Instances
	} else {
		buf := &bufferWriter{header: http.Header{}, max: maxSeriesMetadata}
		sub := r.Clone(r.Context())
		sub.Header = http.Header{"Accept": {"application/dicom+json"}}
		sub.Method = http.MethodGet
		u := *r.URL
		u.RawQuery = ""
		sub.URL = &u
		req := imagesource.Retrieval{Path: wadopath.Path{StudyUID: study, SeriesUID: series, Resource: wadopath.Metadata},
			PublicBase: h.publicBase(r) + "/dicomweb", StudyUID: study, PatientIDs: keys, Unrestricted: p.Unrestricted,
			MaxRenderSize: h.maxRenderSize()}
		if err := h.source.Retrieve(buf, sub, req); err != nil {
			return nil, err
		}
		if buf.status != 0 && buf.status != http.StatusOK {
			return nil, imagesource.Errorf(http.StatusBadGateway, "exception", "the image source answered %d to a series metadata retrieve", buf.status)
		}
		var err error
		if full, err = dicomjson.DecodeList(buf.body.Bytes()); err != nil {
			return nil, imagesource.Errorf(http.StatusBadGateway, "exception", "the image source's series metadata is not DICOM JSON")
		}
	}
	out := make([]dicomjson.Dataset, 0, len(full))
	for _, in := range full {
		ds := dicomjson.Dataset{}
		for _, t := range instanceTags {
			if e := in.Get(t); e != nil {
				ds[t] = e
			}
		}
		ds.SetString(dicomjson.TagStudyInstanceUID, "UI", study)
		ds.SetString(dicomjson.TagSeriesInstanceUID, "UI", series)
		out = append(out, ds)
	}
	return out, nil
}

// bufferWriter keeps a bounded answer in memory.
type bufferWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
	max    int
}

func (b *bufferWriter) Header() http.Header { return b.header }
func (b *bufferWriter) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}
func (b *bufferWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	if b.body.Len()+len(p) > b.max {
		return 0, imagesource.Errorf(http.StatusBadGateway, "exception", "the series metadata is larger than %d bytes", b.max)
	}
	return b.body.Write(p)
}
func (b *bufferWriter) Flush() {}

// serveRootRetrieve answers WADO-RS under the root: the study must be the
// caller's (looked up once per token and study, cached) before the source
// sees the request; a study of another patient is a 404 like one that
// does not exist.
func (h *Handler) serveRootRetrieve(w http.ResponseWriter, r *http.Request, p *authz.Principal, scope authz.StudyScope, rest string) error {
	wp, err := wadopath.Parse(rest)
	if err != nil {
		return h.fail(w, r, &problem{Status: http.StatusBadRequest, Code: "invalid", Message: err.Error()})
	}
	auditFrom(r).action = "retrieve " + wp.Level().String() + resourceSuffix(wp.Resource)
	if _, err := imagesource.CheckRender(wp, r.URL.Query(), h.maxRenderSize()); err != nil {
		return h.fail(w, r, err)
	}
	if err := imagesource.CheckAccept(r.Header); err != nil {
		return h.fail(w, r, err)
	}
	req := imagesource.Retrieval{Path: wp, PublicBase: h.publicBase(r) + "/dicomweb", StudyUID: wp.StudyUID,
		PatientIDs: scope.PatientKeys, Unrestricted: p.Unrestricted, MaxRenderSize: h.maxRenderSize()}
	find := func(studiesOnly bool) (*imagesource.Study, error) { return h.findStudy(r, req, studiesOnly) }
	if !scope.All {
		caller := p.Patient + "\x00" + p.TokenHash + "\x00" + h.route(r)
		owned, err := h.owners.Owns(r.Context(), caller, wp.StudyUID, p.Expires, func(_ context.Context, _ string) (bool, error) {
			st, err := find(true)
			return st != nil, err
		})
		if err != nil {
			return h.fail(w, r, err)
		}
		if !owned {
			return h.fail(w, r, notFoundStudy())
		}
	}
	auditFrom(r).study = wp.StudyUID
	if wp.Level() == wadopath.Study && wp.Resource == wadopath.Objects && studyzip.Wants(r) {
		study, err := find(false)
		if err != nil {
			return h.fail(w, r, err)
		}
		if study == nil {
			return h.fail(w, r, notFoundStudy())
		}
		return h.serveZip(w, r, req, *study)
	}
	return h.runRetrieve(w, r, req)
}

// findStudy looks the study of req up in the source (its attributes only
// when studiesOnly), for its patient's
// keys (any patient when req is unrestricted), and checks its PatientID
// again. nil: no such study for this caller.
func (h *Handler) findStudy(r *http.Request, req imagesource.Retrieval, studiesOnly bool) (*imagesource.Study, error) {
	start := time.Now()
	q := imagesource.Query{All: req.Unrestricted, PatientIDs: req.PatientIDs, StudyUIDs: []string{req.StudyUID}, StudiesOnly: studiesOnly}
	if req.Unrestricted && len(req.PatientIDs) > 0 {
		q.All = false
	}
	studies, err := h.source.FindStudies(r.Context(), q)
	metricSourceDuration.WithLabelValues(h.metricRoute(r), "find_studies").Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, err
	}
	for i, st := range studies {
		if st.Attributes.String(dicomjson.TagStudyInstanceUID) == req.StudyUID && (q.All || dwroot.OwnedBy(st.Attributes, req.PatientIDs)) {
			return &studies[i], nil
		}
	}
	return nil, nil
}

// zipStudy answers a study retrieve asking for application/zip (on the
// SMART endpoint: the study token already named the study).
func (h *Handler) zipStudy(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	study, err := h.findStudy(r, req, false)
	if err != nil {
		return h.fail(w, r, err)
	}
	if study == nil {
		return h.fail(w, r, notFoundStudy())
	}
	return h.serveZip(w, r, req, *study)
}

// serveZip streams a study as a zip of its Part 10 files, a folder per
// series (studyzip).
func (h *Handler) serveZip(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval, study imagesource.Study) error {
	auditFrom(r).action = "retrieve study zip"
	var series []string
	for _, se := range study.Series {
		if uid := se.Attributes.String(dicomjson.TagSeriesInstanceUID); uid != "" {
			series = append(series, uid)
		}
	}
	err := studyzip.Write(w, r, h.source, req, req.StudyUID+".zip", series)
	if err == nil {
		return nil
	}
	if !errors.Is(err, studyzip.ErrStarted) {
		return h.fail(w, r, err)
	}
	rec := auditFrom(r)
	rec.allowed, rec.reason = true, "stream aborted: "+err.Error()
	panic(http.ErrAbortHandler)
}
