package caddymodule

import (
	"net/http"
	"strings"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/byterange"
	"github.com/smart-imaging/smart_imaging/imagesource/studyzip"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// serveWADO answers /wado/{studyToken}/studies/{uid}[/…]: the caller's
// bearer token is checked as for a search, the study token must open, name
// this route and the caller's patient, and name the study in the path;
// the path must be on the WADO-RS allow-list, and a rendering must stay
// within the route's max_render_size.
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

		claims, err := h.keys.Check(token, time.Now(), studytoken.Presented{Route: h.route(r), Principal: p, StudyUID: wp.StudyUID,
			Binding: studytoken.BindingOf(h.binding, authz.BearerToken(r), p)})
		if claims.StudyUID != "" {
			auditFrom(r).study = claims.StudyUID
		}
		if err != nil {
			return h.fail(w, r, err)
		}
		auditFrom(r).action = "retrieve " + wp.Level().String() + resourceSuffix(wp.Resource)
		// Sizes the caller chooses are bounded here, for every source: a
		// PACS renders into a buffer as large as the viewport asked for.
		if _, err := imagesource.CheckRender(wp, r.URL.Query(), h.maxRenderSize()); err != nil {
			return h.fail(w, r, err)
		}
		if err := imagesource.CheckAccept(r.Header); err != nil {
			return h.fail(w, r, err)
		}

		req := imagesource.Retrieval{Path: wp, PublicBase: h.publicBase(r) + "/wado/" + token,
			StudyUID: claims.StudyUID, Unrestricted: p.Unrestricted, MaxRenderSize: h.maxRenderSize()}
		if p.Backend {
			// Check let the study's patient through: act for it.
			if p, err = p.ForPatient(claims.Patient, ""); err != nil {
				return h.fail(w, r, err)
			}
			setPrincipal(r, p)
		}
		if !p.Unrestricted {
			// What the source serves is checked against the patient's
			// PACS keys (cached by the authorizer), not only its path.
			if req.PatientIDs, err = h.authorizer.PatientKeys(r.Context(), p); err != nil {
				return h.fail(w, r, err)
			}
		}

		if wp.Level() == wadopath.Study && wp.Resource == wadopath.Objects && studyzip.Wants(r) {
			return h.zipStudy(w, r, req)
		}

		return h.runRetrieve(w, r, req)
	})
}

// runRetrieve hands a checked retrieval to the source; a stream that
// breaks after it started aborts the connection.
func (h *Handler) runRetrieve(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	start := time.Now()
	defer func() {
		metricSourceDuration.WithLabelValues(h.metricRoute(r), "retrieve").Observe(time.Since(start).Seconds())
	}()
	err := h.source.Retrieve(byterange.Wrap(w, r), r, req)
	if err == nil {
		return nil
	}
	if _, ok := imagesource.AsError(err); ok {
		return h.fail(w, r, err)
	}
	if cw, ok := w.(*countingWriter); ok && cw.status == 0 {
		return h.fail(w, r, err)
	}
	// The answer had started when the stream broke: abort the connection
	// so the client sees a broken transfer, never a well-formed short one.
	rec := auditFrom(r)
	rec.allowed, rec.reason = true, "stream aborted: "+err.Error()
	panic(http.ErrAbortHandler)
}

func resourceSuffix(r wadopath.Resource) string {
	if r == wadopath.Objects {
		return ""
	}
	return " " + string(r)
}
