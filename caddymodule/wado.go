package caddymodule

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// serveWADO answers /wado/{studyToken}/studies/{uid}[/…]: the caller's
// bearer token is checked as for a search, the study token must open, name
// this route and the caller's patient, and name the study in the path;
// the path must be on the WADO-RS allow-list.
func (h *Handler) serveWADO(w http.ResponseWriter, r *http.Request, rest string) error {
	return h.withAudit(w, r, "retrieve", func(w http.ResponseWriter, r *http.Request) error {
		token, path, _ := strings.Cut(rest, "/")
		if path == "" {
			return h.fail(w, r, &problem{Status: http.StatusNotFound, Code: "not-found",
				Message: "a WADO-RS address needs a path such as /studies/{StudyInstanceUID}"})
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			return h.fail(w, r, &problem{Status: http.StatusMethodNotAllowed, Code: "not-supported",
				Message: "WADO-RS retrieve supports GET only"})
		}
		p, err := h.authorize(r)
		if err != nil {
			return h.fail(w, r, err)
		}

		wp, err := wadopath.Parse(path)
		if err != nil {
			return h.fail(w, r, &problem{Status: http.StatusBadRequest, Code: "invalid", Message: err.Error()})
		}

		claims, err := h.keys.Open(token, time.Now())
		if err != nil {
			msg := "the study token is not valid; search ImagingStudy again for a fresh Endpoint"
			if errors.Is(err, studytoken.ErrExpired) {
				msg = "the study token has expired; search ImagingStudy again for a fresh Endpoint"
			}
			return h.fail(w, r, &problem{Status: http.StatusForbidden, Code: "forbidden", Message: msg, Err: err})
		}
		auditFrom(r).study = claims.StudyUID
		if claims.Route != h.route(r) {
			return h.fail(w, r, authz.Forbidden("the study token was issued for another route"))
		}
		if !p.Unrestricted && (claims.Patient == "" || claims.Patient != p.Patient) {
			return h.fail(w, r, authz.Forbidden("the study token was issued for another patient than this access token's"))
		}

		if wp.StudyUID != claims.StudyUID {
			return h.fail(w, r, authz.Forbidden("the study in the path is not the study this address was issued for"))
		}
		auditFrom(r).action = "retrieve " + wp.Level().String() + resourceSuffix(wp.Resource)

		start := time.Now()
		defer func() {
			metricSourceDuration.WithLabelValues(h.metricRoute(r), "retrieve").Observe(time.Since(start).Seconds())
		}()
		ret := imagesource.Retrieval{
			Path:         wp,
			PublicBase:   h.publicBase(r) + "/wado/" + token,
			StudyUID:     claims.StudyUID,
			Unrestricted: p.Unrestricted,
		}
		if !p.Unrestricted {
			if ret.PatientIDs, err = h.authorizer.PatientKeys(r.Context(), p); err != nil {
				return h.fail(w, r, err)
			}
		}
		err = h.source.Retrieve(w, r, ret)
		if err != nil {
			if _, ok := imagesource.AsError(err); ok {
				return h.fail(w, r, err)
			}
			if cw, ok := w.(*countingWriter); ok && cw.status == 0 {
				return h.fail(w, r, err)
			}
			// The answer had started when the stream broke: abort the
			// connection so the client sees a broken transfer, never a
			// well-formed short one.
			rec := auditFrom(r)
			rec.allowed, rec.reason = true, "stream aborted: "+err.Error()
			panic(http.ErrAbortHandler)
		}
		return nil
	})
}

func resourceSuffix(r wadopath.Resource) string {
	if r == wadopath.Objects {
		return ""
	}
	return " " + string(r)
}
