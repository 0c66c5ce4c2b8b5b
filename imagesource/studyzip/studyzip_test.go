package studyzip

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// fakeSource answers a series retrieve with n parts "series/i", fails
// before writing for series "missing", and breaks after one part for
// series "broken".
type fakeSource struct{ parts int }

func (fakeSource) FindStudies(context.Context, imagesource.Query) ([]imagesource.Study, error) {
	return nil, nil
}

func (f fakeSource) Retrieve(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	if r.Header.Get("Accept") != `multipart/related; type="application/dicom"` {
		return imagesource.Errorf(http.StatusNotAcceptable, "not-supported", "accept %q", r.Header.Get("Accept"))
	}
	series := req.Path.SeriesUID
	if series == "9.9" {
		return imagesource.Errorf(http.StatusNotFound, "not-found", "no such series")
	}
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	for i := 1; i <= f.parts; i++ {
		p, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
		fmt.Fprintf(p, "%s/%d", series, i)
		if series == "8.8" {
			return errors.New("upstream broke")
		}
	}
	return mw.Close()
}

func TestWrite(t *testing.T) {
	req := imagesource.Retrieval{Path: wadopath.Path{StudyUID: "1.2"}, StudyUID: "1.2"}
	r := httptest.NewRequest(http.MethodGet, "/studies/1.2", nil)
	r.Header.Set("Accept", "application/zip")
	if !Wants(r) {
		t.Fatal("Wants: application/zip")
	}

	rec := httptest.NewRecorder()
	if err := Write(rec, r, fakeSource{parts: 3}, req, "1.2.zip", []string{"1.2.1", "1.2.2"}); err != nil {
		t.Fatal(err)
	}
	if rec.Header().Get("Content-Type") != ContentType {
		t.Errorf("Content-Type %q", rec.Header().Get("Content-Type"))
	}
	zr, err := zip.NewReader(bytes.NewReader(rec.Body.Bytes()), int64(rec.Body.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range zr.File {
		rc, _ := f.Open()
		b, _ := io.ReadAll(rc)
		rc.Close()
		got = append(got, f.Name+"="+string(b))
	}
	want := "[1.2.1/0001.dcm=1.2.1/1 1.2.1/0002.dcm=1.2.1/2 1.2.1/0003.dcm=1.2.1/3 1.2.2/0001.dcm=1.2.2/1 1.2.2/0002.dcm=1.2.2/2 1.2.2/0003.dcm=1.2.2/3]"
	if fmt.Sprint(got) != want {
		t.Errorf("zip = %v\nwant %s", got, want)
	}

	// A failure before the first byte is the source's error, nothing written.
	rec = httptest.NewRecorder()
	err = Write(rec, r, fakeSource{parts: 1}, req, "1.2.zip", []string{"9.9"})
	if p, ok := imagesource.AsError(err); !ok || p.Status != http.StatusNotFound || rec.Body.Len() != 0 {
		t.Errorf("missing first series: %v, %d bytes written", err, rec.Body.Len())
	}
	// A failure after the zip started wraps ErrStarted.
	rec = httptest.NewRecorder()
	err = Write(rec, r, fakeSource{parts: 2}, req, "1.2.zip", []string{"1.2.1", "8.8"})
	if !errors.Is(err, ErrStarted) {
		t.Errorf("broken second series: %v, want ErrStarted", err)
	}
}
