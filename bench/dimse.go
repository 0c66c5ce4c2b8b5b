package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// The DIMSE patient: 16 studies, one per client of the concurrency run.
const (
	dimsePatient = "bench-dimse"
	dimseMRN     = "BENCH-MRN-DIMSE"
	dimseStudies = 16
)

// dimseResults measures the dimse source against the same Orthanc over
// DICOMweb.
type dimseResults struct {
	// Cold: the first retrieve of each bench-patient study through /dimse
	// (a C-GET into the cache, streamed as instances arrive), and the same
	// study straight from Orthanc's DICOMweb right after.
	Cold []dimseCold `json:"cold"`
	// Cached: the bench study again through /dimse, from the cache,
	// against Orthanc's DICOMweb, at 1 and 16 clients.
	Cached []dimseCached `json:"cached"`
	// Concurrent: 16 clients each pull a different study (cold) through
	// /dimse-small, whose cache is smaller than the 16 studies together.
	Concurrent dimseConcurrent `json:"concurrent"`
}

type dimseCold struct {
	Study         string  `json:"study"`
	Instances     int     `json:"instances"`
	Bytes         int64   `json:"bytes"`
	FirstByteMs   float64 `json:"gateway_first_byte_ms"`
	GatewayMs     float64 `json:"gateway_ms"`
	DirectMs      float64 `json:"direct_dicomweb_ms"`
	DirectFirstMs float64 `json:"direct_first_byte_ms"`
}

type dimseCached struct {
	Clients       int     `json:"clients"`
	GatewayRPS    float64 `json:"gateway_rps"`
	GatewayMBps   float64 `json:"gateway_mb_per_s"`
	GatewayP50ms  float64 `json:"gateway_p50_ms"`
	DirectRPS     float64 `json:"direct_rps"`
	DirectMBps    float64 `json:"direct_mb_per_s"`
	DirectP50ms   float64 `json:"direct_p50_ms"`
	Ratio         float64 `json:"ratio_gateway_direct"`
	GatewayErrors int64   `json:"gateway_errors"`
}

type dimseConcurrent struct {
	Clients          int     `json:"clients"`
	StudiesBytes     int64   `json:"bytes_all_studies"`
	CacheSize        int64   `json:"cache_size"`
	CachePeakBytes   int64   `json:"cache_peak_bytes"`
	GatewaySeconds   float64 `json:"gateway_s"`
	GatewayCompleted int64   `json:"gateway_completed"`
	GatewayErrors    int64   `json:"gateway_errors"`
	FirstError       string  `json:"first_error,omitempty"`
	DirectSeconds    float64 `json:"direct_dicomweb_s"`
	RSSBeforeMB      float64 `json:"gateway_rss_before_mb"`
	RSSPeakMB        float64 `json:"gateway_rss_peak_mb"`
	RSSAfterMB       float64 `json:"gateway_rss_after_mb"`
}

// dimse runs the DIMSE cases.
func (e *env) dimse(ctx context.Context) error {
	D := &e.res.DIMSE
	// 16 studies of 8 CT instances 256×256 (about 1 MiB each), for the
	// concurrency run.
	var studies []dicomgen.Study
	p := dicomgen.Patient{ID: dimseMRN, Name: "Bench^Dimse", BirthDate: "19800101", Sex: "O"}
	for i := 1; i <= dimseStudies; i++ {
		studies = append(studies, dicomgen.Study{
			Patient: p, UID: fmt.Sprintf("%s.2.%d", benchUIDRoot, i), Dir: fmt.Sprintf("dimse/st%d", i), ID: fmt.Sprintf("D%d", i),
			AccessionNumber: fmt.Sprintf("DIMSE-%d", i), Date: "20250401", Time: "080000", Description: "DIMSE BENCH", BodyPart: "CHEST",
			Series: []dicomgen.Series{{Modality: "CT", Description: "AX", Instances: 8, Rows: 256, Cols: 256, Pattern: i}},
		})
	}
	dir := filepath.Join(e.tmp, "dimse-data")
	if _, err := dicomgen.WriteStudies(dir, studies); err != nil {
		return err
	}
	if _, _, err := upload(ctx, e.pacs, dir, 2); err != nil {
		return err
	}

	// Cold, then cached, on /dimse.
	wado, err := e.discover(ctx, "dimse", benchPatient, e.token)
	if err != nil {
		return err
	}
	order := append([]string(nil), e.ds.studies...)
	sort.Strings(order)
	client := &http.Client{}
	for _, st := range order {
		c := dimseCold{Study: st}
		first, total, n, parts, err := timedGet(ctx, client, wado[st]+"/studies/"+st, bearerHeader(e.token, acceptDICOM))
		if err != nil {
			return fmt.Errorf("dimse cold %s: %w%s", st, err, e.gw.logTail())
		}
		c.FirstByteMs, c.GatewayMs, c.Bytes, c.Instances = ms(first), ms(total), n, parts
		dfirst, dtotal, _, _, err := timedGet(ctx, client, e.pacs.DICOMwebURL()+"/studies/"+st, e.directHeader(acceptDICOM))
		if err != nil {
			return fmt.Errorf("direct %s: %w", st, err)
		}
		c.DirectFirstMs, c.DirectMs = ms(dfirst), ms(dtotal)
		D.Cold = append(D.Cold, c)
		fmt.Printf("  dimse cold  %s: %2d instances %6.1f MB: first byte %6.1f ms, whole %7.1f ms; DICOMweb direct %7.1f ms\n",
			st, c.Instances, float64(c.Bytes)/1e6, c.FirstByteMs, c.GatewayMs, c.DirectMs)
	}
	st := e.ds.wadoStudy
	gw := get(wado[st]+"/studies/"+st, bearerHeader(e.token, acceptDICOM))
	direct := get(e.pacs.DICOMwebURL()+"/studies/"+st, e.directHeader(acceptDICOM))
	for _, n := range []int{1, 16} {
		d := runLoad(ctx, direct, n, e.o.warmup, e.o.duration, e.pids, nil)
		g := runLoad(ctx, gw, n, e.o.warmup, e.o.duration, e.pids, nil)
		c := dimseCached{Clients: n, GatewayRPS: g.RPS, GatewayMBps: g.MBps, GatewayP50ms: g.P50ms,
			DirectRPS: d.RPS, DirectMBps: d.MBps, DirectP50ms: d.P50ms, GatewayErrors: g.Errors}
		if d.RPS > 0 {
			c.Ratio = g.RPS / d.RPS
		}
		D.Cached = append(D.Cached, c)
		fmt.Printf("  dimse cached %2d clients: gateway %6.1f req/s %6.1f MB/s p50 %6.1f ms; DICOMweb direct %6.1f req/s p50 %6.1f ms; ratio %.2f; errors %d\n",
			n, g.RPS, g.MBps, g.P50ms, d.RPS, d.P50ms, c.Ratio, g.Errors)
	}

	// 16 clients, 16 different studies, on /dimse-small.
	tok := e.ehr.IssueToken(testehr.TokenSpec{Patient: dimsePatient})
	small, err := e.discover(ctx, "dimse-small", dimsePatient, tok)
	if err != nil {
		return err
	}
	if len(small) != dimseStudies {
		return fmt.Errorf("dimse-small search found %d studies, want %d", len(small), dimseStudies)
	}
	C := &D.Concurrent
	C.Clients, C.CacheSize = dimseStudies, dimseSmallCacheSize
	cacheDir := filepath.Join(e.tmp, "dimse-cache", "dimse-small")
	pid := e.gw.pid()
	C.RSSBeforeMB = float64(procStatusKB(pid, "VmRSS")) / 1024
	var rssPeak, cachePeak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if kb := procStatusKB(pid, "VmRSS"); kb > rssPeak.Load() {
				rssPeak.Store(kb)
			}
			if b := dirBytes(cacheDir); b > cachePeak.Load() {
				cachePeak.Store(b)
			}
			select {
			case <-t.C:
			case <-stop:
				return
			}
		}
	}()
	pull := func(urls []string, h func() http.Header) (float64, int64, int64, string) {
		var bytesRead, done, errs atomic.Int64
		var first atomic.Value
		var wg sync.WaitGroup
		tr := &http.Transport{MaxIdleConnsPerHost: len(urls), DisableCompression: true}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr}
		t0 := time.Now()
		for _, u := range urls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := streamOnce(ctx, c, u, h(), &bytesRead); err != nil {
					errs.Add(1)
					first.CompareAndSwap(nil, err.Error())
					return
				}
				done.Add(1)
			}()
		}
		wg.Wait()
		fe, _ := first.Load().(string)
		C.StudiesBytes = bytesRead.Load()
		return time.Since(t0).Seconds(), done.Load(), errs.Load(), fe
	}
	var gwURLs, directURLs []string
	for _, s := range studies {
		gwURLs = append(gwURLs, small[s.UID]+"/studies/"+s.UID)
		directURLs = append(directURLs, e.pacs.DICOMwebURL()+"/studies/"+s.UID)
	}
	C.GatewaySeconds, C.GatewayCompleted, C.GatewayErrors, C.FirstError = pull(gwURLs, func() http.Header { return bearerHeader(tok, acceptDICOM) })
	close(stop)
	<-sampled
	C.RSSPeakMB = float64(rssPeak.Load()) / 1024
	C.RSSAfterMB = float64(procStatusKB(pid, "VmRSS")) / 1024
	C.CachePeakBytes = cachePeak.Load()
	C.DirectSeconds, _, _, _ = pull(directURLs, func() http.Header { return e.directHeader(acceptDICOM) })
	fmt.Printf("  dimse 16 clients x 16 studies (%.1f MB): %d/%d complete in %.2fs (DICOMweb direct %.2fs); gateway VmRSS %.1f → peak %.1f MB; cache peak %.1f MB of %d MB; errors %d %s\n",
		float64(C.StudiesBytes)/1e6, C.GatewayCompleted, C.Clients, C.GatewaySeconds, C.DirectSeconds, C.RSSBeforeMB, C.RSSPeakMB,
		float64(C.CachePeakBytes)/1e6, C.CacheSize>>20, C.GatewayErrors, shortErr(C.FirstError))
	return nil
}

// timedGet GETs a multipart answer and returns the time to its first body
// byte, to its end, its bytes and its parts (counted by boundary).
func timedGet(ctx context.Context, c *http.Client, url string, h http.Header) (first, total time.Duration, n int64, parts int, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	req.Header = h
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return 0, 0, 0, 0, fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	buf := make([]byte, 256<<10)
	k, err := resp.Body.Read(buf)
	first = time.Since(t0)
	n = int64(k)
	all := append([]byte(nil), buf[:k]...)
	for err == nil {
		k, err = resp.Body.Read(buf)
		n += int64(k)
		all = append(all, buf[:k]...)
	}
	if err != io.EOF {
		return 0, 0, 0, 0, err
	}
	total = time.Since(t0)
	_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if b := params["boundary"]; b != "" {
		parts = bytes.Count(all, []byte("--"+b)) - 1 // the close delimiter too
	}
	return first, total, n, parts, nil
}

// dirBytes is the size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
