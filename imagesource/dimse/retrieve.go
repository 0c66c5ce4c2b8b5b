package dimse

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/suyashkumar/dicom/pkg/tag"
	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/folder"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/dimsenet"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// Retrieve answers a WADO-RS request. The study comes from the cache, or
// from one C-GET/C-MOVE shared by every concurrent reader. Object
// requests for a study or series stream instances as they arrive; other
// requests wait for the whole study and are answered by the folder source
// over the cached files. A failure before the first byte is a 502/504
// *imagesource.Error; after it, a plain error (the handler then aborts the
// answer, so the client sees a broken transfer).
func (s *Source) Retrieve(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	p := req.Path
	if req.StudyUID != "" && req.StudyUID != p.StudyUID {
		return imagesource.Errorf(http.StatusForbidden, "forbidden", "the study in the path is not the study this address was issued for")
	}
	if !req.Unrestricted && len(req.PatientIDs) == 0 {
		return imagesource.Errorf(http.StatusForbidden, "forbidden", "no PACS key is known for the patient")
	}
	streaming := false
	if p.Resource == wadopath.Objects && p.Level() != wadopath.Instance && r.Method == http.MethodGet {
		switch err := folder.NegotiateStream(r, p.Level()); {
		case err == nil:
			streaming = true
		case errors.Is(err, folder.ErrCannotStream):
		default:
			return err
		}
	}

	e, started, err := s.cache.acquire(p.StudyUID, req.PatientIDs, req.Unrestricted)
	if err != nil {
		return &imagesource.Error{Status: http.StatusServiceUnavailable, Code: "transient", Message: "the image source is shutting down", Err: err}
	}
	if started {
		go s.run(e)
	}
	var cur *cursor
	if streaming {
		cur = s.cache.attach(e)
	}
	defer s.cache.release(e, cur)

	if streaming {
		if !s.allowed(e, req) {
			return errOtherPatient
		}
		return s.stream(w, r, e, cur, req)
	}
	if err := s.cache.wait(r.Context(), e); err != nil {
		return s.retrieveError(err)
	}
	if !s.allowed(e, req) {
		return errOtherPatient
	}
	src, err := e.source()
	if err != nil {
		return fmt.Errorf("dimse image source: index the cached study: %w", err)
	}
	return src.Retrieve(w, r, req)
}

// errOtherPatient refuses a caller whose keys do not cover the patient of
// the instances the PACS sent for the study.
var errOtherPatient = imagesource.Errorf(http.StatusForbidden, "forbidden", "the study's instances belong to another patient than this address's")

// allowed reports whether the caller's keys cover the patient of the
// entry's instances (they all have the same one).
func (s *Source) allowed(e *entry, req imagesource.Retrieval) bool {
	if req.Unrestricted {
		return true
	}
	s.cache.mu.Lock()
	pid := e.patientID
	s.cache.mu.Unlock()
	return pid == "" || slices.Contains(req.PatientIDs, pacskey.PatientKey(pid))
}

// retrieveError turns a failed retrieve into the client's answer (before
// any byte went out).
func (s *Source) retrieveError(err error) error {
	switch {
	case errors.Is(err, errTooLarge):
		return &imagesource.Error{Status: http.StatusServiceUnavailable, Code: "too-costly",
			Message: "the study does not fit in the gateway's DIMSE cache (cache_size); only whole-study and series object retrieves can stream it", Err: err}
	case errors.Is(err, errClosed):
		return &imagesource.Error{Status: http.StatusServiceUnavailable, Code: "transient", Message: "the image source is shutting down", Err: err}
	case errors.Is(err, context.Canceled):
		return err
	}
	return pacsError(s.cfg.Retrieve, err)
}

// stream sends the study's (or series') instances as they arrive.
func (s *Source) stream(w http.ResponseWriter, r *http.Request, e *entry, cur *cursor, req imagesource.Retrieval) error {
	pw := folder.NewPartWriter(w)
	foreign := 0
	for {
		f, err := s.cache.next(r.Context(), e, cur)
		if err != nil {
			if !pw.Started() {
				return s.retrieveError(err)
			}
			return fmt.Errorf("dimse image source: retrieve of study %s broke after the answer began: %w", e.uid, err)
		}
		if f == nil {
			break
		}
		mine := req.Unrestricted || slices.Contains(req.PatientIDs, pacskey.PatientKey(f.patientID))
		if !mine {
			foreign++
		}
		if mine && (req.Path.SeriesUID == "" || f.seriesUID == req.Path.SeriesUID) {
			if err := pw.WriteFile(f.path); err != nil {
				return err
			}
		}
		s.cache.advance(e, cur)
	}
	if !pw.Started() {
		if foreign > 0 {
			return errOtherPatient
		}
		if req.Path.SeriesUID != "" {
			return imagesource.Errorf(http.StatusNotFound, "not-found", "series %s is not in study %s", req.Path.SeriesUID, req.Path.StudyUID)
		}
		return imagesource.Errorf(http.StatusNotFound, "not-found", "study %s is not in this image source", req.Path.StudyUID)
	}
	return pw.Close()
}

// run retrieves e's study and records the outcome.
func (s *Source) run(e *entry) {
	var err error
	if s.cfg.Retrieve == CMove {
		err = s.cmove(e)
	} else {
		err = s.cget(e)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		s.log.Warn("dimse image source: retrieve failed", zap.String("study", e.uid), zap.String("method", s.cfg.Retrieve), zap.Error(err))
	}
	s.cache.finish(e, err)
}

func retrieveKeys(uid string) []dimsenet.Key {
	return []dimsenet.Key{{Tag: tag.QueryRetrieveLevel, Value: "STUDY"}, {Tag: tag.StudyInstanceUID, Value: uid}}
}

func (s *Source) cget(e *entry) error {
	a, err := dimsenet.Dial(e.ctx, s.cfg.Addr, s.netConfig(), dimsenet.GetContexts())
	if err != nil {
		return err
	}
	res, err := a.Get(e.ctx, retrieveKeys(e.uid), s.storeGot(e))
	if err != nil {
		a.Abort()
		return s.judge(e, res, err, 0)
	}
	// The study is complete: readers need not wait for the release.
	go a.Release()
	return nil
}

func (s *Source) cmove(e *entry) error {
	if err := s.receiver(); err != nil {
		return err
	}
	s.mu.Lock()
	s.moving[e.uid] = e
	strayBefore := s.stray
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.moving[e.uid] == e {
			delete(s.moving, e.uid)
		}
		s.mu.Unlock()
	}()
	a, err := dimsenet.Dial(e.ctx, s.cfg.Addr, s.netConfig(), dimsenet.QueryContexts())
	if err != nil {
		return err
	}
	res, err := a.Move(e.ctx, s.cfg.MoveDestination, retrieveKeys(e.uid))
	if err != nil {
		a.Abort()
		s.mu.Lock()
		stray := s.stray - strayBefore
		s.mu.Unlock()
		return s.judge(e, res, err, stray)
	}
	go a.Release()
	return nil
}

// judge decides whether a retrieve that ended with a failure or warning
// status is still complete: when the only failed sub-operations are the
// instances the gateway itself refused (another study's or patient's), the
// study is whole.
func (s *Source) judge(e *entry, res dimsenet.Result, err error, stray int) error {
	var se *dimsenet.StatusError
	if !errors.As(err, &se) || se.Status&0xF000 != 0xB000 {
		return err
	}
	s.cache.mu.Lock()
	refused := e.refused
	s.cache.mu.Unlock()
	if res.Failed+res.Warning <= refused+stray {
		return nil
	}
	return err
}
