package metacache

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// fakePACS is a source holding studies of known patients. Like the real
// sources it checks every data set it serves with req.CheckObject and
// writes URLs under req.PublicBase.
type fakePACS struct {
	mu        sync.Mutex
	instances map[string]int    // study UID → instance count
	patient   map[string]string // study UID → PatientID
	pad       int               // bytes of padding per instance
	retrieves atomic.Int64
	versions  atomic.Int64
	searches  atomic.Int64
}

func newFakePACS() *fakePACS {
	return &fakePACS{instances: map[string]int{}, patient: map[string]string{}}
}

func (f *fakePACS) add(study, patient string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.instances[study] = n
	f.patient[study] = patient
}

func (f *fakePACS) FindStudies(_ context.Context, q imagesource.Query) ([]imagesource.Study, error) {
	f.searches.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []imagesource.Study
	for uid, pid := range f.patient {
		for _, k := range q.PatientIDs {
			if string(k) == pid {
				out = append(out, imagesource.Study{Attributes: dicomjson.Dataset{
					dicomjson.TagStudyInstanceUID: {VR: "UI", Value: []any{uid}},
					dicomjson.TagPatientID:        {VR: "LO", Value: []any{pid}},
				}})
			}
		}
	}
	return out, nil
}

func (f *fakePACS) StudyVersion(_ context.Context, uid string) (string, error) {
	f.versions.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.instances[uid]
	if !ok {
		return "", fmt.Errorf("no study %s", uid)
	}
	return fmt.Sprint(n), nil
}

func (f *fakePACS) Retrieve(w http.ResponseWriter, _ *http.Request, req imagesource.Retrieval) error {
	f.retrieves.Add(1)
	f.mu.Lock()
	n, ok := f.instances[req.Path.StudyUID]
	pid := f.patient[req.Path.StudyUID]
	f.mu.Unlock()
	if !ok {
		return imagesource.Errorf(http.StatusNotFound, "not-found", "no such study")
	}
	if req.Path.Resource != wadopath.Metadata {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, err := w.Write([]byte("frame"))
		return err
	}
	if err := req.CheckObject([]string{req.Path.StudyUID}, []string{pid}); err != nil {
		return imagesource.Errorf(http.StatusBadGateway, "exception", "refused: %v", err)
	}
	var b strings.Builder
	b.WriteString("[")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"0020000D":{"vr":"UI","Value":[%q]},"00100020":{"vr":"LO","Value":[%q]},`+
			`"00080018":{"vr":"UI","Value":["1.2.%d"]},"7FE00010":{"vr":"OW","BulkDataURI":"%s/studies/%s/series/1/instances/1.2.%d/bulk"},"00091000":{"vr":"LO","Value":[%q]}}`,
			req.Path.StudyUID, pid, i, req.PublicBase, req.Path.StudyUID, i, strings.Repeat("x", f.pad))
	}
	b.WriteString("]")
	w.Header().Set("Content-Type", "application/dicom+json")
	_, err := w.Write([]byte(b.String()))
	return err
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newCache(t *testing.T, inner imagesource.Source, cfg Config) (*Source, *clock) {
	t.Helper()
	s, err := New(inner, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	s.now = c.now
	return s, c
}

// metadata asks for a study's metadata as patient pid with a study token.
func metadata(t *testing.T, s imagesource.Source, study, pid, token string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	p, err := wadopath.Parse("studies/" + study + "/metadata")
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/wado/"+token+"/studies/"+study+"/metadata", nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	req := imagesource.Retrieval{Path: p, PublicBase: "https://gw.example/r/wado/" + token, StudyUID: study,
		PatientIDs: []pacskey.PatientKey{pacskey.PatientKey(pid)}}
	w := httptest.NewRecorder()
	if err := s.Retrieve(w, r, req); err != nil {
		if e, ok := imagesource.AsError(err); ok {
			w.Code = e.Status
			return w
		}
		t.Fatal(err)
	}
	return w
}

func TestRepeatedMetadataComesFromCacheWithTheRequestsOwnToken(t *testing.T) {
	pacs := newFakePACS()
	pacs.add("1.1", "P1", 3)
	s, _ := newCache(t, pacs, Config{})

	first := metadata(t, s, "1.1", "P1", "tokA")
	second := metadata(t, s, "1.1", "P1", "tokB")
	if first.Code != 200 || second.Code != 200 {
		t.Fatalf("status %d, %d", first.Code, second.Code)
	}
	if n := pacs.retrieves.Load(); n != 1 {
		t.Fatalf("the PACS was asked %d times, want 1", n)
	}
	if strings.Contains(second.Body.String(), "tokA") || !strings.Contains(second.Body.String(), "https://gw.example/r/wado/tokB/studies/1.1/series/1/instances/1.2.2/bulk") {
		t.Fatalf("second answer does not carry its own token: %s", second.Body.String())
	}
	if strings.Contains(second.Body.String(), ".invalid") {
		t.Fatalf("placeholder leaked: %s", second.Body.String())
	}
	if first.Header().Get("ETag") == "" || first.Header().Get("ETag") == second.Header().Get("ETag") {
		t.Fatalf("ETags %q %q: want set and different per study token URL", first.Header().Get("ETag"), second.Header().Get("ETag"))
	}
	if got := second.Header().Get("Cache-Control"); got != "private, no-cache" {
		t.Fatalf("Cache-Control %q", got)
	}
	if st := s.Stats(); st.Hits != 1 || st.Misses != 1 || st.Bytes == 0 || st.Entries != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAnotherPatientIsNotServedTheCachedMetadata(t *testing.T) {
	pacs := newFakePACS()
	pacs.add("1.1", "P1", 2)
	s, _ := newCache(t, pacs, Config{})
	if w := metadata(t, s, "1.1", "P1", "tokA"); w.Code != 200 {
		t.Fatalf("owner: %d", w.Code)
	}
	// A request that passed the gateway's checks for another patient (a
	// study token for 1.1 bound to P2, say after the study moved) must get
	// what the PACS path gives it: a refusal, not the cached answer.
	w := metadata(t, s, "1.1", "P2", "tokX")
	if w.Code == 200 || strings.Contains(w.Body.String(), "P1") {
		t.Fatalf("another patient got %d %s", w.Code, w.Body.String())
	}
	if n := pacs.retrieves.Load(); n != 2 {
		t.Fatalf("the PACS was asked %d times, want 2 (the other patient's request goes to it)", n)
	}
}

func TestIfNoneMatchGets304WithoutThePACS(t *testing.T) {
	pacs := newFakePACS()
	pacs.add("1.1", "P1", 2)
	s, _ := newCache(t, pacs, Config{})
	first := metadata(t, s, "1.1", "P1", "tokA")
	etag := first.Header().Get("ETag")
	w := metadata(t, s, "1.1", "P1", "tokA", "If-None-Match", etag)
	if w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Fatalf("got %d with %d bytes, want 304", w.Code, w.Body.Len())
	}
	if pacs.retrieves.Load() != 1 || pacs.versions.Load() != 1 {
		t.Fatalf("PACS asked: %d retrieves, %d version queries", pacs.retrieves.Load(), pacs.versions.Load())
	}
	// Another token's URL has another ETag: a full answer.
	if w := metadata(t, s, "1.1", "P1", "tokB", "If-None-Match", etag); w.Code != 200 {
		t.Fatalf("other token: %d", w.Code)
	}
}

func TestPastTTLRevalidatesCheaplyAndSeesANewInstance(t *testing.T) {
	pacs := newFakePACS()
	pacs.add("1.1", "P1", 2)
	s, clk := newCache(t, pacs, Config{TTL: 30 * time.Second})
	metadata(t, s, "1.1", "P1", "t")
	clk.advance(31 * time.Second)
	if w := metadata(t, s, "1.1", "P1", "t"); w.Code != 200 || strings.Count(w.Body.String(), "00080018") != 2 {
		t.Fatalf("revalidated answer: %d %s", w.Code, w.Body.String())
	}
	if pacs.retrieves.Load() != 1 || s.Stats().Revalidations != 1 {
		t.Fatalf("retrieves %d, stats %+v: want a revalidation, not a refetch", pacs.retrieves.Load(), s.Stats())
	}
	// Fresh again: no question to the PACS at all.
	versions := pacs.versions.Load()
	metadata(t, s, "1.1", "P1", "t")
	if pacs.versions.Load() != versions {
		t.Fatal("a fresh entry was revalidated")
	}
	// The study gains an instance: seen only after ttl, then at once.
	pacs.add("1.1", "P1", 3)
	if w := metadata(t, s, "1.1", "P1", "t"); strings.Count(w.Body.String(), "00080018") != 2 {
		t.Fatal("within ttl the cached answer is served")
	}
	clk.advance(31 * time.Second)
	if w := metadata(t, s, "1.1", "P1", "t"); strings.Count(w.Body.String(), "00080018") != 3 {
		t.Fatalf("after ttl the new instance is missing: %s", w.Body.String())
	}
	if pacs.retrieves.Load() != 2 {
		t.Fatalf("retrieves %d, want 2", pacs.retrieves.Load())
	}
}

func TestEntriesExpireAndMemoryReturns(t *testing.T) {
	pacs := newFakePACS()
	for i := range 20 {
		pacs.add(fmt.Sprintf("1.%d", i), "P1", 5)
	}
	s, clk := newCache(t, pacs, Config{TTL: time.Second})
	for i := range 20 {
		metadata(t, s, fmt.Sprintf("1.%d", i), "P1", "t")
	}
	if _, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"P1"}}); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Entries != 21 || st.Bytes == 0 {
		t.Fatalf("stats %+v", st)
	}
	clk.advance(s.maxAge())
	s.dropExpired()
	if st := s.Stats(); st.Entries != 0 || st.Bytes != 0 {
		t.Fatalf("after expiry: %+v", st)
	}
}

func TestSizeIsNeverExceededUnderConcurrentLoad(t *testing.T) {
	pacs := newFakePACS()
	pacs.pad = 2000
	const studies = 200
	for i := range studies {
		pacs.add(fmt.Sprintf("1.%d", i), "P1", 10) // ~25 KB each
	}
	s, _ := newCache(t, pacs, Config{Size: MinSize})
	var wg sync.WaitGroup
	var over atomic.Int64
	for c := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3 * studies {
				uid := fmt.Sprintf("1.%d", (i*7+c*13)%studies)
				w := metadata(t, s, uid, "P1", "t")
				if w.Code != 200 || !strings.Contains(w.Body.String(), uid) {
					t.Errorf("%s: %d", uid, w.Code)
					return
				}
				if b := s.Stats().Bytes; b > MinSize {
					over.Store(b)
				}
			}
		}()
	}
	wg.Wait()
	if over.Load() != 0 {
		t.Fatalf("the cache held %d bytes, size %d", over.Load(), MinSize)
	}
	st := s.Stats()
	if st.Entries == 0 || st.Entries >= studies || st.Bytes > MinSize {
		t.Fatalf("stats %+v: want some, not all, studies kept", st)
	}
}

func TestSearchIsKeyedByThePatientsKeys(t *testing.T) {
	pacs := newFakePACS()
	pacs.add("1.1", "P1", 1)
	pacs.add("2.1", "P2", 1)
	s, clk := newCache(t, pacs, Config{TTL: 10 * time.Second})
	ctx := context.Background()
	find := func(keys ...pacskey.PatientKey) []imagesource.Study {
		st, err := s.FindStudies(ctx, imagesource.Query{PatientIDs: keys})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	a := find("P1")
	b := find("P1")
	if len(a) != 1 || len(b) != 1 || pacs.searches.Load() != 1 {
		t.Fatalf("repeat search: %d %d, PACS asked %d times", len(a), len(b), pacs.searches.Load())
	}
	other := find("P2")
	if len(other) != 1 || other[0].Attributes.String(dicomjson.TagPatientID) != "P2" || pacs.searches.Load() != 2 {
		t.Fatalf("other patient got %v", other)
	}
	clk.advance(10 * time.Second)
	find("P1")
	if pacs.searches.Load() != 3 {
		t.Fatal("a search answer was served past ttl")
	}
}

func TestErrorsAndOtherResourcesAreNotCached(t *testing.T) {
	pacs := newFakePACS()
	pacs.add("1.1", "P1", 1)
	s, _ := newCache(t, pacs, Config{})
	for range 2 {
		if w := metadata(t, s, "9.9", "P1", "t"); w.Code != 404 {
			t.Fatalf("missing study: %d", w.Code)
		}
	}
	p, _ := wadopath.Parse("studies/1.1/series/1/instances/1.2.0/frames/1")
	for range 2 {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/x", nil)
		if err := s.Retrieve(w, r, imagesource.Retrieval{Path: p, PublicBase: "https://gw/w/t", StudyUID: "1.1", PatientIDs: []pacskey.PatientKey{"P1"}}); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Entries != 0 || pacs.retrieves.Load() != 4 {
		t.Fatalf("stats %+v, retrieves %d", st, pacs.retrieves.Load())
	}
}

func TestCloseReleasesEverything(t *testing.T) {
	pacs := newFakePACS()
	pacs.add("1.1", "P1", 1)
	s, _ := newCache(t, pacs, Config{})
	metadata(t, s, "1.1", "P1", "t")
	_ = s.Close()
	if st := s.Stats(); st.Entries != 0 || st.Bytes != 0 {
		t.Fatalf("after Close: %+v", st)
	}
	if w := metadata(t, s, "1.1", "P1", "t"); w.Code != 200 || s.Stats().Entries != 0 {
		t.Fatal("after Close the source must still answer, uncached")
	}
}

func TestConfigBounds(t *testing.T) {
	if _, err := New(newFakePACS(), Config{Size: 1000}); err == nil {
		t.Fatal("a tiny size was accepted")
	}
	if _, err := New(newFakePACS(), Config{TTL: -time.Second}); err == nil {
		t.Fatal("a negative ttl was accepted")
	}
}
