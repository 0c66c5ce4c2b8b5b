package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smart-imaging/smart_imaging/internal/fhirclient"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// The QIDO-RS attribute lists the gateway asks for (as in
// imagesource/dicomweb), so the direct search does the same work.
const (
	studyIncludeFields  = "00080020,00080030,00080050,00080061,00080090,00080201,00081030,00100010,00100020,00100021,00100030,00100040,0020000D,00200010,00201206,00201208"
	seriesIncludeFields = "00080021,00080031,00080060,00080201,0008103E,0020000D,0020000E,00200011,00201209"
	// gatewayQIDOConcurrency is the gateway's default max_concurrent_qido.
	gatewayQIDOConcurrency = 4
)

// Accept headers of the WADO-RS cases.
const (
	acceptDICOM    = `multipart/related; type="application/dicom"`
	acceptFrames   = `multipart/related; type="application/octet-stream"`
	acceptMetadata = "application/dicom+json"
)

// endpoint is one measured endpoint: the same request straight to Orthanc
// and through the gateway.
type endpoint struct {
	Name    string
	Label   string
	Direct  op
	Gateway op // nil: a direct-only reference row
	// Caddy is the same request through a plain Caddy reverse_proxy route
	// of the same gateway process (no module): the floor any Caddy-based
	// gateway pays. nil: not measured.
	Caddy op
	// Target is the minimum gateway/direct throughput ratio at 16 clients
	// (0: none); AlsoAt1 holds it at 1 client too.
	Target  float64
	AlsoAt1 bool
	// Uncached marks a case on a route with cache_ttl 0: its
	// introspections are counted apart from the steady-state count.
	Uncached bool
}

type env struct {
	o       options
	tmp     string
	pacs    *orthanc.Server
	ehr     *testehr.EHR
	tb      *harnessTB
	counter *countingProxy
	gw      *gateway
	ds      *dataset
	pids    cpuPIDs
	token   string
	wado    map[string]string // study UID → gateway WADO-RS base (/bench route)
	// The metadata cache's routes: study UID → WADO-RS base on /cached and
	// /reval; manyToken and manyWADO for the many-instance study.
	cachedWADO, revalWADO map[string]string
	manyToken             string
	manyWADO              map[string]string
	// wadoNoCache is the same on the /nocache route (cache_ttl 0).
	wadoNoCache map[string]string
	res         *results
}

func run(ctx context.Context, o options) (err error) {
	e := &env{o: o, tb: &harnessTB{}, res: &results{}}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	e.res.Machine = machine{
		CPUs: runtime.NumCPU(), CPUModel: cpuModel(), MemTotalGiB: memTotalGiB(),
		Kernel: readTrim("/proc/sys/kernel/osrelease"), GoVersion: runtime.Version(), LoadAvgStart: loadAvg(),
	}
	e.res.Options = resultOptions{Quick: o.quick, Warmup: o.warmup.String(), Duration: o.duration.String(),
		Rounds: o.rounds, Clients: o.clients, LargeGiB: o.largeGiB, LargeClients: o.largeClients}
	e.res.Started = time.Now().UTC().Format(time.RFC3339)

	if e.tmp, err = os.MkdirTemp("", "sia-bench-*"); err != nil {
		return err
	}
	cleanups = append(cleanups, func() { os.RemoveAll(e.tmp) })
	if o.profileDir != "" {
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return err
		}
	}

	step := stepper()
	if !orthanc.Available() {
		return fmt.Errorf("Orthanc is not installed (%s, %s): apt-get install orthanc orthanc-dicomweb", orthanc.DefaultBinary, orthanc.DefaultPlugin)
	}
	// Orthanc's DICOM port too, with the gateway's AE registered for the
	// dimse source (C-ECHO, C-FIND, C-GET).
	if e.pacs, err = orthanc.Start(ctx, orthanc.Options{DICOM: &orthanc.DICOMOptions{Modalities: map[string]orthanc.Modality{
		"gateway": {AET: dimseAE, Host: "127.0.0.1", Port: 1, AllowEcho: true, AllowFind: true, AllowGet: true},
	}}}); err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		if err := e.pacs.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
	})
	e.res.Machine.Orthanc, e.res.Machine.DICOMwebPlugin = orthancVersions(ctx, e.pacs)
	step("Orthanc %s (DICOMweb plugin %s) on %s", e.res.Machine.Orthanc, e.res.Machine.DICOMwebPlugin, e.pacs.URL())

	if e.ds, err = loadDataset(ctx, e.pacs, filepath.Join(e.tmp, "data")); err != nil {
		return err
	}
	step("data set: %d instances (%.1f MB) uploaded; bench patient has %d studies", e.ds.instances, float64(e.ds.uploadedBytes)/1e6, len(e.ds.studies))

	// The test EHR runs in this process.
	e.ehr = testehr.New(e.tb)
	cleanups = append(cleanups, e.tb.runCleanups)
	secret := randomSecret()
	e.ehr.RegisterClient(testehr.Client{ID: "bench-gateway", Secret: secret})
	mr := func(v string) testehr.Identifier {
		return testehr.Identifier{System: mrnSystem, Value: v, TypeCode: "MR", Use: "usual"}
	}
	e.ehr.AddPatient(benchPatient, mr(benchMRN))
	e.ehr.AddPatient(largePatient, mr(largeMRN))
	e.ehr.AddPatient(dimsePatient, mr(dimseMRN))
	e.ehr.AddPatient(manyPatient, mr(manyMRN))

	if e.counter, err = startCountingProxy(e.pacs.URL()); err != nil {
		return err
	}
	cleanups = append(cleanups, e.counter.close)

	gwDir := filepath.Join(e.tmp, "gateway")
	if err := os.MkdirAll(gwDir, 0o700); err != nil {
		return err
	}
	e.gw, err = startGateway(ctx, gwDir, gatewayConfig{
		ehrFHIRBase: e.ehr.FHIRBase(), clientID: "bench-gateway",
		pacsURL: e.pacs.DICOMwebURL(), pacsHostPort: strings.TrimPrefix(e.pacs.URL(), "http://"), countURL: e.counter.URL() + "/dicom-web",
		user: e.pacs.Username(), pass: e.pacs.Password(),
		dimseAddr: e.pacs.DICOMAddr(), dimseAET: e.pacs.DICOMAET(), dimseCache: filepath.Join(e.tmp, "dimse-cache"),
	}, secret)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		if err := e.gw.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
	})
	e.pids = cpuPIDs{gateway: e.gw.pid(), orthanc: e.pacs.PID(), self: os.Getpid()}
	if o.pin {
		for _, p := range []struct {
			cpu string
			pid int
		}{{"0", e.pacs.PID()}, {"0", os.Getpid()}, {"1", e.gw.pid()}} {
			if out, err := exec.CommandContext(ctx, "taskset", "-a", "-pc", p.cpu, strconv.Itoa(p.pid)).CombinedOutput(); err != nil {
				return fmt.Errorf("-pin: taskset: %v: %s", err, out)
			}
		}
		e.res.Options.Pinned = true
		step("pinned: Orthanc and this process to CPU 0, the gateway to CPU 1")
	}
	step("gateway (pid %d) on %s, admin %s, log %s", e.gw.pid(), e.gw.url("/"), e.gw.adminURL("/"), filepath.Join(gwDir, "gateway.log"))

	e.token = e.ehr.IssueToken(testehr.TokenSpec{Patient: benchPatient})
	if e.wado, err = e.discover(ctx, "bench", benchPatient, e.token); err != nil {
		return err
	}
	if len(e.wado) != len(e.ds.studies) {
		return fmt.Errorf("the gateway's search found %d studies of the bench patient, want %d", len(e.wado), len(e.ds.studies))
	}
	if e.cachedWADO, err = e.discover(ctx, "cached", benchPatient, e.token); err != nil {
		return err
	}
	if e.revalWADO, err = e.discover(ctx, "reval", benchPatient, e.token); err != nil {
		return err
	}
	e.manyToken = e.ehr.IssueToken(testehr.TokenSpec{Patient: manyPatient})
	if e.manyWADO, err = e.discover(ctx, "cached", manyPatient, e.manyToken); err != nil {
		return err
	}

	if e.wadoNoCache, err = e.discover(ctx, "nocache", benchPatient, e.token); err != nil {
		return err
	}

	eps := e.endpoints()
	if o.cases != nil {
		var kept []endpoint
		for _, ep := range eps {
			if o.cases[ep.Name] {
				kept = append(kept, ep)
			}
		}
		if len(kept) == 0 && !o.cases["dimse"] {
			return fmt.Errorf("-cases names no known endpoint")
		}
		eps = kept
	}
	for _, ep := range eps {
		for _, o := range []op{ep.Direct, ep.Caddy, ep.Gateway} {
			if o == nil {
				continue
			}
			if _, err := o(ctx, http.DefaultClient, make([]byte, 256<<10)); err != nil {
				return fmt.Errorf("%s: first request failed: %w%s", ep.Name, err, e.gw.logTail())
			}
		}
	}
	step("every case answered once; measuring (%d round(s), %s + %s warm-up per case)", o.rounds, o.duration, o.warmup)

	// Cases on the cache_ttl 0 route run after the others, so their
	// introspections (some finishing after their run) stay out of the
	// steady-state count.
	var cached, uncached []endpoint
	for _, ep := range eps {
		if ep.Uncached {
			uncached = append(uncached, ep)
		} else {
			cached = append(cached, ep)
		}
	}
	if err := e.measure(ctx, cached); err != nil {
		return err
	}
	i0 := e.ehr.Calls(testehr.Introspect)
	if err := e.measure(ctx, uncached); err != nil {
		return err
	}
	for _, ep := range uncached {
		// A barrier: one more request with the same token joins any
		// introspection still in flight from a cut-off request, so none
		// lands in the counts below.
		if _, err := ep.Gateway(ctx, http.DefaultClient, make([]byte, 256<<10)); err != nil {
			return fmt.Errorf("%s after the run: %w", ep.Name, err)
		}
	}
	e.res.Counts.NoCacheIntrospections = e.ehr.Calls(testehr.Introspect) - i0
	if err := e.counts(ctx); err != nil {
		return err
	}
	if o.cases == nil || o.cases["dimse"] {
		if err := e.dimse(ctx); err != nil {
			return err
		}
	}
	if o.largeGiB > 0 {
		if err := e.large(ctx); err != nil {
			return err
		}
	}
	if !e.gw.alive() {
		return fmt.Errorf("the gateway died during the run%s", e.gw.logTail())
	}
	e.res.Machine.LoadAvgEnd = loadAvg()
	e.res.evaluate()
	e.res.print(os.Stdout)
	if o.out != "" {
		if err := e.res.write(o.out); err != nil {
			return err
		}
		fmt.Printf("\nresults written to %s\n", o.out)
	}
	return nil
}

func stepper() func(format string, args ...any) {
	t0 := time.Now()
	return func(format string, args ...any) {
		fmt.Printf("[%5.1fs] %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, args...))
	}
}

func randomSecret() string {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func orthancVersions(ctx context.Context, pacs *orthanc.Server) (core, plugin string) {
	getJSON := func(path string, v any) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, path, nil)
		if err != nil {
			return
		}
		resp, err := pacs.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
	}
	var sys, plug struct{ Version string }
	getJSON("/system", &sys)
	getJSON("/plugins/dicom-web", &plug)
	return sys.Version, plug.Version
}

// directHeader is Orthanc's Basic auth plus accept.
func (e *env) directHeader(accept string) http.Header {
	r := &http.Request{Header: http.Header{}}
	r.SetBasicAuth(e.pacs.Username(), e.pacs.Password())
	r.Header.Set("Accept", accept)
	return r.Header
}

func bearerHeader(token, accept string) http.Header {
	h := http.Header{}
	h.Set("Authorization", "Bearer "+token)
	if accept != "" {
		h.Set("Accept", accept)
	}
	return h
}

// endpoints builds the measured cases.
func (e *env) endpoints() []endpoint {
	pacs := e.pacs.DICOMwebURL()
	ds := e.ds
	qidoStudies := pacs + "/studies?" + encodeQIDO(url.Values{"PatientID": {benchMRN}, "includefield": {studyIncludeFields}})
	seriesQuery := "?" + encodeQIDO(url.Values{"includefield": {seriesIncludeFields}})
	jsonH := e.directHeader("application/dicom+json")
	studyOp := get(qidoStudies, jsonH)
	var seriesOps []op
	for _, uid := range ds.studies {
		seriesOps = append(seriesOps, get(pacs+"/studies/"+uid+"/series"+seriesQuery, jsonH))
	}
	// The calls one ImagingStudy search makes, issued the way the gateway
	// issues them: the studies query, then the series queries, at most
	// gatewayQIDOConcurrency at a time.
	searchSet := func(ctx context.Context, c *http.Client, buf []byte) (int64, error) {
		n, err := studyOp(ctx, c, buf)
		if err != nil {
			return n, err
		}
		var (
			mu    sync.Mutex
			total = n
			first error
			wg    sync.WaitGroup
		)
		sem := make(chan struct{}, gatewayQIDOConcurrency)
		for _, so := range seriesOps {
			wg.Add(1)
			sem <- struct{}{}
			go func(so op) {
				defer wg.Done()
				defer func() { <-sem }()
				b := make([]byte, 32<<10)
				k, err := so(ctx, c, b)
				mu.Lock()
				total += k
				if err != nil && first == nil {
					first = err
				}
				mu.Unlock()
			}(so)
		}
		wg.Wait()
		return total, first
	}
	search := get(e.gw.url("/bench/fhir/ImagingStudy?patient="+benchPatient), bearerHeader(e.token, ""))

	st := ds.wadoStudy
	wadoBase := e.wado[st]
	inst := "/studies/" + st + "/series/" + ds.instSeries + "/instances/" + ds.instUID
	frames := fmt.Sprintf("/studies/%s/series/%s/instances/%s/frames/%d", st, ds.frameSeries, ds.frameUID, ds.frameNumber)
	plain := e.gw.url("/plain/dicom-web")
	w := func(path, accept string) (op, op, op) {
		h := http.Header{}
		h.Set("Accept", accept)
		return get(pacs+path, e.directHeader(accept)), get(wadoBase+path, bearerHeader(e.token, accept)), get(plain+path, h)
	}
	studyD, studyG, studyC := w("/studies/"+st, acceptDICOM)
	instD, instG, instC := w(inst, acceptDICOM)
	frameD, frameG, frameC := w(frames, acceptFrames)
	metaD, metaG, metaC := w("/studies/"+st+"/metadata", acceptMetadata)

	// The metadata cache (route /cached, ttl 1h; /reval, ttl 1ns: every
	// request revalidates with one QIDO study query).
	cachedMeta := get(e.cachedWADO[st]+"/studies/"+st+"/metadata", bearerHeader(e.token, acceptMetadata))
	revalMeta := get(e.revalWADO[st]+"/studies/"+st+"/metadata", bearerHeader(e.token, acceptMetadata))
	cachedSearch := get(e.gw.url("/cached/fhir/ImagingStudy?patient="+benchPatient), bearerHeader(e.token, ""))
	many := "/studies/" + ds.manyStudy + "/metadata"
	manyD := get(pacs+many, e.directHeader(acceptMetadata))
	manyCached := get(e.manyWADO[ds.manyStudy]+many, bearerHeader(e.manyToken, acceptMetadata))
	// A viewer opening a study: the series list, the study's metadata, the
	// first frame, one after the other (time to first frame is the p50).
	// Directly: QIDO series; through the gateway: the ImagingStudy search
	// (which lists the series).
	seq := func(ops ...op) op {
		return func(ctx context.Context, c *http.Client, buf []byte) (int64, error) {
			var total int64
			for _, o := range ops {
				n, err := o(ctx, c, buf)
				total += n
				if err != nil {
					return total, err
				}
			}
			return total, nil
		}
	}
	openD := seq(get(pacs+"/studies/"+st+"/series"+seriesQuery, jsonH), metaD, frameD)
	openG := seq(cachedSearch, cachedMeta, get(e.cachedWADO[st]+frames, bearerHeader(e.token, acceptFrames)))
	ohifD, ohifG := e.ohifFirstImage()
	return []endpoint{
		{Name: "qido-studies", Label: "QIDO studies?PatientID (1 call, reference)", Direct: studyOp},
		{Name: "search", Label: fmt.Sprintf("search: %d QIDO direct vs ImagingStudy", 1+len(ds.studies)), Direct: searchSet, Gateway: search, Target: 0.85},
		{Name: "wado-study", Label: fmt.Sprintf("WADO study (%d inst, %.1f MB)", ds.studyInstances, float64(ds.studyBytes)/1e6), Direct: studyD, Gateway: studyG, Caddy: studyC, Target: 0.90},
		{Name: "wado-instance", Label: "WADO instance (512x512 CT)", Direct: instD, Gateway: instG, Caddy: instC, Target: 0.90},
		{Name: "wado-frames", Label: "WADO frames/1 (256x256)", Direct: frameD, Gateway: frameG, Caddy: frameC, Target: 0.85},
		{Name: "wado-metadata", Label: "WADO study metadata", Direct: metaD, Gateway: metaG, Caddy: metaC, Target: 0.85},
		{Name: "cached-metadata", Label: fmt.Sprintf("study metadata (%d inst), metadata_cache", ds.studyInstances), Direct: metaD, Gateway: cachedMeta, Target: 2, AlsoAt1: true},
		{Name: "cached-search", Label: fmt.Sprintf("search: %d QIDO direct vs ImagingStudy, metadata_cache", 1+len(ds.studies)), Direct: searchSet, Gateway: cachedSearch, Target: 2, AlsoAt1: true},
		{Name: "cached-reval", Label: "study metadata, revalidated on every request (ttl 1ns)", Direct: metaD, Gateway: revalMeta},
		{Name: "cached-many", Label: fmt.Sprintf("study metadata (%d inst), metadata_cache", manyInstances), Direct: manyD, Gateway: manyCached, Target: 2, AlsoAt1: true},
		{Name: "viewer-open", Label: "viewer open: series + metadata + frame (p50 = time to first frame)", Direct: openD, Gateway: openG},
		{Name: "ohif-first-image", Label: "OHIF first image: QIDO studies, series, series metadata, frame 1 (4 calls)", Direct: ohifD, Gateway: ohifG},
		// The cost of immediate revocation: every request introspected.
		{Name: "wado-frames-nocache", Label: "WADO frames/1, cache_ttl 0 (introspection per request)", Direct: frameD,
			Gateway: get(e.wadoNoCache[st]+frames, bearerHeader(e.token, acceptFrames)), Uncached: true},
	}
}

// ohifFirstImage is what OHIF requests before it shows a study's first
// image, one after the other: the study list, the study's series, the
// first series' metadata and its first instance's first frame. Direct:
// from Orthanc (the study list filtered by the patient's PatientID, as a
// patient-bound viewer would need); gateway: through the route's
// patient-scoped DICOMweb root with the access token.
func (e *env) ohifFirstImage() (direct, gateway op) {
	ds := e.ds
	st := ds.wadoStudy
	steps := func(base string, h func(accept string) http.Header, list string) op {
		ops := []op{
			get(base+"/studies?"+list, h("application/dicom+json")),
			get(base+"/studies/"+st+"/series", h("application/dicom+json")),
			get(base+"/studies/"+st+"/series/"+ds.instSeries+"/metadata", h(acceptMetadata)),
			get(base+"/studies/"+st+"/series/"+ds.instSeries+"/instances/"+ds.instUID+"/frames/1", h(acceptFrames)),
		}
		return func(ctx context.Context, c *http.Client, buf []byte) (int64, error) {
			var total int64
			for _, o := range ops {
				n, err := o(ctx, c, buf)
				total += n
				if err != nil {
					return total, err
				}
			}
			return total, nil
		}
	}
	list := "limit=101&offset=0&fuzzymatching=false"
	direct = steps(e.pacs.DICOMwebURL(), e.directHeader, list+"&PatientID="+url.QueryEscape(benchMRN))
	gateway = steps(e.gw.url("/bench/dicomweb"), func(accept string) http.Header { return bearerHeader(e.token, accept) }, list)
	return direct, gateway
}

// encodeQIDO encodes like the gateway does: commas stay commas.
func encodeQIDO(v url.Values) string {
	return strings.ReplaceAll(v.Encode(), "%2C", ",")
}

// discover runs an ImagingStudy search on route prefix and returns each
// study's WADO-RS base (its Endpoint address).
func (e *env) discover(ctx context.Context, prefix, patient, token string) (map[string]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.gw.url("/"+prefix+"/fhir/ImagingStudy?patient="+patient), nil)
	if err != nil {
		return nil, err
	}
	req.Header = bearerHeader(token, "")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("search on /%s: HTTP %d: %.300s%s", prefix, resp.StatusCode, body, e.gw.logTail())
	}
	out, err := fhirclient.StudyEndpoints(body)
	if err != nil {
		return nil, fmt.Errorf("search on /%s: %w", prefix, err)
	}
	if len(out) == 0 {
		return nil, errors.New("search: no ImagingStudy with an Endpoint in the Bundle")
	}
	return out, nil
}

// measure runs every endpoint at every client count, direct and gateway
// back to back, for o.rounds rounds (the order alternates per round).
func (e *env) measure(ctx context.Context, eps []endpoint) error {
	intro0 := e.ehr.Calls(testehr.Introspect)
	patient0 := e.ehr.Calls(testehr.Patient)
	if len(eps) == 0 {
		return nil
	}
	if eps[0].Uncached {
		// Counted by the caller, apart from the steady state.
		return e.measureRounds(ctx, eps, new(int64))
	}
	var gatewaySent int64
	if err := e.measureRounds(ctx, eps, &gatewaySent); err != nil {
		return err
	}
	// The same token was cached before the first case (discovery used it).
	e.res.Counts.GatewayRequests = gatewaySent
	e.res.Counts.IntrospectionsDuringCases = e.ehr.Calls(testehr.Introspect) - intro0
	e.res.Counts.PatientReadsDuringCases = e.ehr.Calls(testehr.Patient) - patient0
	if gatewaySent > 0 {
		e.res.Counts.IntrospectionsPer1000 = float64(e.res.Counts.IntrospectionsDuringCases) * 1000 / float64(gatewaySent)
	}
	return nil
}

// measureRounds runs the rounds of measure, adding the gateway requests
// sent to *gatewaySent.
func (e *env) measureRounds(ctx context.Context, eps []endpoint, gatewaySent *int64) error {
	for round := 0; round < e.o.rounds; round++ {
		for _, ep := range eps {
			for _, c := range e.o.clients {
				order := []string{"direct", "caddy", "gateway"}
				if round%2 == 1 {
					order = []string{"gateway", "caddy", "direct"}
				}
				for _, target := range order {
					o := map[string]op{"direct": ep.Direct, "caddy": ep.Caddy, "gateway": ep.Gateway}[target]
					if o == nil {
						continue
					}
					var onWindow func(context.Context)
					if e.o.profileDir != "" && target != "direct" && c == 16 && round == 0 {
						file := filepath.Join(e.o.profileDir, ep.Name+"-"+target+"-c16.cpu.pprof")
						secs := max(1, int(e.o.duration.Seconds()))
						onWindow = func(ctx context.Context) {
							if err := e.gw.fetchProfile(context.WithoutCancel(ctx), fmt.Sprintf("profile?seconds=%d", secs), file); err != nil {
								fmt.Fprintf(os.Stderr, "bench: %v\n", err)
							}
						}
					}
					if err := ctx.Err(); err != nil {
						return err
					}
					r := runLoad(ctx, o, c, e.o.warmup, e.o.duration, e.pids, onWindow)
					if target == "gateway" && ep.Uncached {
						e.res.Counts.NoCacheRequests += r.Sent
					} else if target == "gateway" {
						*gatewaySent += r.Sent
					}
					e.res.add(ep, target, c, r)
					fmt.Printf("  %-14s %-7s c=%-3d %8.1f req/s  p50 %7.2f ms  p99 %7.2f ms  %8.1f MB/s  errors %d %s\n",
						ep.Name, target, c, r.RPS, r.P50ms, r.P99ms, r.MBps, r.Errors, shortErr(r.FirstError))
				}
			}
		}
	}
	return nil
}

func shortErr(s string) string {
	if s == "" {
		return ""
	}
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return "(" + s + ")"
}
