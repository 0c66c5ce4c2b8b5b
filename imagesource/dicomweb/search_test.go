package dicomweb

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/caddyserver/caddy/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// nopProxy is a Proxy for tests that only search.
type nopProxy struct{}

func (nopProxy) ServeHTTP(http.ResponseWriter, *http.Request, caddyhttp.Handler) error {
	panic("nopProxy: not for retrieves")
}

func study(uid, patientID string) dicomjson.Dataset {
	ds := dicomjson.Dataset{}
	ds.SetString(dicomjson.TagStudyInstanceUID, "UI", uid)
	ds.SetString(dicomjson.TagPatientID, "LO", patientID)
	ds.SetString(dicomjson.TagRetrieveURL, "UR", "http://pacs.internal/dicom-web/studies/"+uid)
	return ds
}

func series(studyUID, uid string) dicomjson.Dataset {
	ds := dicomjson.Dataset{}
	ds.SetString(dicomjson.TagStudyInstanceUID, "UI", studyUID)
	ds.SetString(dicomjson.TagSeriesInstanceUID, "UI", uid)
	ds.SetString(dicomjson.TagModality, "LO", "CT")
	return ds
}

func writeList(w http.ResponseWriter, list []dicomjson.Dataset) {
	w.Header().Set("Content-Type", "application/dicom+json")
	if list == nil {
		list = []dicomjson.Dataset{}
	}
	json.NewEncoder(w).Encode(list)
}

// fakePACS answers QIDO-RS like a lax PACS: PatientID matches
// case-insensitively and with a trailing * wildcard.
type fakePACS struct {
	t       *testing.T
	studies []dicomjson.Dataset
	calls   atomic.Int32
	mu      sync.Mutex
	queries []string // raw queries of /studies
	auth    []string
	// seriesHook, when set, runs before a series answer.
	seriesHook func(r *http.Request)
}

func (p *fakePACS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.calls.Add(1)
	p.mu.Lock()
	p.auth = append(p.auth, r.Header.Get("Authorization"))
	p.mu.Unlock()
	if r.Header.Get("Accept") != "application/dicom+json" {
		p.t.Errorf("QIDO Accept = %q", r.Header.Get("Accept"))
	}
	path := strings.TrimPrefix(r.URL.Path, "/dicom-web/")
	if path == "studies" {
		p.mu.Lock()
		p.queries = append(p.queries, r.URL.RawQuery)
		p.mu.Unlock()
		pid, hasPID := r.URL.Query()["PatientID"]
		var out []dicomjson.Dataset
		for _, st := range p.studies {
			if hasPID {
				want := strings.ToLower(pid[0])
				got := strings.ToLower(st.String(dicomjson.TagPatientID))
				if strings.HasSuffix(want, "*") {
					if !strings.HasPrefix(got, strings.TrimSuffix(want, "*")) {
						continue
					}
				} else if got != want {
					continue
				}
			}
			out = append(out, st)
		}
		writeList(w, out)
		return
	}
	if strings.HasPrefix(path, "studies/") && strings.HasSuffix(path, "/series") {
		if p.seriesHook != nil {
			p.seriesHook(r)
		}
		uid := strings.TrimSuffix(strings.TrimPrefix(path, "studies/"), "/series")
		writeList(w, []dicomjson.Dataset{series(uid, uid+".1"), series(uid, uid+".2")})
		return
	}
	http.NotFound(w, r)
}

func newTestSource(t *testing.T, h http.Handler, cfg Config) (*Source, *httptest.Server) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	cfg.BaseURL = srv.URL + "/dicom-web"
	s, err := New(cfg, nopProxy{}, srv.Client(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, srv
}

func studyUIDs(studies []imagesource.Study) []string {
	var out []string
	for _, st := range studies {
		out = append(out, st.Attributes.String(dicomjson.TagStudyInstanceUID))
	}
	return out
}

func TestFindStudiesDropsStudiesOfOtherPatients(t *testing.T) {
	pacs := &fakePACS{t: t, studies: []dicomjson.Dataset{
		study("1.1", "SIA-MRN-0001"),
		study("1.2", "sia-mrn-0001"), // case decoy: a lax PACS returns it
		study("1.3", "SIA-MRN-00011"),
		study("1.4", "OTHER"),
	}}
	s, _ := newTestSource(t, pacs, Config{Username: "gw", Password: "s3cret"})
	got, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"SIA-MRN-0001"}})
	if err != nil {
		t.Fatal(err)
	}
	if uids := studyUIDs(got); len(uids) != 1 || uids[0] != "1.1" {
		t.Fatalf("studies = %v, want only 1.1 (the case decoy 1.2 must be dropped)", uids)
	}
	if n := len(got[0].Series); n != 2 {
		t.Errorf("series = %d, want 2", n)
	}
	if got[0].Attributes.Get(dicomjson.TagRetrieveURL) != nil || got[0].Series[0].Attributes.Get(dicomjson.TagRetrieveURL) != nil {
		t.Error("the PACS's RetrieveURL was passed on")
	}
	q := pacs.queries[0]
	if !strings.Contains(q, "PatientID=SIA-MRN-0001") {
		t.Errorf("QIDO query %q lacks the exact PatientID", q)
	}
	for _, tag := range []string{"00081030", "00080061", "00201206", "00201208", "00080201", "00100021", "00100010", "00080020", "00080030", "00080050"} {
		if !strings.Contains(q, tag) {
			t.Errorf("QIDO query %q does not include field %s", q, tag)
		}
	}
	for _, a := range pacs.auth {
		if a != "Basic Z3c6czNjcmV0" {
			t.Errorf("QIDO Authorization = %q, want the configured basic credentials", a)
		}
	}
}

func TestFindStudiesRefusesPatternKeysWithoutCallingThePACS(t *testing.T) {
	pacs := &fakePACS{t: t, studies: []dicomjson.Dataset{study("1.1", "A")}}
	s, _ := newTestSource(t, pacs, Config{})
	for _, key := range []string{"", " ", "A*", "A?", "A,B", `A\B`, "*", "A%2A", "A&PatientID=B"} {
		_, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"A", pacskey.PatientKey(key)}})
		e, ok := imagesource.AsError(err)
		if !ok || e.Status != http.StatusBadRequest {
			t.Errorf("key %q: err = %v, want a 400 imagesource.Error", key, err)
		}
	}
	_, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"A"}, StudyUIDs: []string{"1.*"}})
	if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusBadRequest {
		t.Errorf("study UID pattern: err = %v, want 400", err)
	}
	if n := pacs.calls.Load(); n != 0 {
		t.Errorf("the PACS was called %d times for refused keys", n)
	}
	// No key at all: nothing to ask.
	got, err := s.FindStudies(context.Background(), imagesource.Query{})
	if err != nil || len(got) != 0 || pacs.calls.Load() != 0 {
		t.Errorf("empty query: %v, %v, %d calls", got, err, pacs.calls.Load())
	}
}

func TestFindStudiesAllAndStudyUIDs(t *testing.T) {
	pacs := &fakePACS{t: t, studies: []dicomjson.Dataset{study("1.1", "A"), study("1.2", "B"), study("1.3", "C")}}
	s, _ := newTestSource(t, pacs, Config{})
	got, err := s.FindStudies(context.Background(), imagesource.Query{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Errorf("all studies: %v", studyUIDs(got))
	}
	if strings.Contains(pacs.queries[0], "PatientID") {
		t.Errorf("all-studies query %q names a PatientID", pacs.queries[0])
	}
	// The fake ignores StudyInstanceUID: the source filters after.
	got, err = s.FindStudies(context.Background(), imagesource.Query{All: true, StudyUIDs: []string{"1.2", "1.3"}})
	if err != nil {
		t.Fatal(err)
	}
	if uids := studyUIDs(got); len(uids) != 2 || uids[0] != "1.2" || uids[1] != "1.3" {
		t.Errorf("StudyUIDs filter: %v", uids)
	}
	if q := pacs.queries[1]; !strings.Contains(q, "StudyInstanceUID=1.2,1.3") {
		t.Errorf("query %q does not ask for the study UIDs", q)
	}
}

func TestFindStudiesNoContent(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
	}{
		{"204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }},
		{"empty list", func(w http.ResponseWriter, r *http.Request) { writeList(w, nil) }},
		{"empty body", func(w http.ResponseWriter, r *http.Request) {}},
	} {
		s, _ := newTestSource(t, tc.h, Config{})
		got, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"A"}})
		if err != nil || len(got) != 0 {
			t.Errorf("%s: studies %v, err %v; want none and no error", tc.name, got, err)
		}
	}
}

func TestFindStudiesSeriesConcurrentlyAndBounded(t *testing.T) {
	const limit, nStudies = 3, 10
	var studies []dicomjson.Dataset
	for i := 0; i < nStudies; i++ {
		studies = append(studies, study(fmt.Sprintf("1.%d", i+1), "A"))
	}
	var inflight, peak atomic.Int32
	reached := make(chan struct{})
	var once sync.Once
	pacs := &fakePACS{t: t, studies: studies}
	pacs.seriesHook = func(r *http.Request) {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		if n == limit {
			once.Do(func() { close(reached) })
		}
		select {
		case <-reached:
		case <-time.After(5 * time.Second):
			t.Error("series queries are not issued concurrently: the limit was never reached")
		}
	}
	s, _ := newTestSource(t, pacs, Config{MaxConcurrentQIDO: limit})
	got, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"A"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != nStudies {
		t.Fatalf("%d studies, want %d", len(got), nStudies)
	}
	for i, st := range got {
		if len(st.Series) != 2 || st.Series[0].Attributes.String(dicomjson.TagStudyInstanceUID) != studyUIDs(got)[i] {
			t.Errorf("study %d has the wrong series: %v", i, st.Series)
		}
	}
	if p := peak.Load(); p != limit {
		t.Errorf("peak concurrent series queries = %d, want %d", p, limit)
	}
}

func TestFindStudiesUpstreamErrors(t *testing.T) {
	const password = "pacs-password-123"
	cases := []struct {
		name       string
		h          http.HandlerFunc
		status     int
		msg        string
		retryAfter time.Duration
	}{
		{"401", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
			http.Error(w, "no", http.StatusUnauthorized)
		}, 502, "credentials (HTTP 401)", 0},
		{"403", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) }, 502, "credentials (HTTP 403)", 0},
		{"503 with Retry-After", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "7")
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}, 503, "unavailable", 7 * time.Second},
		{"503 without Retry-After", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}, 503, "unavailable", DefaultRetryAfter},
		{"500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }, 502, "HTTP 500", 0},
		{"404", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, 502, "no QIDO-RS service", 0},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) }, 502, "not DICOM JSON", 0},
		{"series fail", func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/series") {
				http.Error(w, "boom", 500)
				return
			}
			writeList(w, []dicomjson.Dataset{study("1.1", "A")})
		}, 502, "HTTP 500", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestSource(t, tc.h, Config{Username: "gw", Password: password})
			_, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"A"}})
			e, ok := imagesource.AsError(err)
			if !ok {
				t.Fatalf("err = %v, want an imagesource.Error", err)
			}
			if e.Status != tc.status || !strings.Contains(e.Message, tc.msg) || e.RetryAfter != tc.retryAfter {
				t.Errorf("got %d %q retry %v; want %d, a message containing %q, retry %v", e.Status, e.Message, e.RetryAfter, tc.status, tc.msg, tc.retryAfter)
			}
			if strings.Contains(e.Error(), password) {
				t.Errorf("error %q holds the PACS password", e.Error())
			}
		})
	}
}

func TestFindStudiesTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	s, _ := newTestSource(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}), Config{QIDOTimeout: caddy.Duration(100 * time.Millisecond)})
	_, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"A"}})
	if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusGatewayTimeout || !strings.Contains(e.Message, "100ms") {
		t.Fatalf("err = %v, want a 504 naming the 100ms bound", err)
	}
}

func TestFindStudiesUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s, err := New(Config{BaseURL: "http://" + addr + "/dicom-web"}, nopProxy{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"A"}})
	e, ok := imagesource.AsError(err)
	if !ok || e.Status != http.StatusBadGateway || !strings.Contains(e.Message, "connection refused") {
		t.Fatalf("err = %v, want a 502 naming the refused connection", err)
	}
	if strings.Contains(e.Message, addr) {
		t.Errorf("message %q names the PACS's address", e.Message)
	}
}

func TestBearerCredentials(t *testing.T) {
	pacs := &fakePACS{t: t}
	s, _ := newTestSource(t, pacs, Config{Bearer: "tok-123"})
	if _, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"A"}}); err != nil {
		t.Fatal(err)
	}
	if pacs.auth[0] != "Bearer tok-123" {
		t.Errorf("Authorization = %q", pacs.auth[0])
	}
}

func TestNewChecksConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{BaseURL: "ftp://pacs/dicom-web"},
		{BaseURL: "http:///dicom-web"},
		{BaseURL: "http://user:pw@pacs/dicom-web"},
		{BaseURL: "http://pacs/dicom-web?x=1"},
		{BaseURL: "http://pacs/dicom-web", Username: "u", Bearer: "t"},
		{BaseURL: "http://pacs/dicom-web", Password: "p"},
		{BaseURL: "http://pacs/dicom-web", PACSURLs: []string{"nope"}},
	} {
		if _, err := New(cfg, nopProxy{}, nil, nil); err == nil {
			t.Errorf("New(%+v) accepted a bad config", cfg)
		}
	}
	if _, err := New(Config{BaseURL: "http://pacs/dicom-web"}, nil, nil, nil); err == nil {
		t.Error("New accepted a nil proxy")
	}
	s, err := New(Config{BaseURL: "http://pacs:8042/dicom-web/"}, nopProxy{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.BaseURL() != "http://pacs:8042/dicom-web" {
		t.Errorf("BaseURL = %q", s.BaseURL())
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":                              DefaultRetryAfter,
		"junk":                          DefaultRetryAfter,
		"12":                            12 * time.Second,
		"0":                             time.Second,
		"999999":                        time.Hour,
		"Thu, 01 Jan 2026 00:00:30 GMT": 30 * time.Second,
	} {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestFindStudiesSeriesOrderAndFields(t *testing.T) {
	numbered := func(uid string, n int) dicomjson.Dataset {
		ds := series("1.1", uid)
		if n > 0 {
			ds.SetInt(dicomjson.TagSeriesNumber, "IS", n)
		}
		return ds
	}
	var includefield string
	srv := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/dicom-web/studies":
			writeList(w, []dicomjson.Dataset{study("1.1", "A")})
		case "/dicom-web/studies/1.1/series":
			includefield = r.URL.Query().Get("includefield")
			// The PACS's own order: not by number.
			writeList(w, []dicomjson.Dataset{numbered("1.1.9", 0), numbered("1.1.3", 10), numbered("1.1.5", 2), numbered("1.1.4", 2), numbered("1.1.1", 0)})
		default:
			http.NotFound(w, r)
		}
	})
	s, _ := newTestSource(t, srv, Config{})
	got, err := s.FindStudies(context.Background(), imagesource.Query{All: true})
	if err != nil || len(got) != 1 {
		t.Fatalf("FindStudies: %v, %d studies", err, len(got))
	}
	var order []string
	for _, se := range got[0].Series {
		order = append(order, se.Attributes.String(dicomjson.TagSeriesInstanceUID))
	}
	if want := "1.1.4 1.1.5 1.1.3 1.1.1 1.1.9"; strings.Join(order, " ") != want {
		t.Errorf("series order %v, want %s (by number, unnumbered last, then UID)", order, want)
	}
	if !strings.Contains(includefield, "00180015") {
		t.Errorf("series includefield %q does not ask for BodyPartExamined", includefield)
	}
}
