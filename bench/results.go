package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// results is the whole run, printed as Markdown tables and written as JSON.
type results struct {
	Started string        `json:"started"`
	Machine machine       `json:"machine"`
	Options resultOptions `json:"options"`
	Cases   []*caseResult `json:"cases"`
	Counts  counts        `json:"counts"`
	Large   largeResults  `json:"large_study"`
	DIMSE   dimseResults  `json:"dimse"`
	Targets []target      `json:"targets"`

	endpoints []endpoint
}

type resultOptions struct {
	Quick        bool    `json:"quick"`
	Warmup       string  `json:"warmup"`
	Duration     string  `json:"duration"`
	Rounds       int     `json:"rounds"`
	Clients      []int   `json:"clients"`
	LargeGiB     float64 `json:"large_gib"`
	LargeClients int     `json:"large_clients"`
	Pinned       bool    `json:"pinned,omitempty"`
}

// caseResult is one endpoint × target × client count: the mean over
// rounds, and each round.
type caseResult struct {
	Endpoint     string       `json:"endpoint"`
	Label        string       `json:"label"`
	Target       string       `json:"target"` // direct, caddy (plain reverse_proxy) or gateway
	Clients      int          `json:"clients"`
	RPS          float64      `json:"rps"`
	MBps         float64      `json:"mb_per_s"`
	P50ms        float64      `json:"p50_ms"`
	P99ms        float64      `json:"p99_ms"`
	BytesPerReq  float64      `json:"bytes_per_request"`
	Requests     int64        `json:"requests"`
	Errors       int64        `json:"errors"`
	FirstError   string       `json:"first_error,omitempty"`
	GatewayCPUms float64      `json:"gateway_cpu_ms_per_req"`
	OrthancCPUms float64      `json:"orthanc_cpu_ms_per_req"`
	LoadCPUms    float64      `json:"loadgen_cpu_ms_per_req"`
	Ratio        float64      `json:"ratio_gateway_direct,omitempty"`
	Rounds       []loadResult `json:"rounds"`
}

type counts struct {
	StudiesPerSearch          int     `json:"studies_per_search"`
	QIDOCallsPerSearch        float64 `json:"qido_calls_per_search"`
	QIDOStudyCallsPerSearch   float64 `json:"qido_study_calls_per_search"`
	QIDOSeriesCallsPerSearch  float64 `json:"qido_series_calls_per_search"`
	QIDOMaxInFlightOneSearch  int64   `json:"qido_max_in_flight_one_search"`
	QIDOCallsPerSearchC16     float64 `json:"qido_calls_per_search_16_clients"`
	GatewayRequests           int64   `json:"gateway_requests_during_cases"`
	IntrospectionsDuringCases int64   `json:"introspections_during_cases"`
	PatientReadsDuringCases   int64   `json:"patient_reads_during_cases"`
	IntrospectionsPer1000     float64 `json:"introspections_per_1000_requests"`
	BurstRequests             int64   `json:"burst_requests"`
	BurstErrors               int64   `json:"burst_errors"`
	BurstIntrospections       int64   `json:"burst_introspections"`
	TTLCachePeriodSeconds     float64 `json:"ttl_cache_period_s"`
	TTLSeconds                float64 `json:"ttl_run_s"`
	TTLRequests               int64   `json:"ttl_requests"`
	TTLIntrospections         int64   `json:"ttl_introspections"`
	// NoCacheRequests and NoCacheIntrospections are the measured gateway
	// requests of the cache_ttl 0 case and the introspections made while
	// it ran (warm-up requests included, so the count can exceed the
	// requests; concurrent requests with one token share one).
	NoCacheRequests       int64 `json:"nocache_requests"`
	NoCacheIntrospections int64 `json:"nocache_introspections"`
}

type largeResults struct {
	StudyBytes       int64      `json:"pixel_bytes"`
	Instances        int        `json:"instances"`
	Clients          int        `json:"clients"`
	LoadSeconds      float64    `json:"generate_upload_s"`
	GatewayRSSIdleMB float64    `json:"gateway_rss_idle_mb"`
	GatewayVmHWMMB   float64    `json:"gateway_vmhwm_mb"`
	Runs             []largeRun `json:"runs"`
}

// target is one of the targets, measured.
type target struct {
	Name  string `json:"name"`
	Want  string `json:"want"`
	Got   string `json:"got"`
	Pass  bool   `json:"pass"`
	Skip  bool   `json:"skipped,omitempty"`
	Notes string `json:"notes,omitempty"`
}

func (r *results) find(endpoint, tgt string, clients int) *caseResult {
	for _, c := range r.Cases {
		if c.Endpoint == endpoint && c.Target == tgt && c.Clients == clients {
			return c
		}
	}
	return nil
}

func (r *results) add(ep endpoint, tgt string, clients int, lr loadResult) {
	if !hasEndpoint(r.endpoints, ep.Name) {
		r.endpoints = append(r.endpoints, ep)
	}
	c := r.find(ep.Name, tgt, clients)
	if c == nil {
		c = &caseResult{Endpoint: ep.Name, Label: ep.Label, Target: tgt, Clients: clients}
		r.Cases = append(r.Cases, c)
	}
	c.Rounds = append(c.Rounds, lr)
}

func hasEndpoint(eps []endpoint, name string) bool {
	for _, e := range eps {
		if e.Name == name {
			return true
		}
	}
	return false
}

// evaluate averages the rounds and checks the targets.
func (r *results) evaluate() {
	for _, c := range r.Cases {
		n := float64(len(c.Rounds))
		c.RPS, c.MBps, c.P50ms, c.P99ms, c.GatewayCPUms, c.OrthancCPUms, c.LoadCPUms = 0, 0, 0, 0, 0, 0, 0
		c.Requests, c.Errors = 0, 0
		var bytes int64
		for _, lr := range c.Rounds {
			c.RPS += lr.RPS / n
			c.MBps += lr.MBps / n
			c.P50ms += lr.P50ms / n
			c.P99ms += lr.P99ms / n
			c.GatewayCPUms += lr.GatewayCPUms / n
			c.OrthancCPUms += lr.OrthancCPUms / n
			c.LoadCPUms += lr.LoadCPUms / n
			c.Requests += lr.Requests
			c.Errors += lr.Errors
			bytes += lr.Bytes
			if c.FirstError == "" {
				c.FirstError = lr.FirstError
			}
		}
		if c.Requests > 0 {
			c.BytesPerReq = float64(bytes) / float64(c.Requests)
		}
	}
	for _, c := range r.Cases {
		if c.Target == "direct" {
			continue
		}
		if d := r.find(c.Endpoint, "direct", c.Clients); d != nil && d.RPS > 0 {
			c.Ratio = c.RPS / d.RPS
		}
	}

	r.Targets = nil
	add := func(t target) { r.Targets = append(r.Targets, t) }
	for _, ep := range r.endpoints {
		if ep.Target == 0 {
			continue
		}
		g := r.find(ep.Name, "gateway", 16)
		if g == nil {
			add(target{Name: ep.Name + " throughput at 16 clients", Want: fmt.Sprintf(">= %.2f x direct", ep.Target), Skip: true, Notes: "16 clients not measured"})
			continue
		}
		if d := r.find(ep.Name, "direct", 16); d != nil && d.Requests == 0 && g.Requests > 0 {
			// Each direct request outlasted the window: no ratio, and the
			// gateway answered where the PACS alone answered nothing.
			add(target{Name: ep.Name + " throughput at 16 clients", Want: fmt.Sprintf(">= %.2f x direct", ep.Target),
				Got: fmt.Sprintf("direct: no answer within the window; gateway %.0f req/s", g.RPS), Pass: g.Errors == 0})
		} else {
			add(target{Name: ep.Name + " throughput at 16 clients", Want: fmt.Sprintf(">= %.2f x direct", ep.Target),
				Got: fmt.Sprintf("%.2f x", g.Ratio), Pass: g.Ratio >= ep.Target && g.Errors == 0})
		}
		if g1 := r.find(ep.Name, "gateway", 1); ep.AlsoAt1 && g1 != nil {
			add(target{Name: ep.Name + " throughput at 1 client", Want: fmt.Sprintf(">= %.2f x direct", ep.Target),
				Got: fmt.Sprintf("%.2f x", g1.Ratio), Pass: g1.Ratio >= ep.Target && g1.Errors == 0})
		}
	}
	cn := r.Counts
	add(target{Name: "upstream QIDO calls per ImagingStudy search", Want: fmt.Sprintf("<= 1 + %d studies = %d", cn.StudiesPerSearch, 1+cn.StudiesPerSearch),
		Got: fmt.Sprintf("%.2f (16 clients: %.2f)", cn.QIDOCallsPerSearch, cn.QIDOCallsPerSearchC16), Pass: cn.QIDOCallsPerSearch <= float64(1+cn.StudiesPerSearch)})
	add(target{Name: "QIDO calls of one search issued concurrently", Want: "> 1 in flight",
		Got: fmt.Sprintf("max %d in flight", cn.QIDOMaxInFlightOneSearch), Pass: cn.QIDOMaxInFlightOneSearch > 1})
	add(target{Name: "no authorization round trip at steady state", Want: "0 introspections, 0 Patient reads during the cases",
		Got:  fmt.Sprintf("%d introspections, %d Patient reads in %d requests (%.3f per 1,000)", cn.IntrospectionsDuringCases, cn.PatientReadsDuringCases, cn.GatewayRequests, cn.IntrospectionsPer1000),
		Pass: cn.IntrospectionsDuringCases == 0 && cn.PatientReadsDuringCases == 0})
	add(target{Name: "introspection: one fresh token, 64 clients", Want: "1 call",
		Got: fmt.Sprintf("%d call(s) for %d requests (%d errors)", cn.BurstIntrospections, cn.BurstRequests, cn.BurstErrors), Pass: cn.BurstIntrospections == 1 && cn.BurstErrors == 0})
	periods := int64(math.Ceil(cn.TTLSeconds / cn.TTLCachePeriodSeconds))
	add(target{Name: "introspection per cache period (cache_ttl 1s, 16 clients)", Want: fmt.Sprintf("<= %d (one per period)", periods),
		Got: fmt.Sprintf("%d calls in %.1fs, %d requests", cn.TTLIntrospections, cn.TTLSeconds, cn.TTLRequests), Pass: cn.TTLIntrospections <= periods && cn.TTLIntrospections >= 1})

	L := r.Large
	if len(L.Runs) == 0 {
		add(target{Name: "gateway RSS while 16 clients stream 1 GiB", Want: "< 150 MB", Skip: true, Notes: "large study skipped (-quick or -large-gib 0)"})
		return
	}
	var gw []largeRun
	var direct largeRun
	for _, run := range L.Runs {
		switch run.Target {
		case "gateway":
			gw = append(gw, run)
		case "direct":
			direct = run
		}
	}
	peak := 0.0
	var peaks []string
	var errs int64
	for _, run := range gw {
		peak = math.Max(peak, run.RSSPeakMB)
		peaks = append(peaks, fmt.Sprintf("%.0f", run.RSSPeakMB))
		errs += run.Errors
	}
	add(target{Name: fmt.Sprintf("gateway RSS while %d clients stream %.2f GiB", L.Clients, float64(L.StudyBytes)/(1<<30)), Want: "< 150 MB",
		Got: fmt.Sprintf("peak %.1f MB", peak), Pass: peak < 150 && errs == 0})
	if len(gw) >= 2 {
		first, last := gw[0].RSSPeakMB, gw[len(gw)-1].RSSPeakMB
		add(target{Name: "no RSS growth across repeated large runs", Want: "last peak <= first peak + 10%",
			Got: "peaks " + strings.Join(peaks, ", ") + " MB", Pass: last <= first*1.10+1})
	}
	if direct.MBps > 0 {
		var sum float64
		for _, run := range gw {
			sum += run.MBps
		}
		ratio := sum / float64(len(gw)) / direct.MBps
		add(target{Name: "large study throughput at 16 clients", Want: ">= 0.90 x direct",
			Got: fmt.Sprintf("%.2f x (%.0f vs %.0f MB/s)", ratio, sum/float64(len(gw)), direct.MBps), Pass: ratio >= 0.90 && errs == 0})
	}
}

// print writes the tables as Markdown.
func (r *results) print(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "\n## Results\n\nMachine: %d CPUs (%s), %.0f GiB RAM, Linux %s, %s, Orthanc %s + DICOMweb plugin %s. Load average %s at start, %s at end.\n",
		m.CPUs, m.CPUModel, m.MemTotalGiB, m.Kernel, m.GoVersion, m.Orthanc, m.DICOMwebPlugin, m.LoadAvgStart, m.LoadAvgEnd)
	fmt.Fprintf(w, "Each case: %s warm-up, %s measured, mean of %d round(s); direct and gateway back to back.\n", r.Options.Warmup, r.Options.Duration, r.Options.Rounds)
	if r.Options.Pinned {
		fmt.Fprintln(w, "Pinned (-pin): Orthanc and the load generator on CPU 0, the gateway on CPU 1.")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | clients | direct req/s | direct p50 / p99 ms | direct MB/s | gateway req/s | gateway p50 / p99 ms | gateway MB/s | gateway / direct | plain Caddy proxy / direct | gateway CPU ms/req |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, ep := range r.endpoints {
		for _, c := range r.Options.Clients {
			d, g := r.find(ep.Name, "direct", c), r.find(ep.Name, "gateway", c)
			if d == nil {
				continue
			}
			row := fmt.Sprintf("| %s | %d | %.0f%s | %s | %.1f |", ep.Label, c, d.RPS, errMark(d), lat(d), d.MBps)
			if g != nil {
				row += fmt.Sprintf(" %.0f%s | %s | %.1f | %.2f |", g.RPS, errMark(g), lat(g), g.MBps, g.Ratio)
			} else {
				row += " | | | |"
			}
			if p := r.find(ep.Name, "caddy", c); p != nil {
				row += fmt.Sprintf(" %.2f%s |", p.Ratio, errMark(p))
			} else {
				row += " |"
			}
			if g != nil {
				row += fmt.Sprintf(" %.2f |", g.GatewayCPUms)
			} else {
				row += " |"
			}
			fmt.Fprintln(w, row)
		}
	}
	cn := r.Counts
	fmt.Fprintf(w, "\nCounts: an ImagingStudy search (%d studies) costs %.2f upstream QIDO calls (%.2f study + %.2f series; %.2f under 16 clients), at most %d in flight at once. "+
		"%d introspections and %d Patient reads during %d gateway requests with one cached token (%.3f per 1,000). "+
		"A fresh token hit by 64 clients (%d requests): %d introspection(s). Route with cache_ttl 1s under 16 clients for %.1fs: %d introspections.\n",
		cn.StudiesPerSearch, cn.QIDOCallsPerSearch, cn.QIDOStudyCallsPerSearch, cn.QIDOSeriesCallsPerSearch, cn.QIDOCallsPerSearchC16, cn.QIDOMaxInFlightOneSearch,
		cn.IntrospectionsDuringCases, cn.PatientReadsDuringCases, cn.GatewayRequests, cn.IntrospectionsPer1000,
		cn.BurstRequests, cn.BurstIntrospections, cn.TTLSeconds, cn.TTLIntrospections)
	if cn.NoCacheRequests > 0 {
		fmt.Fprintf(w, "Route with cache_ttl 0: %d introspections for %d measured requests (warm-up included; concurrent requests with one token share one).\n",
			cn.NoCacheIntrospections, cn.NoCacheRequests)
	}
	if L := r.Large; len(L.Runs) > 0 {
		fmt.Fprintf(w, "\nLarge study: %d instances, %.2f GiB of pixel data (generated and uploaded in %.0fs), %d clients at once; gateway VmRSS %.1f MB idle, VmHWM %.1f MB at the end.\n\n",
			L.Instances, float64(L.StudyBytes)/(1<<30), L.LoadSeconds, L.Clients, L.GatewayRSSIdleMB, L.GatewayVmHWMMB)
		fmt.Fprintln(w, "| run | MB/s | complete | seconds | gateway VmRSS before / peak / after MB | gateway CPU s | Orthanc CPU s |")
		fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|--:|")
		for i, run := range L.Runs {
			rss := "(gateway idle)"
			if run.Target != "direct" {
				rss = fmt.Sprintf("%.1f / %.1f / %.1f", run.RSSBeforeMB, run.RSSPeakMB, run.RSSAfterMB)
			}
			fmt.Fprintf(w, "| %d %s | %.0f | %d/%d | %.1f | %s | %.1f | %.1f |\n", i+1, run.Target, run.MBps, run.Completed, run.Clients, run.Seconds, rss, run.GatewayCPUs, run.OrthancCPUs)
		}
	}
	if D := r.DIMSE; len(D.Cold) > 0 {
		fmt.Fprintln(w, "\nDIMSE source (images dimse, C-GET from the same Orthanc's DICOM port) against Orthanc's DICOMweb:")
		fmt.Fprintln(w, "\n| study | instances | MB | dimse cold: first byte / whole ms | DICOMweb direct: first byte / whole ms |")
		fmt.Fprintln(w, "|---|--:|--:|--:|--:|")
		for _, c := range D.Cold {
			fmt.Fprintf(w, "| %s | %d | %.1f | %.1f / %.1f | %.1f / %.1f |\n", c.Study, c.Instances, float64(c.Bytes)/1e6, c.FirstByteMs, c.GatewayMs, c.DirectFirstMs, c.DirectMs)
		}
		fmt.Fprintln(w, "\n| cached study retrieve | dimse req/s | dimse p50 ms | DICOMweb direct req/s | direct p50 ms | dimse / direct |")
		fmt.Fprintln(w, "|--:|--:|--:|--:|--:|--:|")
		for _, c := range D.Cached {
			fmt.Fprintf(w, "| %d clients | %.1f | %.1f | %.1f | %.1f | %.2f |\n", c.Clients, c.GatewayRPS, c.GatewayP50ms, c.DirectRPS, c.DirectP50ms, c.Ratio)
		}
		C := D.Concurrent
		fmt.Fprintf(w, "\n%d clients pulling %d different studies (%.1f MB, cold) through a %d MiB cache: %d complete in %.2fs (DICOMweb direct %.2fs), %d errors; gateway VmRSS %.1f MB before, peak %.1f MB; cache peak %.1f MB.\n",
			C.Clients, C.Clients, float64(C.StudiesBytes)/1e6, C.CacheSize>>20, C.GatewayCompleted, C.GatewaySeconds, C.DirectSeconds, C.GatewayErrors,
			C.RSSBeforeMB, C.RSSPeakMB, float64(C.CachePeakBytes)/1e6)
	}
	fmt.Fprintln(w, "\n| target | want | got | |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, t := range r.Targets {
		verdict := "MISS"
		switch {
		case t.Skip:
			verdict = "skipped: " + t.Notes
		case t.Pass:
			verdict = "ok"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", t.Name, t.Want, t.Got, verdict)
	}
	for _, c := range r.Cases {
		if c.Errors > 0 {
			fmt.Fprintf(w, "\nerrors: %s %s c=%d: %d (first: %s)\n", c.Endpoint, c.Target, c.Clients, c.Errors, c.FirstError)
		}
	}
}

func lat(c *caseResult) string { return fmt.Sprintf("%.1f / %.1f", c.P50ms, c.P99ms) }

func errMark(c *caseResult) string {
	if c.Errors > 0 {
		return fmt.Sprintf(" (%d err)", c.Errors)
	}
	return ""
}

// write saves the results as indented JSON.
func (r *results) write(name string) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return fmt.Errorf("results: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("results: %w", err)
	}
	if err := os.WriteFile(name, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("results: %w", err)
	}
	return nil
}
