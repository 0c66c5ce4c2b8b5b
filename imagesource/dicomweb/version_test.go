package dicomweb

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/metacache"
	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// TestOrthancStudyVersionAndCachedMetadata: the version changes when a
// study gains an instance, and the metadata cache in front of the real
// source serves each request the PACS's answer with its own base.
func TestOrthancStudyVersionAndCachedMetadata(t *testing.T) {
	srv, _ := realPACS(t)
	s := orthancSource(t, srv, srv.Username(), srv.Password())
	ctx := context.Background()
	const uid = "1.2.826.0.1.3680043.10.1082.77.1"
	spec := dicomgen.StudySpec{PatientID: "MCACHE-1", StudyUID: uid, Series: 2, InstancesPerSeries: 2, Rows: 16, Cols: 16}
	upload := func(spec dicomgen.StudySpec) {
		dir := t.TempDir()
		if _, err := dicomgen.WriteStudy(dir, spec); err != nil {
			t.Fatal(err)
		}
		if _, err := srv.Upload(ctx, dir); err != nil {
			t.Fatal(err)
		}
	}
	upload(spec)
	v1, err := s.StudyVersion(ctx, uid)
	if err != nil {
		t.Fatal(err)
	}
	if v1 != "MCACHE-1\x002\x004" {
		t.Fatalf("version %q, want patient, 2 series, 4 instances", v1)
	}
	if _, err := s.StudyVersion(ctx, "1.2.3.999999"); err == nil {
		t.Fatal("a study the PACS does not hold has a version")
	}

	c, err := metacache.New(s, metacache.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	get := func(token string) []byte {
		t.Helper()
		p := mustParse(t, "studies/"+uid+"/metadata")
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		err := c.Retrieve(w, r, imagesource.Retrieval{Path: p, PublicBase: "https://gw.example/wado/" + token,
			StudyUID: uid, PatientIDs: []pacskey.PatientKey{"MCACHE-1"}})
		if err != nil || w.Code != 200 {
			t.Fatalf("HTTP %d, %v", w.Code, err)
		}
		return w.Body.Bytes()
	}
	direct := func(token string) []byte {
		p := mustParse(t, "studies/"+uid+"/metadata")
		w := httptest.NewRecorder()
		if err := s.Retrieve(w, httptest.NewRequest(http.MethodGet, "/", nil), imagesource.Retrieval{Path: p,
			PublicBase: "https://gw.example/wado/" + token, StudyUID: uid, PatientIDs: []pacskey.PatientKey{"MCACHE-1"}}); err != nil {
			t.Fatal(err)
		}
		return w.Body.Bytes()
	}
	get("tokA")
	cached := get("tokB")
	if st := c.Stats(); st.Hits != 1 {
		t.Fatalf("stats %+v", st)
	}
	if !bytes.Equal(cached, direct("tokB")) {
		t.Fatal("the cached answer differs from the source's own for the same request")
	}
	if !strings.Contains(string(cached), "https://gw.example/wado/tokB/studies/"+uid) {
		t.Fatal("no URL under the request's base in the metadata")
	}

	spec.Series = 3
	upload(spec)
	v2, err := s.StudyVersion(ctx, uid)
	if err != nil || v2 == v1 {
		t.Fatalf("after a new series: %q, %v", v2, err)
	}
}

// TestFrameValidatorsPassThrough: a frame answer carries the PACS's ETag
// and Last-Modified, and a conditional request the PACS answers 304 is a
// 304 for the client (no body), so a browser's revalidation costs no
// pixel bytes.
func TestFrameValidatorsPassThrough(t *testing.T) {
	const etag = `"frame-v1"`
	s, up, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", etag)
		w.Header().Set("Last-Modified", "Wed, 02 Dec 2026 10:00:00 GMT")
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", `multipart/related; type="application/octet-stream"; boundary=b`)
		_, _ = w.Write([]byte("--b\r\nContent-Type: application/octet-stream\r\n\r\nPIXELS\r\n--b--\r\n"))
	}, nil)
	gw := gateway(t, s)
	path := gw.URL + "/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/1"
	do := func(inm string) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("Accept", `multipart/related; type="application/octet-stream"`)
		if inm != "" {
			req.Header.Set("If-None-Match", inm)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, body := do("")
	if resp.StatusCode != 200 || resp.Header.Get("ETag") != etag || resp.Header.Get("Last-Modified") == "" || !bytes.Contains(body, []byte("PIXELS")) {
		t.Fatalf("frame: %d, ETag %q, Last-Modified %q, %q", resp.StatusCode, resp.Header.Get("ETag"), resp.Header.Get("Last-Modified"), body)
	}
	resp, body = do(etag)
	if resp.StatusCode != http.StatusNotModified || len(body) != 0 || resp.Header.Get("ETag") != etag {
		t.Fatalf("conditional frame: %d with %d bytes, ETag %q", resp.StatusCode, len(body), resp.Header.Get("ETag"))
	}
	if got := up.last(t).Header.Get("If-None-Match"); got != etag {
		t.Fatalf("the PACS got If-None-Match %q", got)
	}
}
