// Package studyzip streams a study as a zip of its Part 10 files, one
// folder per series, from any image source: each series is retrieved as
// multipart/related; type="application/dicom" and every part is copied
// into the zip as it arrives, so no more than one part's buffer is held,
// whatever the study's size.
package studyzip

import (
	"archive/zip"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// ContentType is the media type of the answer.
const ContentType = "application/zip"

// Wants reports whether the request asks for a zip (Accept names
// application/zip).
func Wants(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil && mt == ContentType {
				return true
			}
		}
	}
	return false
}

// ErrStarted is wrapped by failures after the zip began: the answer is
// committed, and the caller must abort the connection so the client sees
// a broken transfer rather than a well-formed short zip.
var ErrStarted = errors.New("the zip had started")

// Write streams the study of req (study level) as a zip: the series in
// seriesUIDs, each a folder {SeriesInstanceUID}/ of files 0001.dcm, … in
// the source's order. Failures before the first byte are returned as the
// source's *imagesource.Error (nothing written); later ones wrap
// ErrStarted.
func Write(w http.ResponseWriter, r *http.Request, src imagesource.Source, req imagesource.Retrieval, filename string, seriesUIDs []string) error {
	var zw *zip.Writer
	start := func() {
		h := w.Header()
		h.Set("Content-Type", ContentType)
		h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", filename))
		h.Set("Cache-Control", "no-store")
		h.Del("Content-Length")
		w.WriteHeader(http.StatusOK)
		zw = zip.NewWriter(w)
	}
	for _, series := range seriesUIDs {
		sr := req
		sr.Path = wadopath.Path{StudyUID: req.Path.StudyUID, SeriesUID: series}
		n := 0
		err := eachPart(r, src, sr, func(part io.Reader) error {
			if zw == nil {
				start()
			}
			n++
			f, err := zw.CreateHeader(&zip.FileHeader{Name: fmt.Sprintf("%s/%04d.dcm", series, n), Method: zip.Store})
			if err != nil {
				return err
			}
			_, err = io.Copy(f, part)
			return err
		})
		if err != nil {
			if zw == nil {
				return err
			}
			return fmt.Errorf("%w: series %s: %v", ErrStarted, series, err)
		}
	}
	if zw == nil {
		start()
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("%w: %v", ErrStarted, err)
	}
	return nil
}

// eachPart retrieves req as multipart/related application/dicom and calls
// fn with each part's body, streamed through a pipe.
func eachPart(r *http.Request, src imagesource.Source, req imagesource.Retrieval, fn func(io.Reader) error) error {
	sub := r.Clone(r.Context())
	sub.Header = r.Header.Clone()
	sub.Header.Set("Accept", `multipart/related; type="application/dicom"`)
	sub.Header.Del("Range")
	sub.Header.Del("Accept-Encoding")
	sub.Method = http.MethodGet
	u := *r.URL
	u.RawQuery = ""
	sub.URL = &u
	pr, pw := io.Pipe()
	pipe := &pipeWriter{pw: pw, header: http.Header{}, ready: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		err := src.Retrieve(pipe, sub, req)
		pipe.markReady()
		pw.CloseWithError(err)
		done <- err
	}()
	<-pipe.ready
	fail := func(err error) error {
		pr.CloseWithError(err)
		if rerr := <-done; rerr != nil {
			if _, ok := imagesource.AsError(rerr); ok {
				return rerr
			}
		}
		return err
	}
	if pipe.status != http.StatusOK {
		if err := <-done; err != nil {
			return err
		}
		pr.Close()
		return imagesource.Errorf(http.StatusBadGateway, "exception", "the image source answered %d to a series retrieve", pipe.status)
	}
	mt, params, err := mime.ParseMediaType(pipe.header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		return fail(imagesource.Errorf(http.StatusBadGateway, "exception", "the image source's series answer is not multipart"))
	}
	mr := multipart.NewReader(pr, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(err)
		}
		if err := fn(part); err != nil {
			return fail(err)
		}
	}
	pr.Close()
	return <-done
}

// pipeWriter is the http.ResponseWriter a source writes a series into:
// the header and status are kept, the body goes into the pipe.
type pipeWriter struct {
	pw     *io.PipeWriter
	header http.Header
	status int
	once   sync.Once
	ready  chan struct{}
}

func (p *pipeWriter) markReady() { p.once.Do(func() { close(p.ready) }) }

func (p *pipeWriter) Header() http.Header { return p.header }

func (p *pipeWriter) WriteHeader(code int) {
	if p.status == 0 {
		p.status = code
	}
	p.markReady()
}

func (p *pipeWriter) Write(b []byte) (int, error) {
	if p.status == 0 {
		p.WriteHeader(http.StatusOK)
	}
	return p.pw.Write(b)
}

// Flush is a no-op: the pipe hands every write over at once.
func (p *pipeWriter) Flush() {}

// Interface guards.
var (
	_ http.ResponseWriter = (*pipeWriter)(nil)
	_ http.Flusher        = (*pipeWriter)(nil)
)
