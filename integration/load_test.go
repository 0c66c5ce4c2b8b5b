package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

// Load test knobs: SMART_IMAGING_LOAD_SECONDS (default 10) and
// SMART_IMAGING_LOAD_CLIENTS (default 200).
const (
	loadSecondsEnv = "SMART_IMAGING_LOAD_SECONDS"
	loadClientsEnv = "SMART_IMAGING_LOAD_CLIENTS"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// loadConfig has one route per patient of the demo set, /lp0 … /lpN,
// each bound to that patient, all in front of the same Orthanc. Logs go to
// a file (an audit line per request).
func loadConfig(pacs *orthanc.Server, mrns []string, logFile string) string {
	key := base64.StdEncoding.EncodeToString(testKey)
	var routes strings.Builder
	for i, mrn := range mrns {
		fmt.Fprintf(&routes, `	handle_path /lp%d/* {
		smart_imaging {
			authz mock {
				patient load-patient-%d mrn %s
			}
			images dicomweb %s {
				lookup studies-by-mrn
				basic_auth %s %s
			}
			study_token_key %s
		}
	}
`, i, i, mrn, pacs.DICOMwebURL(), pacs.Username(), pacs.Password(), key)
	}
	return fmt.Sprintf(testGlobals+`	grace_period 2s
%s}
http://localhost:9080 {
%s}
`, globalLogOption(logFile), routes.String())
}

// loadPatient is what one client knows about its patient.
type loadPatient struct {
	route   string
	id      string
	data    *demoPatientData
	studies map[string]bool
}

// loadStats collects the outcome of the run.
type loadStats struct {
	requests     atomic.Int64
	errors       atomic.Int64
	crossPatient atomic.Int64
	mu           sync.Mutex
	latencies    []time.Duration
	samples      []string // first error messages
}

func (s *loadStats) fail(cross bool, format string, args ...any) {
	if cross {
		s.crossPatient.Add(1)
	} else {
		s.errors.Add(1)
	}
	s.mu.Lock()
	if len(s.samples) < 10 {
		s.samples = append(s.samples, fmt.Sprintf(format, args...))
	}
	s.mu.Unlock()
}

// loadSample is the process at one instant of the run.
type loadSample struct {
	at         time.Duration
	heapInuse  uint64
	goroutines int
}

func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the load test in -short mode")
	}
	pacs, rows := startDemoPACS(t)
	pats := demoPatients(rows)
	mrns := keys(pats)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	tc := caddytest.NewTester(t)
	tc.InitServer(loadConfig(pacs, mrns, logFile), "caddyfile")

	duration := time.Duration(envInt(loadSecondsEnv, 10)) * time.Second
	defaultClients := 200
	if raceDetector {
		// Under -race the gateway serves several times slower: 200 clients
		// would queue up and read as growth. 25 still run it concurrently.
		defaultClients = 25
	}
	clients := envInt(loadClientsEnv, defaultClients)
	var patients []loadPatient
	for i, mrn := range mrns {
		patients = append(patients, loadPatient{route: fmt.Sprintf("%s/lp%d", base, i), id: fmt.Sprintf("load-patient-%d", i),
			data: pats[mrn], studies: pats[mrn].studySet()})
	}
	client := newRawClient(clients + 16)
	defer client.CloseIdleConnections()

	// Every patient's Endpoints, found once (each client searches again
	// in the run).
	endpoints := make([]map[string]string, len(patients))
	for i, p := range patients {
		endpoints[i] = legitSearch(t, client, p.route+"/fhir/ImagingStudy?patient="+p.id, "", p.data.studies)
	}

	stats := &loadStats{}
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	start := time.Now()

	// Sample the heap and the goroutines through the run.
	var samples []loadSample
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				samples = append(samples, loadSample{time.Since(start), ms.HeapInuse, runtime.NumGoroutine()})
			}
		}
	}()

	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			pi := c % len(patients)
			loadClient(ctx, client, patients[pi], endpoints[pi], uint64(c), stats)
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	<-sampled

	// Latency percentiles.
	stats.mu.Lock()
	lat := slices.Clone(stats.latencies)
	stats.mu.Unlock()
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	// First and last quarter of the run.
	quarter := func(from, to time.Duration) (heap uint64, g int, n int) {
		for _, s := range samples {
			if s.at >= from && s.at < to {
				heap += s.heapInuse
				g += s.goroutines
				n++
			}
		}
		if n > 0 {
			heap /= uint64(n)
			g /= n
		}
		return heap, g, n
	}
	h1, g1, n1 := quarter(0, duration/4)
	h4, g4, n4 := quarter(duration-duration/4, duration+time.Second)

	reqs, errs, cross := stats.requests.Load(), stats.errors.Load(), stats.crossPatient.Load()
	summary := fmt.Sprintf("load: %d requests in %.1fs (%.0f/s) by %d clients for %d patients, %d errors, %d cross-patient, p50 %v, p99 %v, heap in use %d→%d MiB, goroutines %d→%d (first→last quarter)",
		reqs, elapsed.Seconds(), float64(reqs)/elapsed.Seconds(), clients, len(patients), errs, cross,
		pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), h1>>20, h4>>20, g1, g4)
	t.Log(summary)
	fmt.Println(summary)
	for _, s := range stats.samples {
		t.Errorf("load failure: %s", s)
	}
	if errs > 0 || cross > 0 {
		t.Errorf("%d errors and %d cross-patient answers, want none", errs, cross)
	}
	if reqs < int64(clients) {
		t.Errorf("only %d requests were made", reqs)
	}
	if n1 == 0 || n4 == 0 {
		t.Fatalf("too few samples to compare the quarters (%d, %d)", n1, n4)
	}
	// Flat: the last quarter may not hold much more than the first.
	if h4 > h1+h1/2+(32<<20) {
		t.Errorf("heap in use grew from %d MiB (first quarter) to %d MiB (last quarter)", h1>>20, h4>>20)
	}
	if g4 > g1+g1/4+50 {
		t.Errorf("goroutines grew from %d (first quarter) to %d (last quarter)", g1, g4)
	}
	for i, l := range readLogLines(t, logFile) {
		if strings.Contains(l, "panic") {
			t.Errorf("log line %d reports a panic: %.300s", i, l)
			break
		}
	}
}

// loadClient mixes searches and retrieves for one patient until ctx ends,
// checking that every answer belongs to that patient.
func loadClient(ctx context.Context, c *http.Client, p loadPatient, eps map[string]string, seed uint64, stats *loadStats) {
	rnd := rand.New(rand.NewPCG(seed, 0x5eed))
	studies := p.data.studies
	for ctx.Err() == nil {
		study := studies[rnd.IntN(len(studies))]
		insts := p.data.rowsOf(study)
		in := insts[rnd.IntN(len(insts))]
		addr := eps[study] + "/studies/" + study
		var (
			u, accept string
			check     func(resp *http.Response, body []byte) (bool, error) // cross-patient?, error
		)
		switch op := rnd.IntN(100); {
		case op < 35:
			u, accept = p.route+"/fhir/ImagingStudy?patient="+p.id, "application/fhir+json"
			check = func(_ *http.Response, body []byte) (bool, error) {
				got := bundleStudyUIDs(body)
				for _, uid := range got {
					if !p.studies[uid] {
						return true, fmt.Errorf("search for %s lists study %s", p.data.mrn, uid)
					}
				}
				if len(got) != len(studies) {
					return false, fmt.Errorf("search for %s lists %d studies, want %d", p.data.mrn, len(got), len(studies))
				}
				return false, nil
			}
		case op < 60:
			u, accept = addr+"/metadata", "application/dicom+json"
			check = func(_ *http.Response, body []byte) (bool, error) {
				list, err := dicomjson.DecodeList(body)
				if err != nil || len(list) != len(insts) {
					return false, fmt.Errorf("metadata of %s: %d datasets, %v; want %d", study, len(list), err, len(insts))
				}
				for _, ds := range list {
					if ds.String(dicomjson.TagPatientID) != p.data.mrn || ds.String(dicomjson.TagStudyInstanceUID) != study {
						return true, fmt.Errorf("metadata of %s (patient %s) holds patient %q study %q", study, p.data.mrn,
							ds.String(dicomjson.TagPatientID), ds.String(dicomjson.TagStudyInstanceUID))
					}
				}
				return false, nil
			}
		case op < 85:
			u, accept = addr+"/series/"+in.series+"/instances/"+in.sop, `multipart/related; type="application/dicom"`
			check = func(resp *http.Response, body []byte) (bool, error) {
				return checkParts(resp, body, 1, [][]byte{[]byte(in.sop), []byte(study), []byte(p.data.mrn)})
			}
		case op < 93:
			u, accept = addr+"/series/"+in.series+"/instances/"+in.sop+"/frames/1", `multipart/related; type="application/octet-stream"`
			check = func(resp *http.Response, body []byte) (bool, error) {
				return checkParts(resp, body, 1, nil)
			}
		default:
			u, accept = addr, `multipart/related; type="application/dicom"`
			check = func(resp *http.Response, body []byte) (bool, error) {
				return checkParts(resp, body, len(insts), [][]byte{[]byte(study), []byte(p.data.mrn)})
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		req.Header.Set("Accept", accept)
		t0 := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return // the run ended mid-request
			}
			stats.requests.Add(1)
			stats.fail(false, "GET %s: %v", u, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ctx.Err() != nil && err != nil {
			return
		}
		d := time.Since(t0)
		stats.requests.Add(1)
		stats.mu.Lock()
		stats.latencies = append(stats.latencies, d)
		stats.mu.Unlock()
		if err != nil || resp.StatusCode != http.StatusOK {
			stats.fail(false, "GET %s: HTTP %d, %v: %.200s", u, resp.StatusCode, err, body)
			continue
		}
		if cross, err := check(resp, body); err != nil {
			stats.fail(cross, "%v", err)
		}
	}
}

// checkParts reads a multipart answer: want parts, each holding every
// needle (cross-patient when one is missing).
func checkParts(resp *http.Response, body []byte, want int, needles [][]byte) (bool, error) {
	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || params["boundary"] == "" {
		return false, fmt.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	n := 0
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return false, fmt.Errorf("part %d: %w", n, err)
		}
		b, err := io.ReadAll(part)
		if err != nil {
			return false, fmt.Errorf("part %d: %w", n, err)
		}
		for _, nd := range needles {
			if !bytes.Contains(b, nd) {
				return true, fmt.Errorf("part %d of %s lacks %q", n, resp.Request.URL.Path, nd)
			}
		}
		n++
	}
	if n != want {
		return false, fmt.Errorf("%d parts, want %d", n, want)
	}
	return false, nil
}
