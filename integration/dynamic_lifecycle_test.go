package integration

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// memSnapshot is what a leak of dynamic tenants would grow: Caddy runs
// inside the test binary (caddytest), so its goroutines and memory are
// the test's.
type memSnapshot struct {
	goroutines int
	heapInuse  uint64 // bytes, after a collection
	rss        uint64 // bytes, after returning freed memory to the system
}

func (s memSnapshot) String() string {
	return fmt.Sprintf("%d goroutines, heap in use %.1f MiB, RSS %.1f MiB",
		s.goroutines, float64(s.heapInuse)/(1<<20), float64(s.rss)/(1<<20))
}

func takeMemSnapshot() memSnapshot {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := memSnapshot{goroutines: runtime.NumGoroutine(), heapInuse: ms.HeapInuse}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			s.rss = pages * uint64(os.Getpagesize())
		}
	}
	return s
}

// dynFlood sends n distinct /dyn configs (urlFor(i)) without a token, from
// four clients at once: each provisions a tenant and is refused with 401;
// at most max_configs stay provisioned. It returns the snapshots before and
// after, the latter once the goroutine count came back within
// goroutineMargin of before (or 10 s passed): an evicted tenant's
// goroutines end when its context is cancelled, which takes a moment.
func dynFlood(t *testing.T, c *http.Client, n, goroutineMargin int, urlFor func(i int) string) (before, after memSnapshot) {
	t.Helper()
	get := func(u string) error {
		resp, err := c.Get(u)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("GET %.120s…: HTTP %d, want 401 (no token)", u, resp.StatusCode)
		}
		return nil
	}
	run := func(from, to int) {
		const workers = 4
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			go func(w int) {
				for i := from + w; i < to; i += workers {
					if err := get(urlFor(i)); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}(w)
		}
		for w := 0; w < workers; w++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	// Warm up: fill the tenant cache and whatever the first tenants
	// create once per process.
	run(-100, 0)
	before = takeMemSnapshot()
	run(0, n)
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before.goroutines+goroutineMargin && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	return before, takeMemSnapshot()
}

// dynLifecycleConfig is a Caddy with two /dyn routes whose tenants take
// SMART tokens: /jwt checks them locally (each tenant has a JWKS cache
// with its workers), /introspection asks the EHR. Both front the same
// PACS; the parent routes serve the demo folder.
func dynLifecycleConfig(ehr *testehr.EHR, pacsHost string, maxConfigs int) string {
	key := base64.StdEncoding.EncodeToString(testKey)
	route := func(prefix, policy string) string {
		return fmt.Sprintf(`
	handle_path /%[1]s/* {
		smart_imaging {
			authz mock {
				patient %[2]s mrn %[3]s
			}
			images folder ../examples/demo/studies
			study_token_key %[4]s
			dynamic_config {
				allow_hosts %[5]s %[6]s
				credentials %[5]s basic gateway pacs-password
				credentials %[6]s client_secret gateway ehr-secret
				max_configs %[7]d
				authz smart-on-fhir {
					%[8]s
				}
			}
		}
	}`, prefix, demoPatient, demoMRN, key, pacsHost, hostOf(ehr.URL()), maxConfigs, policy)
	}
	return testGlobals + "\tgrace_period 2s\n}\nhttp://localhost:9080 {" +
		route("jwt", "validation jwt\n\t\t\t\t\taudience "+ehr.FHIRBase()+"\n\t\t\t\t\ttimeout 3s") +
		route("introspection", "audience "+ehr.FHIRBase()+"\n\t\t\t\t\ttimeout 3s") + "\n}\n"
}

// fakePACS answers every QIDO-RS query with no match.
func fakePACS(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom+json")
		_, _ = io.WriteString(w, "[]")
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestDynamicTenantsReleased floods both routes with distinct /dyn configs
// and no token, as anyone can: each provisions a tenant (a JWKS cache, a
// reverse proxy with its metrics updater, caches), and at most
// max_configs stay. An evicted tenant must release everything: the
// goroutine count and memory stay flat however many configs came by.
// SMART_IMAGING_DYN_CONFIGS sets the number per route (default 1500).
func TestDynamicTenantsReleased(t *testing.T) {
	n := 1500
	if v, err := strconv.Atoi(os.Getenv("SMART_IMAGING_DYN_CONFIGS")); err == nil && v > 0 {
		n = v
	}
	ehr := testehr.New(t)
	pacs := fakePACS(t)
	pacsHost := hostOf(pacs.URL)
	tc := caddytest.NewTester(t)
	tc.InitServer(dynLifecycleConfig(ehr, pacsHost, 8), "caddyfile")
	c := newRawClient(4)
	defer c.CloseIdleConnections()

	for _, route := range []string{"jwt", "introspection"} {
		t.Run(route, func(t *testing.T) {
			urlFor := func(i int) string {
				doc := jsonObj{
					"authz":  jsonObj{"kind": "smart-on-fhir", "fhir_base_url": ehr.FHIRBase()},
					"images": jsonObj{"kind": "dicomweb", "base_url": fmt.Sprintf("%s/dicom-web/%d", pacs.URL, i)},
				}
				return base + "/" + route + "/dyn/" + dynSegment(doc) + "/fhir/ImagingStudy?patient=" + demoPatient
			}
			before, after := dynFlood(t, c, n, 30, urlFor)
			summary := fmt.Sprintf("dyn flood, %s policy, %d distinct configs without a token: before %s; after %s", route, n, before, after)
			t.Log(summary)
			fmt.Println(summary)
			if after.goroutines > before.goroutines+30 {
				t.Errorf("goroutines grew from %d to %d over %d configs: evicted tenants live on\n%.3000s", before.goroutines, after.goroutines, n, goroutineDump())
			}
			if grown := int64(after.heapInuse) - int64(before.heapInuse); grown > 16<<20 {
				t.Errorf("heap in use grew by %.1f MiB over %d configs: evicted tenants are kept", float64(grown)/(1<<20), n)
			}
			if grown := int64(after.rss) - int64(before.rss); before.rss > 0 && grown > 32<<20 {
				t.Errorf("RSS grew by %.1f MiB over %d configs", float64(grown)/(1<<20), n)
			}
		})
	}
}

// TestDynamicEvictionDuringRequest evicts a tenant while one of its
// requests is still being served: the request must finish as if nothing
// happened, and the tenant is released afterwards. The request is held at
// the EHR's discovery (stalled); meanwhile other configs push the tenant
// out of the cache; then discovery answers and the request goes on to
// fetch the EHR's keys through the tenant's JWKS cache, whose workers a
// premature release would already have stopped.
func TestDynamicEvictionDuringRequest(t *testing.T) {
	ehr := testehr.New(t)
	ehr.RegisterClient(testehr.Client{ID: "gateway", Secret: "ehr-secret"})
	ehr.AddPatient(demoPatient, testehr.Identifier{System: atkMRNSystem, Value: demoMRN, TypeCode: "MR"})
	pacs := fakePACS(t)
	tc := caddytest.NewTester(t)
	tc.InitServer(dynLifecycleConfig(ehr, hostOf(pacs.URL), 2), "caddyfile")
	c := newRawClient(8)
	defer c.CloseIdleConnections()

	tenant := func(path string) string {
		doc := jsonObj{
			"authz":  jsonObj{"kind": "smart-on-fhir", "fhir_base_url": ehr.FHIRBase()},
			"images": jsonObj{"kind": "dicomweb", "base_url": pacs.URL + path},
		}
		return base + "/jwt/dyn/" + dynSegment(doc)
	}
	tok := ehr.IssueToken(testehr.TokenSpec{Format: testehr.JWT, Patient: demoPatient, Aud: []string{ehr.FHIRBase()}})

	release := ehr.Stall(testehr.Discovery)
	defer release()
	discoveryBefore := ehr.Calls(testehr.Discovery)
	type answer struct {
		status int
		body   string
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, tenant("/dicom-web")+"/fhir/ImagingStudy?patient="+demoPatient, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.Do(req)
		if err != nil {
			done <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- answer{status: resp.StatusCode, body: string(b), err: err}
	}()
	waitFor(t, 10*time.Second, "the request to reach the EHR's discovery", func() bool { return ehr.Calls(testehr.Discovery) > discoveryBefore })

	// Three other tenants (max_configs is 2) push the first one out.
	for i := 0; i < 3; i++ {
		resp, err := c.Get(tenant(fmt.Sprintf("/other-%d", i)) + "/health/live")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("another tenant's /health/live: HTTP %d", resp.StatusCode)
		}
	}
	release()
	select {
	case a := <-done:
		if a.err != nil || a.status != http.StatusOK || !strings.Contains(a.body, `"searchset"`) {
			t.Fatalf("the evicted tenant's request: HTTP %d, %v: %.300s", a.status, a.err, a.body)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the evicted tenant's request never finished")
	}
	if n := ehr.Calls(testehr.JWKS); n == 0 {
		t.Error("the request never fetched the JWKS: the test did not exercise the evicted tenant's key cache")
	}
}

// waitFor polls cond every 10 ms until it holds, failing after within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readmeLogFilter is the access log filter the README's security section
// recommends: the pattern and the replacement of its request>uri regexp.
func readmeLogFilter(t *testing.T) (pattern, replacement string) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "## Security model")
	if !ok {
		t.Fatal("the README has no Security model section")
	}
	m := regexp.MustCompile(`request>uri\s+regexp\s+"([^"]+)"\s+"([^"]*)"`).FindStringSubmatch(sec)
	if m == nil {
		t.Fatal("the README's security section recommends no request>uri regexp filter")
	}
	return m[1], m[2]
}

// TestDynamicCredentialsStayOutOfURLsAndLogs runs /dyn tenants the way the
// README says to: upstream credentials from the operator per host, the
// access log and Caddy's DEBUG log filtered with the README's filter. The
// PACS gets the operator's credentials; a URL carrying its own is refused
// unless the route allows it; and neither log holds a /dyn segment, what
// it decodes to, or any credential.
func TestDynamicCredentialsStayOutOfURLsAndLogs(t *testing.T) {
	var (
		mu   sync.Mutex
		auth []string
	)
	pacs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/dicom+json")
		_, _ = io.WriteString(w, "[]")
	}))
	t.Cleanup(pacs.Close)
	pacsAuth := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), auth...)
	}
	const operatorPassword, urlPassword = "operator-pacs-password-7f3a", "url-pacs-password-91c2"
	pattern, replacement := readmeLogFilter(t)
	dir := t.TempDir()
	debugLog, accessLog := filepath.Join(dir, "debug.log"), filepath.Join(dir, "access.log")
	key := base64.StdEncoding.EncodeToString(testKey)
	route := func(prefix, extra string) string {
		return fmt.Sprintf(`
	handle_path /%s/* {
		smart_imaging {
			authz mock {
				patient %s mrn %s
			}
			images folder ../examples/demo/studies
			study_token_key %s
			dynamic_config {
				allow_hosts %s
				allow_mock
				%s
			}
		}
	}`, prefix, demoPatient, demoMRN, key, hostOf(pacs.URL), extra)
	}
	tc := caddytest.NewTester(t)
	// Caddy's own log at DEBUG, filtered as the README says for DEBUG
	// (Caddy's rewrite handler logs each request's URI there).
	tc.InitServer(testGlobals+fmt.Sprintf(`	grace_period 2s
	log {
		output file %[1]s
		level DEBUG
		format filter {
			wrap json
			request>uri regexp %[3]q %[4]q
			uri regexp %[3]q %[4]q
		}
	}
}
http://localhost:9080 {
	log {
		output file %[2]s
		format filter {
			wrap json
			request>uri regexp %[3]q %[4]q
		}
	}`, debugLog, accessLog, pattern, replacement)+
		route("operator", "credentials "+hostOf(pacs.URL)+" basic gateway "+operatorPassword)+
		route("url", "allow_url_credentials")+"\n}\n", "caddyfile")

	images := jsonObj{"kind": "dicomweb", "base_url": pacs.URL + "/dicom-web"}
	mockA := jsonObj{"kind": "mock", "patient": demoPatient, "mrn": []string{demoMRN}}
	plain := jsonObj{"authz": mockA, "images": images}
	withPassword := jsonObj{"authz": mockA, "images": merge(images, jsonObj{"username": "someone", "password": urlPassword})}
	var segments []string
	ask := func(route string, doc jsonObj, want int) []byte {
		seg := dynSegment(doc)
		segments = append(segments, seg)
		return get(t, tc, base+"/"+route+"/dyn/"+seg+"/fhir/ImagingStudy?patient="+demoPatient, "application/fhir+json", want, "application/fhir+json")
	}

	ask("operator", plain, http.StatusOK)
	basic := func(user, pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
	}
	if got := pacsAuth(); len(got) != 1 || got[0] != basic("gateway", operatorPassword) {
		t.Fatalf("the PACS saw Authorization %q, want the operator's credentials once", got)
	}
	body := ask("operator", withPassword, http.StatusBadRequest)
	if d := diagnosticsOf(body); !strings.Contains(d, "images.password") || strings.Contains(d, urlPassword) {
		t.Errorf("refusal of a password in the URL: %q", d)
	}
	if got := pacsAuth(); len(got) != 1 {
		t.Fatalf("the refused config reached the PACS: %q", got)
	}
	ask("url", withPassword, http.StatusOK)
	if got := pacsAuth(); len(got) != 2 || got[1] != basic("someone", urlPassword) {
		t.Fatalf("with allow_url_credentials the PACS saw %q, want the URL's credentials", got)
	}
	ask("url", plain, http.StatusOK)
	if got := pacsAuth(); len(got) != 3 || got[2] != "" {
		t.Fatalf("a host without operator credentials got %q", got)
	}

	secrets := []string{operatorPassword, urlPassword, basic("gateway", operatorPassword), basic("someone", urlPassword)}
	for _, name := range []string{accessLog, debugLog} {
		var lines []string
		waitFor(t, 5*time.Second, "the access log lines", func() bool {
			lines = readLogLines(t, name)
			return name == debugLog || len(lines) >= len(segments)
		})
		text := strings.Join(lines, "\n")
		for i, l := range lines {
			// What a segment decodes to is scanned too.
			decoded := l
			for _, m := range dynSegmentInLog.FindAllStringSubmatch(l, -1) {
				if raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(m[1], "=")); err == nil {
					decoded += "\n" + string(raw)
				}
			}
			for _, seg := range segments {
				if strings.Contains(l, seg) {
					t.Errorf("%s line %d holds a /dyn segment: %.300s", filepath.Base(name), i, l)
				}
			}
			for _, s := range secrets {
				if strings.Contains(decoded, s) {
					t.Errorf("%s line %d holds a credential (%.12s…): %.300s", filepath.Base(name), i, s, l)
				}
			}
		}
		if name == accessLog && !strings.Contains(text, "/dyn/REDACTED") {
			t.Errorf("the access log does not show the filtered /dyn path:\n%.2000s", text)
		}
		t.Logf("checked %d lines of %s", len(lines), filepath.Base(name))
	}
}
