package dimse

import (
	"bytes"
	"context"
	"github.com/caddyserver/caddy/v2"
	"github.com/smart-imaging/smart_imaging/pacskey"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/dimsenet"
)

// The demo corpus: patient p1 has the CT chest (6 instances) and the MR
// brain (7 instances) studies.
const (
	demoDir  = "../../examples/demo/studies"
	p1       = "293ee354-f8ad-4345-b10c-759fdfdcc082"
	ctStudy  = "2.25.2718281828459045235360287.1.1.1"
	mrStudy  = "2.25.2718281828459045235360287.1.1.2"
	ctSeries = "2.25.2718281828459045235360287.1.1.1.1"
	ourAE    = "SMART-IMAGING"
	pacsAE   = "FAKE-PACS"
)

func demoFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	filepath.WalkDir(demoDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".dcm") {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	if len(files) != 22 {
		t.Fatalf("demo corpus: %d files, want 22", len(files))
	}
	return files
}

// fakePACS starts a misbehaving-on-demand PACS with the demo files.
func fakePACS(t *testing.T) (*dimsenet.Provider, string) {
	t.Helper()
	p := &dimsenet.Provider{AE: pacsAE, Files: demoFiles(t)}
	addr, err := p.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, addr
}

func newSource(t *testing.T, addr string, mod func(*Config)) *Source {
	t.Helper()
	cfg := Config{Addr: addr, CalledAE: pacsAE, CallingAE: ourAE, CacheDir: t.TempDir(), Timeout: caddy.Duration(5 * time.Second)}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func retrieval(t *testing.T, path string) imagesource.Retrieval {
	t.Helper()
	p, err := wadopath.Parse(path)
	if err != nil {
		t.Fatal(err)
	}
	return imagesource.Retrieval{Path: p, PublicBase: "http://gw/wado/tok", StudyUID: p.StudyUID, PatientIDs: []pacskey.PatientKey{p1}}
}

func request(accept string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://gw/wado/tok/studies/x", nil)
	r.Header.Set("Accept", accept)
	return r
}

const dicomAccept = `multipart/related; type="application/dicom"`

// parts reads a multipart answer into SOP Instance UID → patient ID.
func parts(t *testing.T, ctype string, body io.Reader) (map[string]string, error) {
	t.Helper()
	_, params, err := mime.ParseMediaType(ctype)
	if err != nil {
		t.Fatalf("Content-Type %q: %v", ctype, err)
	}
	out := map[string]string{}
	mr := multipart.NewReader(body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return out, err
		}
		ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipPixelData())
		if err != nil {
			t.Fatalf("part is not DICOM: %v", err)
		}
		out[value(ds, tag.SOPInstanceUID)] = value(ds, tag.PatientID)
	}
}

func value(ds dicom.Dataset, tg tag.Tag) string {
	e, err := ds.FindElementByTag(tg)
	if err != nil {
		return ""
	}
	v, _ := e.Value.GetValue().([]string)
	if len(v) == 0 {
		return ""
	}
	return strings.TrimRight(v[0], " \x00")
}

func TestSearchIsExactAndRefusesPatterns(t *testing.T) {
	p, addr := fakePACS(t)
	s := newSource(t, addr, nil)
	ctx := context.Background()
	got, err := s.FindStudies(ctx, imagesource.Query{PatientIDs: []pacskey.PatientKey{"SIA-MRN-0001"}})
	if err != nil {
		t.Fatal(err)
	}
	var uids []string
	for _, st := range got {
		uids = append(uids, st.Attributes.String("0020000D"))
		if pid := st.Attributes.String("00100020"); pid != "SIA-MRN-0001" {
			t.Errorf("study of patient %q in SIA-MRN-0001's answer", pid)
		}
		if len(st.Series) == 0 {
			t.Errorf("study %s without series", st.Attributes.String("0020000D"))
		}
	}
	if len(uids) != 2 {
		t.Errorf("studies %v, want SIA-MRN-0001's two", uids)
	}
	_, before := p.Counts()
	for _, key := range []string{"SIA-MRN-000*", "SIA-MRN-000?", `SIA-MRN-0001\SIA-MRN-00011`, ""} {
		_, err := s.FindStudies(ctx, imagesource.Query{PatientIDs: []pacskey.PatientKey{pacskey.PatientKey(key)}})
		if se, ok := imagesource.AsError(err); !ok || se.Status != http.StatusBadRequest {
			t.Errorf("key %q: %v, want a 400", key, err)
		}
	}
	if _, after := p.Counts(); after != before {
		t.Errorf("pattern keys reached the PACS: %d associations", after-before)
	}
}

func TestRetrieveStreamsSharesAndCaches(t *testing.T) {
	p, addr := fakePACS(t)
	hold := make(chan struct{})
	p.Set(func(p *dimsenet.Provider) { p.Hold = hold })
	s := newSource(t, addr, nil)

	// The first part leaves while the PACS holds the rest of the study.
	pr, pw := io.Pipe()
	w := &pipeWriter{h: http.Header{}, w: pw, started: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		err := s.Retrieve(w, request(dicomAccept), retrieval(t, "studies/"+ctStudy))
		pw.CloseWithError(err)
		done <- err
	}()
	<-w.started
	_, params, _ := mime.ParseMediaType(w.h.Get("Content-Type"))
	mr := multipart.NewReader(pr, params["boundary"])
	part, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	// Read the part by its Content-Length: the delimiter after it comes
	// only with the next part.
	size, err := strconv.Atoi(part.Header.Get("Content-Length"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(part, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	// Concurrent readers join the retrieve in progress.
	var wg sync.WaitGroup
	counts := make([]int, 8)
	for i := range counts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := httptest.NewRecorder()
			if err := s.Retrieve(rec, request(dicomAccept), retrieval(t, "studies/"+ctStudy)); err != nil {
				t.Error(err)
				return
			}
			got, err := parts(t, rec.Header().Get("Content-Type"), rec.Body)
			if err != nil {
				t.Error(err)
			}
			counts[i] = len(got)
		}()
	}
	close(hold)
	n := 1
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, part)
		n++
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if n != 6 {
		t.Errorf("first reader got %d parts, want 6", n)
	}
	for i, c := range counts {
		if c != 6 {
			t.Errorf("concurrent reader %d got %d instances, want 6", i, c)
		}
	}
	// Later requests come from the cache, served by the folder code.
	for _, path := range []string{"studies/" + ctStudy, "studies/" + ctStudy + "/metadata", "studies/" + ctStudy + "/series/" + ctSeries} {
		rec := httptest.NewRecorder()
		accept := dicomAccept
		if strings.HasSuffix(path, "metadata") {
			accept = "application/dicom+json"
		}
		if err := s.Retrieve(rec, request(accept), retrieval(t, path)); err != nil || rec.Code != 200 {
			t.Errorf("%s: %v %d", path, err, rec.Code)
		}
	}
	if gets, _ := p.Counts(); gets != 1 {
		t.Errorf("the PACS served %d C-GETs for one study, want 1", gets)
	}
	// Private files, removed on Close.
	dir := s.CacheDir()
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		want := os.FileMode(0o600)
		if d.IsDir() {
			want = 0o700 | os.ModeDir
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
		return nil
	})
	s.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cache directory still there after Close: %v", err)
	}
}

// pipeWriter is a ResponseWriter over a pipe that says when the answer
// starts.
type pipeWriter struct {
	h       http.Header
	w       io.Writer
	once    sync.Once
	started chan struct{}
}

func (p *pipeWriter) Header() http.Header         { return p.h }
func (p *pipeWriter) WriteHeader(int)             { p.once.Do(func() { close(p.started) }) }
func (p *pipeWriter) Write(b []byte) (int, error) { p.WriteHeader(200); return p.w.Write(b) }

func TestForeignInstancesAreDropped(t *testing.T) {
	files := demoFiles(t)
	// An instance claiming the CT study but another patient, and an
	// instance of another study.
	raw, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	forged := bytes.ReplaceAll(raw, []byte(p1), []byte("993ee354-f8ad-4345-b10c-759fdfdcc082"))
	forged = bytes.ReplaceAll(forged, []byte(ctSeries+".1"), []byte(ctSeries+".9"))
	forgedPath := filepath.Join(t.TempDir(), "forged.dcm")
	if err := os.WriteFile(forgedPath, forged, 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(demoDir, "p2-sia-mrn-0001", "st1-ct-abdomen", "se01", "0001.dcm")
	p, addr := fakePACS(t)
	p.Set(func(p *dimsenet.Provider) { p.Extra = []string{forgedPath, other} })
	s := newSource(t, addr, nil)
	rec := httptest.NewRecorder()
	if err := s.Retrieve(rec, request(dicomAccept), retrieval(t, "studies/"+ctStudy)); err != nil {
		t.Fatal(err)
	}
	got, err := parts(t, rec.Header().Get("Content-Type"), rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Errorf("%d instances, want the study's 6", len(got))
	}
	for sop, pid := range got {
		if pid != p1 || !strings.HasPrefix(sop, ctStudy+".") {
			t.Errorf("instance %s of patient %s was sent", sop, pid)
		}
	}
	// Nothing foreign was stored either.
	entries, _ := filepath.Glob(filepath.Join(s.CacheDir(), "*", "*"))
	for _, e := range entries {
		if strings.Contains(e, ctSeries+".9") || strings.Contains(e, "1.2.1.1.1") {
			t.Errorf("foreign instance stored: %s", e)
		}
	}
}

func TestPACSFailures(t *testing.T) {
	p, addr := fakePACS(t)
	s := newSource(t, addr, func(c *Config) { c.Timeout = caddy.Duration(300 * time.Millisecond) })
	ctx := context.Background()
	statusOf := func(err error) int {
		if se, ok := imagesource.AsError(err); ok {
			return se.Status
		}
		return 0
	}
	t.Run("association refused", func(t *testing.T) {
		p.Set(func(p *dimsenet.Provider) { p.Refuse = true })
		defer p.Set(func(p *dimsenet.Provider) { p.Refuse = false })
		if _, err := s.FindStudies(ctx, imagesource.Query{PatientIDs: []pacskey.PatientKey{p1}}); statusOf(err) != 502 {
			t.Errorf("search: %v, want 502", err)
		}
		rec := httptest.NewRecorder()
		if err := s.Retrieve(rec, request(dicomAccept), retrieval(t, "studies/"+ctStudy)); statusOf(err) != 502 || rec.Body.Len() > 0 {
			t.Errorf("retrieve: %v (%d bytes written), want 502 before any byte", err, rec.Body.Len())
		}
		if err := s.Check(ctx); err == nil {
			t.Error("readiness passed against a PACS that refuses")
		}
	})
	t.Run("slow PACS", func(t *testing.T) {
		p.Set(func(p *dimsenet.Provider) { p.Delay = 2 * time.Second })
		defer p.Set(func(p *dimsenet.Provider) { p.Delay = 0 })
		if _, err := s.FindStudies(ctx, imagesource.Query{PatientIDs: []pacskey.PatientKey{p1}}); statusOf(err) != 504 {
			t.Errorf("search: %v, want 504", err)
		}
		rec := httptest.NewRecorder()
		if err := s.Retrieve(rec, request("application/dicom+json"), retrieval(t, "studies/"+mrStudy+"/metadata")); statusOf(err) != 504 {
			t.Errorf("retrieve: %v, want 504", err)
		}
	})
	t.Run("connection dropped mid-study", func(t *testing.T) {
		p.Set(func(p *dimsenet.Provider) { p.DropAfter = 2 })
		defer p.Set(func(p *dimsenet.Provider) { p.DropAfter = 0 })
		rec := httptest.NewRecorder()
		err := s.Retrieve(rec, request(dicomAccept), retrieval(t, "studies/"+mrStudy))
		if err == nil {
			t.Fatal("a broken retrieve ended as a complete answer")
		}
		if _, isSourceErr := imagesource.AsError(err); isSourceErr {
			t.Errorf("after bytes went out the error must be a plain one (abort), got %v", err)
		}
		got, perr := parts(t, rec.Header().Get("Content-Type"), bytes.NewReader(rec.Body.Bytes()))
		// The last part before the break cannot be delimited: at least
		// the first one reads, then the body ends without its closing
		// delimiter.
		if len(got) < 1 || perr == nil {
			t.Errorf("%d parts, multipart error %v; want the first part and an unterminated body", len(got), perr)
		}
		// The failed study is not kept: the next request retrieves again.
		p.Set(func(p *dimsenet.Provider) { p.DropAfter = 0 })
		rec = httptest.NewRecorder()
		if err := s.Retrieve(rec, request(dicomAccept), retrieval(t, "studies/"+mrStudy)); err != nil {
			t.Fatalf("retry: %v", err)
		}
		if got, _ := parts(t, rec.Header().Get("Content-Type"), rec.Body); len(got) != 7 {
			t.Errorf("retry: %d parts, want 7", len(got))
		}
	})
}

func TestCacheStaysWithinItsSize(t *testing.T) {
	_, addr := fakePACS(t)
	// Room for the largest instance (the MR's 8-frame one, 66 KB) and the
	// CT study (70 KB), not for the MR study (141 KB).
	const limit = 72 << 10
	s := newSource(t, addr, func(c *Config) { c.CacheSize = limit })
	// A study larger than the cache streams through.
	rec := httptest.NewRecorder()
	if err := s.Retrieve(rec, request(dicomAccept), retrieval(t, "studies/"+mrStudy)); err != nil {
		t.Fatal(err)
	}
	if got, err := parts(t, rec.Header().Get("Content-Type"), rec.Body); err != nil || len(got) != 7 {
		t.Errorf("%d parts (%v), want 7", len(got), err)
	}
	// What needs the whole study says why it cannot.
	err := s.Retrieve(httptest.NewRecorder(), request("application/dicom+json"), retrieval(t, "studies/"+mrStudy+"/metadata"))
	if se, ok := imagesource.AsError(err); !ok || se.Status != http.StatusServiceUnavailable {
		t.Errorf("metadata of a study larger than the cache: %v, want 503", err)
	}
	// Concurrent retrieves of many studies. The MR study does not fit, so
	// each of its retrieves is a transfer of its own streaming through;
	// when their instances in flight together hold the whole cache, one of
	// them runs out of room after the source's timeout (a known limit:
	// README, Fronting a DIMSE PACS). The bound must hold regardless, and
	// a retrieve that runs out of room must break visibly: an error before
	// the first byte, or a multipart answer without its closing boundary,
	// never a well-formed short study.
	var wg sync.WaitGroup
	var complete atomic.Int32
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			study := []string{ctStudy, mrStudy}[i%2]
			want := map[string]int{ctStudy: 6, mrStudy: 7}[study]
			rec := httptest.NewRecorder()
			err := s.Retrieve(rec, request(dicomAccept), retrieval(t, "studies/"+study))
			if err != nil && rec.Header().Get("Content-Type") == "" {
				if se, ok := imagesource.AsError(err); !ok || se.Status < 500 {
					t.Errorf("%s: failed before the first byte with %v, want a 5xx OperationOutcome", study, err)
				}
				return
			}
			got, perr := parts(t, rec.Header().Get("Content-Type"), rec.Body)
			switch {
			case err != nil && perr == nil:
				t.Errorf("%s: retrieve failed (%v) but the client got a well-formed answer of %d parts", study, err, len(got))
			case err == nil && (perr != nil || len(got) != want):
				t.Errorf("%s: %d parts (%v), want %d", study, len(got), perr, want)
			case err == nil:
				complete.Add(1)
			}
		}()
	}
	wg.Wait()
	if complete.Load() == 0 {
		t.Error("none of the 16 concurrent retrieves completed")
	}
	u := s.CacheUsage()
	if u.Peak > limit {
		t.Errorf("cache peaked at %d bytes, over its %d", u.Peak, limit)
	}
	if u.Peak == 0 {
		t.Error("the cache was never used")
	}
	var onDisk int64
	filepath.WalkDir(s.CacheDir(), func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			fi, _ := d.Info()
			onDisk += fi.Size()
		}
		return nil
	})
	if onDisk > limit || u.Bytes != onDisk {
		t.Errorf("%d bytes on disk, %d accounted; limit %d", onDisk, u.Bytes, limit)
	}
}

func TestCachedStudiesExpire(t *testing.T) {
	_, addr := fakePACS(t)
	s := newSource(t, addr, func(c *Config) { c.CacheTTL = caddy.Duration(200 * time.Millisecond) })
	rec := httptest.NewRecorder()
	if err := s.Retrieve(rec, request(dicomAccept), retrieval(t, "studies/"+ctStudy)); err != nil {
		t.Fatal(err)
	}
	if s.CacheUsage().Studies != 1 {
		t.Fatalf("usage %+v after one retrieve", s.CacheUsage())
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.CacheUsage().Studies != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("study still cached 10 s after its 200 ms TTL: %+v", s.CacheUsage())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if left, _ := filepath.Glob(filepath.Join(s.CacheDir(), "*")); len(left) != 0 {
		t.Errorf("expired study left %v", left)
	}
}

func TestAnotherPatientsKeysDoNotOpenACachedStudy(t *testing.T) {
	_, addr := fakePACS(t)
	s := newSource(t, addr, nil)
	if err := s.Retrieve(httptest.NewRecorder(), request(dicomAccept), retrieval(t, "studies/"+ctStudy)); err != nil {
		t.Fatal(err)
	}
	for _, accept := range []string{dicomAccept, "application/dicom+json"} {
		path := "studies/" + ctStudy
		if accept != dicomAccept {
			path += "/metadata"
		}
		req := retrieval(t, path)
		req.PatientIDs = []pacskey.PatientKey{"SIA-MRN-0001"}
		rec := httptest.NewRecorder()
		err := s.Retrieve(rec, request(accept), req)
		if se, ok := imagesource.AsError(err); !ok || se.Status != http.StatusForbidden || rec.Body.Len() > 0 {
			t.Errorf("%s with another patient's keys: %v, %d bytes; want 403 and nothing", path, err, rec.Body.Len())
		}
	}
}
