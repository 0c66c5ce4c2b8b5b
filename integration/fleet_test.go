package integration

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
)

// The fleet's loopback ports (the caddytest ports 9080/9443/2999 belong to
// the other tests of this package).
const (
	fleetLBPort    = 19080
	fleetLBAdmin   = 19090
	fleetRoute     = "/demo" // the route of examples/fleet/replica.Caddyfile
	fleetBigStudy  = "2.25.4711000000000000000000001.1"
	fleetBigParts  = 64 // instances of the big study, 4 MiB each
	fleetHealthURL = fleetRoute + "/health/live"
)

var (
	fleetReplicaPorts = [2]int{19081, 19082}
	fleetReplicaAdmin = [2]int{19091, 19092}
	fleetReplicaNames = [2]string{"r1", "r2"}
	fleetLBBase       = fmt.Sprintf("http://127.0.0.1:%d%s", fleetLBPort, fleetRoute)
)

// fleet is the topology of examples/fleet: two gateway replicas behind a
// Caddy load balancer, each a process of a freshly built Caddy.
type fleet struct {
	t        *testing.T // the running (sub)test
	root     *testing.T // owns the processes
	bin      string
	home     string
	studies  string
	replicas [2]*caddyProc
	keys     [2][2][]byte // per replica: current, previous
	lb       *caddyProc
	c        *http.Client
	bigFiles map[string]string // SHA-256 → file of the big study
}

func replicaBase(i int) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", fleetReplicaPorts[i], fleetRoute)
}

func replicaAdmin(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", fleetReplicaAdmin[i]) }

func (f *fleet) startReplica(i int, current, previous []byte) {
	f.t.Helper()
	env := processEnv(f.home, map[string]string{
		"REPLICA_PORT":               fmt.Sprint(fleetReplicaPorts[i]),
		"ADMIN_PORT":                 fmt.Sprint(fleetReplicaAdmin[i]),
		"REPLICA_NAME":               fleetReplicaNames[i],
		"STUDIES":                    f.studies,
		"PUBLIC_URL":                 fmt.Sprintf("http://127.0.0.1:%d", fleetLBPort),
		"BIND_HOST":                  "127.0.0.1",
		"SMART_IMAGING_KEY":          base64.StdEncoding.EncodeToString(current),
		"SMART_IMAGING_PREVIOUS_KEY": base64.StdEncoding.EncodeToString(previous),
	})
	f.replicas[i] = startCaddy(f.t, f.root, f.bin, fleetReplicaNames[i], "examples/fleet/replica.Caddyfile", f.home, env,
		replicaBase(i)+"/health/live")
	f.keys[i] = [2][]byte{current, previous}
}

// restartReplica stops replica i with SIGTERM (as an orchestrator does),
// starts it with new keys and waits until the balancer sends it traffic.
func (f *fleet) restartReplica(i int, current, previous []byte) {
	f.t.Helper()
	f.replicas[i].signal(f.t, syscall.SIGTERM, 30*time.Second)
	f.startReplica(i, current, previous)
	f.waitRoutedTo(i)
}

// waitRoutedTo searches through the balancer until replica i answers one:
// it is back in the rotation. Every search on the way must succeed.
func (f *fleet) waitRoutedTo(i int) {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := searchStudies(f.c, fleetLBBase+"/fhir/ImagingStudy?patient="+demoPatient)
		if err != nil {
			f.t.Fatalf("search through the balancer while waiting for %s: %v", fleetReplicaNames[i], err)
		}
		if res.replica == fleetReplicaNames[i] {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("the balancer did not send a request to %s within 30s", fleetReplicaNames[i])
		}
		time.Sleep(50 * time.Millisecond) // poll interval, bounded by the deadline above
	}
}

// retrieveStatus GETs the metadata of study uid under address moved onto
// base, and returns the status and the body.
func (f *fleet) retrieveStatus(address, base, uid string) (int, []byte, string) {
	f.t.Helper()
	u := rebase(f.t, address, fleetLBBase, base) + "/studies/" + uid + "/metadata"
	resp, body, err := fetch(f.c, u, "application/dicom+json", 20*time.Second)
	if err != nil {
		f.t.Fatalf("%s", redact(err.Error()))
	}
	return resp.StatusCode, body, resp.Header.Get("X-Replica")
}

// mustOpen checks that address retrieves study uid on every replica listed.
func (f *fleet) mustOpen(what, address, uid string, replicas ...int) {
	f.t.Helper()
	for _, i := range replicas {
		status, body, rep := f.retrieveStatus(address, replicaBase(i), uid)
		if status != http.StatusOK || rep != fleetReplicaNames[i] {
			f.t.Errorf("%s on %s: status %d from %q, want 200 from %s: %.300s", what, fleetReplicaNames[i], status, rep, fleetReplicaNames[i], body)
		}
	}
}

// mustRefuse checks that address is refused (403) on every replica listed.
func (f *fleet) mustRefuse(what, address, uid string, replicas ...int) {
	f.t.Helper()
	for _, i := range replicas {
		status, body, _ := f.retrieveStatus(address, replicaBase(i), uid)
		if status != http.StatusForbidden || !strings.Contains(string(body), "OperationOutcome") {
			f.t.Errorf("%s on %s: status %d, want a 403 OperationOutcome: %.300s", what, fleetReplicaNames[i], status, body)
		}
	}
}

func (f *fleet) search(base string) fleetSearch {
	f.t.Helper()
	res, err := searchStudies(f.c, base+"/fhir/ImagingStudy?patient="+demoPatient)
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

// smallStudy is a demo study of the demo patient (not the big one).
func smallStudy(res fleetSearch) string {
	for _, uid := range keys(res.endpoints) {
		if uid != fleetBigStudy {
			return uid
		}
	}
	return ""
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, studytoken.KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// TestFleet runs examples/fleet on loopback: two replicas of the gateway
// sharing study_token_key behind a Caddy load balancer, three processes of
// a freshly built Caddy. It shows that study tokens open on every replica,
// that stopping a replica loses no request the balancer can retry, that a
// killed replica's streams break visibly, that a graceful reload keeps a
// stream going and leaks nothing, and that the key rotation procedure of
// the README never breaks a valid token.
func TestFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three Caddy processes (skipped in -short)")
	}
	t0 := time.Now()
	var timings []string
	lap := func(what string, since time.Time) {
		timings = append(timings, fmt.Sprintf("%s %.1fs", what, time.Since(since).Seconds()))
	}
	defer func() {
		t.Logf("fleet timings: %s; total %.1fs", strings.Join(timings, ", "), time.Since(t0).Seconds())
	}()

	checkPortsFree(t, fleetLBPort, fleetLBAdmin, fleetReplicaPorts[0], fleetReplicaPorts[1], fleetReplicaAdmin[0], fleetReplicaAdmin[1])

	start := time.Now()
	f := &fleet{t: t, root: t, bin: buildCaddy(t), home: t.TempDir(), studies: t.TempDir(), c: newFleetClient()}
	t.Cleanup(f.c.CloseIdleConnections)
	lap("build", start)

	// The demo studies plus one big study of the demo patient (256 MiB of
	// pixels: a stream lasts long enough to act while it runs).
	start = time.Now()
	if err := copyTree("../examples/demo/studies", f.studies); err != nil {
		t.Fatalf("copying the demo studies: %v", err)
	}
	bigDir := filepath.Join(f.studies, "big")
	m, err := dicomgen.WriteStudy(bigDir, dicomgen.StudySpec{
		PatientID: demoMRN, PatientName: "Kshlerin^Danae", StudyUID: fleetBigStudy,
		Series: 2, InstancesPerSeries: fleetBigParts / 2, Rows: 512, Cols: 512, Frames: 8,
	})
	if err != nil || len(m) != fleetBigParts {
		t.Fatalf("writing the big study: %d instances, %v", len(m), err)
	}
	f.bigFiles = hashFiles(t, bigDir)
	lap("generate 256 MiB study", start)

	// Phase 0 of the rotation: one key, named twice.
	oldKey, newKey := randomKey(t), randomKey(t)
	oldKID, newKID := studytoken.KeyID(oldKey), studytoken.KeyID(newKey)
	start = time.Now()
	f.startReplica(0, oldKey, oldKey)
	f.startReplica(1, oldKey, oldKey)
	f.lb = startCaddy(t, t, f.bin, "lb", "examples/fleet/lb.Caddyfile", f.home, processEnv(f.home, map[string]string{
		"LB_PORT":    fmt.Sprint(fleetLBPort),
		"ADMIN_PORT": fmt.Sprint(fleetLBAdmin),
		"REPLICAS":   fmt.Sprintf("127.0.0.1:%d 127.0.0.1:%d", fleetReplicaPorts[0], fleetReplicaPorts[1]),
		"BIND_HOST":  "127.0.0.1",
	}), fleetLBBase+"/health/live")
	f.waitRoutedTo(0)
	f.waitRoutedTo(1)
	lap("start 3 processes", start)

	oldRing, err := studytoken.NewKeyring(oldKey)
	if err != nil {
		t.Fatal(err)
	}

	ok := t.Run("a token minted by one replica opens on the other", func(t *testing.T) {
		f.t = t
		defer func() { f.t = f.root }()
		for i := range 2 {
			_, body, err := fetch(f.c, replicaBase(i)+"/health/ready", "application/fhir+json", 10*time.Second)
			if err != nil || !strings.Contains(string(body), "key id "+oldKID) {
				t.Errorf("%s /health/ready does not report key id %s: %v %.300s", fleetReplicaNames[i], oldKID, err, body)
			}
		}
		// Through the balancer: round robin reaches both replicas.
		seen := map[string]bool{}
		var viaLB fleetSearch
		for range 4 {
			viaLB = f.search(fleetLBBase)
			seen[viaLB.replica] = true
		}
		if !seen["r1"] || !seen["r2"] {
			t.Errorf("four searches through the balancer reached %v, want r1 and r2", keys(seen))
		}
		if _, ok := viaLB.endpoints[fleetBigStudy]; !ok || len(viaLB.endpoints) < 2 {
			t.Fatalf("the search found %v, want the demo patient's studies and the big one", keys(viaLB.endpoints))
		}
		uid := smallStudy(viaLB)
		addr := viaLB.endpoints[uid]
		if !strings.HasPrefix(addr, fleetLBBase+"/wado/") {
			t.Errorf("Endpoint address %s is not the balancer's (base_url)", addr)
		}
		claims, err := oldRing.Open(tokenOf(addr), time.Now())
		if err != nil || claims.Route != "demo" || claims.Expiry.Sub(claims.IssuedAt) != time.Hour {
			t.Errorf("the token opens with the shared key as %+v (%v), want route demo and a 1h lifetime", claims, err)
		}
		// The same address retrieves on each replica, byte for byte alike.
		_, b0, _ := f.retrieveStatus(addr, replicaBase(0), uid)
		_, b1, _ := f.retrieveStatus(addr, replicaBase(1), uid)
		f.mustOpen("a balancer-minted token", addr, uid, 0, 1)
		if string(b0) != string(b1) || len(b0) == 0 {
			t.Errorf("the replicas answer the same metadata request differently (%d and %d bytes)", len(b0), len(b1))
		}
		// Search on one, retrieve on the other, both ways.
		for i := range 2 {
			res := f.search(replicaBase(i))
			if res.replica != fleetReplicaNames[i] {
				t.Fatalf("direct search on %s answered by %q", fleetReplicaNames[i], res.replica)
			}
			other := 1 - i
			f.mustOpen("a token minted by "+fleetReplicaNames[i], res.endpoints[uid], uid, other)
			if kid := tokenKID(tokenOf(res.endpoints[uid])); kid != oldKID {
				t.Errorf("%s minted under key %s, want %s", fleetReplicaNames[i], kid, oldKID)
			}
		}
	})
	if !ok {
		t.FailNow()
	}

	ok = t.Run("graceful reload keeps a stream and leaks nothing", func(t *testing.T) {
		f.t = t
		defer func() { f.t = f.root }()
		start := time.Now()
		defer lap("graceful reload", start)
		admin := replicaAdmin(0)
		f.search(replicaBase(0))
		f.c.CloseIdleConnections()
		before, err := settledGoroutines(f.c, admin, -1, 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		metricsBefore, err := requestsTotal(f.c, admin)
		if err != nil {
			t.Fatal(err)
		}
		original, err := os.ReadFile("../examples/fleet/replica.Caddyfile")
		if err != nil {
			t.Fatal(err)
		}
		const ttlLine = "study_token_ttl 1h"
		if !strings.Contains(string(original), ttlLine) {
			t.Fatalf("examples/fleet/replica.Caddyfile has no %q line to change", ttlLine)
		}
		reload := func(ttl string) {
			t.Helper()
			cfg := strings.Replace(string(original), ttlLine, "study_token_ttl "+ttl, 1)
			req, _ := http.NewRequest(http.MethodPost, admin+"/load", strings.NewReader(cfg))
			req.Header.Set("Content-Type", "text/caddyfile")
			resp, err := f.c.Do(req)
			if err != nil {
				t.Fatalf("POST /load: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("POST /load: status %d: %s", resp.StatusCode, b)
			}
		}
		ttlNow := func() time.Duration {
			t.Helper()
			res := f.search(replicaBase(0))
			c, err := oldRing.Open(tokenOf(res.endpoints[smallStudy(res)]), time.Now())
			if err != nil {
				t.Fatalf("a token minted after the reload does not open: %v", err)
			}
			return c.Expiry.Sub(c.IssuedAt)
		}

		big := f.search(replicaBase(0)).endpoints[fleetBigStudy]
		s, err := openStudyStream(f.c, replicaBase(0)+strings.TrimPrefix(big, fleetLBBase)+"/studies/"+fleetBigStudy)
		if err != nil {
			t.Fatal(redact(err.Error()))
		}
		defer s.close()
		for range 2 {
			if err := s.next(f.bigFiles); err != nil {
				t.Fatalf("start of the stream: %v", err)
			}
		}
		reload("30m")
		if got := ttlNow(); got != 30*time.Minute {
			t.Errorf("after the reload new tokens live %v, want 30m (the new config)", got)
		}
		if s.parts >= fleetBigParts || s.body.n.Load() >= 200<<20 {
			t.Fatalf("the stream was not in flight during the reload (%d parts read)", s.parts)
		}
		for {
			err := s.next(f.bigFiles)
			if err == io.EOF { // the closing boundary
				break
			}
			if err != nil {
				t.Fatalf("the stream in flight during the reload broke: %v", err)
			}
		}
		if s.parts != fleetBigParts {
			t.Fatalf("the stream in flight during the reload gave %d parts, want %d", s.parts, fleetBigParts)
		}
		t.Logf("stream of %d MiB completed byte-exact across the reload", s.body.n.Load()>>20)

		// Nine more reloads: a goroutine leaked per reload would show.
		for _, ttl := range []string{"20m", "40m", "50m", "10m", "15m", "25m", "35m", "45m", "1h"} {
			reload(ttl)
			want, _ := time.ParseDuration(ttl)
			if got := ttlNow(); got != want {
				t.Errorf("after reloading with study_token_ttl %s new tokens live %v", ttl, got)
			}
		}
		f.c.CloseIdleConnections()
		// Wait (bounded) for the count to come back near where it was; a
		// few keep-alive connections (the balancer's health checks) may
		// come and go, a goroutine leaked per reload would add ten.
		const margin = 6
		after, err := settledGoroutines(f.c, admin, before+1, 10*time.Second)
		t.Logf("goroutines of r1: %d before, %d after 10 reloads", before, after)
		if err != nil && after > before+margin {
			t.Errorf("goroutines leak across reloads: %v (before: %d)", err, before)
		}
		metricsAfter, err := requestsTotal(f.c, admin)
		if err != nil {
			t.Fatal(err)
		}
		// The stream, the search before it and ten searches after reloads.
		if metricsAfter < metricsBefore+12 {
			t.Errorf("caddy_smart_imaging_requests_total went from %v to %v across reloads; counts must survive", metricsBefore, metricsAfter)
		}
	})
	if !ok {
		t.FailNow()
	}

	ok = t.Run("stopping a replica mid-run loses no request", func(t *testing.T) {
		f.t = t
		defer func() { f.t = f.root }()
		start := time.Now()
		defer lap("SIGTERM under load", start)
		load := startLoad(4, 20000, func() (string, error) {
			res, err := searchStudies(f.c, fleetLBBase+"/fhir/ImagingStudy?patient="+demoPatient)
			if err == nil && len(res.endpoints) < 2 {
				err = fmt.Errorf("search through the balancer found %d studies", len(res.endpoints))
			}
			return res.replica, err
		})
		load.waitMore(t, 50, 30*time.Second)
		f.replicas[1].signal(t, syscall.SIGTERM, 30*time.Second)
		stoppedAt := load.n.Load()
		load.waitMore(t, stoppedAt+100, 30*time.Second)
		n, failures, byReplica := load.finish()
		t.Logf("%d searches through the balancer while r2 stopped: %v; failures: %d", n, byReplica, len(failures))
		if len(failures) > 0 {
			t.Errorf("%d of %d searches failed while a replica stopped; first: %s", len(failures), n, failures[0])
		}
		if byReplica["r2"] == 0 || byReplica["r1"] == 0 {
			t.Errorf("the load reached %v; both replicas should have served before the stop", byReplica)
		}
		f.startReplica(1, f.keys[1][0], f.keys[1][1])
		f.waitRoutedTo(1)
	})
	if !ok {
		t.FailNow()
	}

	ok = t.Run("a killed replica's streams break visibly", func(t *testing.T) {
		f.t = t
		defer func() { f.t = f.root }()
		start := time.Now()
		defer lap("SIGKILL mid-stream", start)
		big := f.search(fleetLBBase).endpoints[fleetBigStudy]
		viaLB, err := openStudyStream(f.c, big+"/studies/"+fleetBigStudy)
		if err != nil {
			t.Fatal(redact(err.Error()))
		}
		defer viaLB.close()
		victim := 0
		if viaLB.replica == "r2" {
			victim = 1
		} else if viaLB.replica != "r1" {
			t.Fatalf("the balanced stream came from %q", viaLB.replica)
		}
		direct, err := openStudyStream(f.c, replicaBase(victim)+strings.TrimPrefix(big, fleetLBBase)+"/studies/"+fleetBigStudy)
		if err != nil {
			t.Fatal(redact(err.Error()))
		}
		defer direct.close()
		streams := map[string]*studyStream{"through the balancer": viaLB, "direct": direct}
		for name, s := range streams {
			for range 2 {
				if err := s.next(f.bigFiles); err != nil {
					t.Fatalf("%s: start of the stream: %v", name, err)
				}
			}
		}
		f.replicas[victim].signal(t, syscall.SIGKILL, 10*time.Second)
		for name, s := range streams {
			var err error
			for err == nil {
				err = s.next(f.bigFiles)
			}
			t.Logf("%s: %d MiB and %d whole parts, then: %v", name, s.body.n.Load()>>20, s.parts, err)
			if err == io.EOF { // the closing boundary
				t.Errorf("%s: the stream of the killed replica ended as a well-formed multipart body of %d parts (want a broken transfer)", name, s.parts)
			}
			if s.parts >= fleetBigParts {
				t.Errorf("%s: all %d parts arrived although the replica was killed mid-transfer", name, s.parts)
			}
		}
		// The balancer carries on with the survivor.
		for range 10 {
			if res := f.search(fleetLBBase); res.replica != fleetReplicaNames[1-victim] {
				t.Errorf("a search after the kill came from %q", res.replica)
			}
		}
		f.startReplica(victim, f.keys[victim][0], f.keys[victim][1])
		f.waitRoutedTo(victim)
	})
	if !ok {
		t.FailNow()
	}

	t.Run("key rotation never breaks a valid token", func(t *testing.T) {
		f.t = t
		defer func() { f.t = f.root }()
		start := time.Now()
		defer lap("key rotation (6 restarts)", start)
		res := f.search(fleetLBBase)
		uid := smallStudy(res)
		tokenOld := res.endpoints[uid]
		if kid := tokenKID(tokenOf(tokenOld)); kid != oldKID {
			t.Fatalf("the token to keep is minted under %s, want the old key %s", kid, oldKID)
		}
		// Why step 1 comes first: a token under the new key does not open
		// on a replica that does not know the key yet.
		newRing, _ := studytoken.NewKeyring(newKey)
		now := time.Now()
		forged, err := newRing.Mint(studytoken.Claims{StudyUID: uid, Patient: demoPatient, Route: "demo", IssuedAt: now, Expiry: now.Add(time.Hour),
			Binding: mockGrantBinding(newRing, demoPatient)})
		if err != nil {
			t.Fatal(err)
		}
		forgedNew := fleetLBBase + "/wado/" + forged
		f.mustRefuse("a new-key token before step 1", forgedNew, uid, 0, 1)

		// A client that keeps one address, and clients that search and
		// follow fresh addresses, all through the balancer, all along.
		var pinned atomic.Value
		pinned.Store(tokenOld)
		load := startLoad(2, 100000, func() (string, error) {
			u := pinned.Load().(string) + "/studies/" + uid + "/metadata"
			resp, body, err := fetch(f.c, u, "application/dicom+json", 20*time.Second)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("pinned address: status %d from %q: %.200s", resp.StatusCode, resp.Header.Get("X-Replica"), body)
			}
			if err != nil {
				return "", err
			}
			res, err := searchStudies(f.c, fleetLBBase+"/fhir/ImagingStudy?patient="+demoPatient)
			if err != nil {
				return "", err
			}
			resp, body, err = fetch(f.c, res.endpoints[uid]+"/studies/"+uid+"/metadata", "application/dicom+json", 20*time.Second)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("fresh address from %s: status %d from %q: %.200s", res.replica, resp.StatusCode, resp.Header.Get("X-Replica"), body)
			}
			return res.replica, err
		})

		// Step 1: the new key becomes a previous key everywhere.
		for _, i := range []int{0, 1} {
			f.restartReplica(i, oldKey, newKey)
			f.mustOpen("step 1: the old token", tokenOld, uid, 0, 1)
			f.mustOpen("step 1: a new-key token on the updated replica", forgedNew, uid, i)
		}
		// Step 2: the new key becomes current everywhere, here in the
		// other order; a token minted under the new key opens on a replica
		// that still has old+new.
		for step, i := range []int{1, 0} {
			f.restartReplica(i, newKey, oldKey)
			fresh := f.search(replicaBase(i)).endpoints[uid]
			if kid := tokenKID(tokenOf(fresh)); kid != newKID {
				t.Errorf("step 2: %s mints under %s, want the new key %s", fleetReplicaNames[i], kid, newKID)
			}
			f.mustOpen("step 2: the old token", tokenOld, uid, 0, 1)
			f.mustOpen("step 2: a token minted by "+fleetReplicaNames[i]+" under the new key", fresh, uid, 0, 1)
			if step == 0 {
				other := 1 - i
				stale := f.search(replicaBase(other)).endpoints[uid]
				if kid := tokenKID(tokenOf(stale)); kid != oldKID {
					t.Errorf("step 2: %s (not yet restarted) mints under %s, want the old key", fleetReplicaNames[other], kid)
				}
				f.mustOpen("step 2: a token minted by "+fleetReplicaNames[other]+" under the old key", stale, uid, 0, 1)
			}
		}
		// Step 3, once every old-key token has expired (the test cannot
		// wait an hour: the pinned client moves to a new-key address): the
		// old key is dropped.
		tokenNew := f.search(fleetLBBase).endpoints[uid]
		pinned.Store(tokenNew)
		for _, i := range []int{0, 1} {
			f.restartReplica(i, newKey, newKey)
			f.mustOpen("step 3: the new token", tokenNew, uid, 0, 1)
			f.mustRefuse("step 3: the old token on a replica that dropped the old key", tokenOld, uid, i)
		}
		n, failures, byReplica := load.finish()
		t.Logf("%d client rounds through the balancer during 6 restarts: %v; failures: %d", n, byReplica, len(failures))
		if len(failures) > 0 {
			t.Errorf("%d of %d client rounds failed during the rotation; first: %s", len(failures), n, failures[0])
		}
		if n < 20 {
			t.Errorf("only %d client rounds ran during the rotation", n)
		}
		for i := range 2 {
			_, body, err := fetch(f.c, replicaBase(i)+"/health/ready", "application/fhir+json", 10*time.Second)
			if err != nil || !strings.Contains(string(body), "key id "+newKID) {
				t.Errorf("%s /health/ready does not report the new key id %s: %v %.300s", fleetReplicaNames[i], newKID, err, body)
			}
		}
	})
}
