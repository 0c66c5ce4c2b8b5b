package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// counts measures calls rather than time: upstream QIDO calls per search,
// introspection calls for one fresh token under a burst, and per cache
// period on the /ttl route (cache_ttl 1s).
func (e *env) counts(ctx context.Context) error {
	c := &e.res.Counts
	c.StudiesPerSearch = len(e.ds.studies)
	buf := make([]byte, 256<<10)
	client := &http.Client{}

	// QIDO calls per search, at the counting proxy (route /count).
	search := get(e.gw.url("/count/fhir/ImagingStudy?patient="+benchPatient), bearerHeader(e.token, ""))
	if _, err := search(ctx, client, buf); err != nil { // caches token and patient on that route
		return fmt.Errorf("search on /count: %w", err)
	}
	const sequential = 20
	e.counter.reset()
	for i := 0; i < sequential; i++ {
		if _, err := search(ctx, client, buf); err != nil {
			return fmt.Errorf("search on /count: %w", err)
		}
	}
	c.QIDOStudyCallsPerSearch = float64(e.counter.studies.Load()) / sequential
	c.QIDOSeriesCallsPerSearch = float64(e.counter.series.Load()) / sequential
	c.QIDOCallsPerSearch = float64(e.counter.studies.Load()+e.counter.series.Load()+e.counter.other.Load()) / sequential
	c.QIDOMaxInFlightOneSearch = e.counter.maxInflight.Load()

	// The same under load: 16 clients for a second; every call counted,
	// every search sent counted (cut-off ones too, so this is a bound).
	e.counter.reset()
	r := runLoad(ctx, search, 16, 0, time.Second, cpuPIDs{}, nil)
	if r.Sent > 0 {
		c.QIDOCallsPerSearchC16 = float64(e.counter.studies.Load()+e.counter.series.Load()+e.counter.other.Load()) / float64(r.Sent)
	}

	// A fresh token hit by 64 clients at once: one introspection expected.
	// Study addresses are bound to the token that searched; /count binds
	// them to the grant, which the fresh token shares with e.token.
	countWADO, err := e.discover(ctx, "count", benchPatient, e.token)
	if err != nil {
		return err
	}
	fresh := e.ehr.IssueToken(testehr.TokenSpec{Patient: benchPatient})
	st := e.ds.wadoStudy
	frames := fmt.Sprintf("/studies/%s/series/%s/instances/%s/frames/%d", st, e.ds.frameSeries, e.ds.frameUID, e.ds.frameNumber)
	burstOp := get(countWADO[st]+frames, bearerHeader(fresh, acceptFrames))
	i0 := e.ehr.Calls(testehr.Introspect)
	sent, errs := runCount(ctx, burstOp, 64, e.o.burstRequests)
	c.BurstRequests = sent
	c.BurstErrors = errs
	c.BurstIntrospections = e.ehr.Calls(testehr.Introspect) - i0

	// Route /ttl caches decisions for 1 s: one call per second expected,
	// whatever the concurrency.
	ttlTok := e.ehr.IssueToken(testehr.TokenSpec{Patient: benchPatient})
	ttlWADO, err := e.discover(ctx, "ttl", benchPatient, ttlTok)
	if err != nil {
		return err
	}
	ttlOp := get(ttlWADO[st]+frames, bearerHeader(ttlTok, acceptFrames))
	dur := 3500 * time.Millisecond
	if e.o.quick {
		dur = 2500 * time.Millisecond
	}
	i0 = e.ehr.Calls(testehr.Introspect)
	t0 := time.Now()
	r = runLoad(ctx, ttlOp, 16, 0, dur, cpuPIDs{}, nil)
	c.TTLSeconds = time.Since(t0).Seconds()
	c.TTLRequests = r.Sent
	c.TTLIntrospections = e.ehr.Calls(testehr.Introspect) - i0
	c.TTLCachePeriodSeconds = 1
	fmt.Printf("  counts: %.1f QIDO calls/search (max %d in flight), burst %d req → %d introspection(s), /ttl %.1fs → %d introspection(s)\n",
		c.QIDOCallsPerSearch, c.QIDOMaxInFlightOneSearch, c.BurstRequests, c.BurstIntrospections, c.TTLSeconds, c.TTLIntrospections)
	return ctx.Err()
}

// runCount sends total requests with n workers and returns how many were
// sent and how many failed.
func runCount(ctx context.Context, o op, n, total int) (sent, errs int64) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, DisableCompression: true}}
	defer client.CloseIdleConnections()
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for next.Add(1) <= int64(total) && ctx.Err() == nil {
				if _, err := o(ctx, client, buf); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return min(next.Load(), int64(total)), failed.Load()
}

// large streams the large study to o.largeClients clients at once:
// through the gateway (o.largeRepeats times), directly and through the
// plain Caddy route, while sampling the gateway process's VmRSS every
// 100 ms.
func (e *env) large(ctx context.Context) error {
	t0 := time.Now()
	if err := loadLarge(ctx, e.pacs, filepath.Join(e.tmp, "large"), e.o.largeGiB, e.ds); err != nil {
		return err
	}
	L := &e.res.Large
	L.StudyBytes = e.ds.largeBytes
	L.Instances = e.ds.largeInstances
	L.Clients = e.o.largeClients
	L.LoadSeconds = time.Since(t0).Seconds()
	fmt.Printf("  large study: %d instances, %.2f GiB of pixel data, generated and uploaded in %.1fs\n",
		L.Instances, float64(L.StudyBytes)/(1<<30), L.LoadSeconds)

	tok := e.ehr.IssueToken(testehr.TokenSpec{Patient: largePatient})
	wado, err := e.discover(ctx, "bench", largePatient, tok)
	if err != nil {
		return err
	}
	base, ok := wado[e.ds.largeStudy]
	if !ok {
		return errors.New("the gateway's search did not return the large study")
	}
	L.GatewayRSSIdleMB = float64(procStatusKB(e.gw.pid(), "VmRSS")) / 1024
	path := "/studies/" + e.ds.largeStudy
	// Gateway first and last, so RSS growth across runs shows; the direct
	// and plain-Caddy runs sit in between.
	plan := []string{"gateway", "direct", "caddy"}
	for i := 1; i < e.o.largeRepeats; i++ {
		plan = append(plan, "gateway")
	}
	for _, target := range plan {
		url, h := e.pacs.DICOMwebURL()+path, e.directHeader(acceptDICOM)
		switch target {
		case "gateway":
			url, h = base+path, bearerHeader(tok, acceptDICOM)
		case "caddy":
			h = http.Header{}
			h.Set("Accept", acceptDICOM)
			url = e.gw.url("/plain/dicom-web" + path)
		}
		if e.o.profileDir != "" && target != "direct" {
			file := filepath.Join(e.o.profileDir, fmt.Sprintf("large-%d-%s.cpu.pprof", len(L.Runs)+1, target))
			go func() {
				if err := e.gw.fetchProfile(ctx, "profile?seconds=4", file); err != nil {
					fmt.Fprintf(os.Stderr, "bench: %v\n", err)
				}
			}()
		}
		run := e.stream(ctx, target, url, h)
		L.Runs = append(L.Runs, run)
		fmt.Printf("  large %-7s %2d clients: %6.1f MB/s, %d/%d complete in %.1fs, gateway VmRSS peak %.1f MB (before %.1f, after %.1f), errors %d %s\n",
			target, run.Clients, run.MBps, run.Completed, run.Clients, run.Seconds, run.RSSPeakMB, run.RSSBeforeMB, run.RSSAfterMB, run.Errors, shortErr(run.FirstError))
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	L.GatewayVmHWMMB = float64(procStatusKB(e.gw.pid(), "VmHWM")) / 1024
	if e.o.profileDir != "" {
		if err := e.gw.fetchProfile(ctx, "heap", filepath.Join(e.o.profileDir, "large-heap.pprof")); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
	}
	return nil
}

// largeRun is one streaming run of the large study.
type largeRun struct {
	Target      string  `json:"target"`
	Clients     int     `json:"clients"`
	Completed   int64   `json:"completed"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	Bytes       int64   `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	MBps        float64 `json:"mb_per_s"`
	RSSBeforeMB float64 `json:"gateway_rss_before_mb"`
	RSSPeakMB   float64 `json:"gateway_rss_peak_mb"`
	RSSAfterMB  float64 `json:"gateway_rss_after_mb"`
	GatewayCPUs float64 `json:"gateway_cpu_s"`
	OrthancCPUs float64 `json:"orthanc_cpu_s"`
}

func (e *env) stream(ctx context.Context, target, url string, h http.Header) largeRun {
	run := largeRun{Target: target, Clients: e.o.largeClients}
	pid := e.gw.pid()
	run.RSSBeforeMB = float64(procStatusKB(pid, "VmRSS")) / 1024

	ctx, cancel := context.WithTimeout(ctx, e.o.largeTimeout)
	defer cancel()
	var peak atomic.Int64
	samplerDone := make(chan struct{})
	stopSampler := make(chan struct{})
	go func() {
		defer close(samplerDone)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if kb := procStatusKB(pid, "VmRSS"); kb > peak.Load() {
				peak.Store(kb)
			}
			select {
			case <-t.C:
			case <-stopSampler:
				return
			}
		}
	}()

	cpu0 := e.pids.sample()
	tr := &http.Transport{MaxIdleConnsPerHost: run.Clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var (
		bytesRead, completed, errs atomic.Int64
		mu                         sync.Mutex
		wg                         sync.WaitGroup
	)
	t0 := time.Now()
	for i := 0; i < run.Clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := streamOnce(ctx, client, url, h, &bytesRead)
			if err != nil {
				errs.Add(1)
				mu.Lock()
				if run.FirstError == "" {
					run.FirstError = err.Error()
				}
				mu.Unlock()
				return
			}
			completed.Add(1)
		}()
	}
	wg.Wait()
	run.Seconds = time.Since(t0).Seconds()
	cpu1 := e.pids.sample()
	close(stopSampler)
	<-samplerDone
	run.Bytes = bytesRead.Load()
	run.Completed = completed.Load()
	run.Errors = errs.Load()
	run.MBps = float64(run.Bytes) / run.Seconds / 1e6
	run.RSSPeakMB = float64(peak.Load()) / 1024
	run.RSSAfterMB = float64(procStatusKB(pid, "VmRSS")) / 1024
	run.GatewayCPUs = cpu1[0] - cpu0[0]
	run.OrthancCPUs = cpu1[1] - cpu0[1]
	return run
}

// streamOnce GETs url, counting body bytes as they arrive; the multipart
// answer must end with its close delimiter.
func streamOnce(ctx context.Context, c *http.Client, url string, h http.Header, n *atomic.Int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	_, tail, err := drain(countingReader{resp.Body, n}, make([]byte, 256<<10))
	if err != nil {
		return err
	}
	if !bytes.Contains(tail, []byte("--"+params["boundary"]+"--")) {
		return errors.New("multipart answer without its close delimiter")
	}
	return nil
}

// countingReader adds every byte read to n as it arrives.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	return k, err
}
