package integration

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
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

// dynFlood sends n distinct /dyn configs (urlFor(i)) without a token, one
// after the other: each provisions a tenant and is refused with 401; at
// most max_configs stay provisioned. It returns the snapshots before and
// after, the latter once the goroutine count came back within
// goroutineMargin of before (or 10 s passed): an evicted tenant's
// goroutines end when its context is cancelled, which takes a moment.
func dynFlood(t *testing.T, c *http.Client, n, goroutineMargin int, urlFor func(i int) string) (before, after memSnapshot) {
	t.Helper()
	get := func(u string) {
		resp, err := c.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("GET %.120s…: HTTP %d, want 401 (no token)", u, resp.StatusCode)
		}
	}
	// Warm up: fill the tenant cache and whatever the first tenants
	// create once per process.
	for i := 0; i < 100; i++ {
		get(urlFor(-1 - i))
	}
	before = takeMemSnapshot()
	for i := 0; i < n; i++ {
		get(urlFor(i))
	}
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
	return testGlobals + "\tgrace_period 1ns\n}\nhttp://localhost:9080 {" +
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
