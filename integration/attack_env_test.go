package integration

// Shared by the attack, fault and load tests: the bundled demo studies
// loaded into a real Orthanc, a client that never follows redirects, a
// leak detector for responses and log files, and goroutine and
// file-descriptor counters.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

// demoStudiesDir holds the bundled demo studies and their MANIFEST.tsv.
const demoStudiesDir = "../examples/demo/studies"

// demoRow is one instance of the bundled demo set (a MANIFEST.tsv line).
type demoRow struct {
	patientID, patientName, study, series, sop, file string
	frames                                           int
}

// demoPatientData is what the demo set holds for one PACS PatientID.
type demoPatientData struct {
	mrn, name string
	rows      []demoRow
	studies   []string // distinct, in manifest order
	series    []string
	sops      []string
}

// studySet is the patient's study UIDs as a set.
func (p *demoPatientData) studySet() map[string]bool {
	m := map[string]bool{}
	for _, s := range p.studies {
		m[s] = true
	}
	return m
}

// rowsOf returns the patient's instances of one study.
func (p *demoPatientData) rowsOf(study string) []demoRow {
	var out []demoRow
	for _, r := range p.rows {
		if r.study == study {
			out = append(out, r)
		}
	}
	return out
}

// readDemoManifest reads examples/demo/studies/MANIFEST.tsv.
func readDemoManifest(t testing.TB) []demoRow {
	t.Helper()
	f, err := os.Open(filepath.Join(demoStudiesDir, "MANIFEST.tsv"))
	if err != nil {
		t.Fatalf("reading the demo manifest: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var rows []demoRow
	header := true
	for sc.Scan() {
		if header {
			header = false
			continue
		}
		c := strings.Split(sc.Text(), "\t")
		if len(c) != 9 {
			t.Fatalf("MANIFEST.tsv line %q: %d columns, want 9", sc.Text(), len(c))
		}
		frames, _ := strconv.Atoi(c[7])
		rows = append(rows, demoRow{patientID: c[0], patientName: c[1], study: c[2], series: c[3],
			sop: c[6], frames: frames, file: c[8]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(rows) < 10 {
		t.Fatalf("the demo manifest lists %d instances, want more", len(rows))
	}
	return rows
}

// demoPatients groups the demo rows by PatientID.
func demoPatients(rows []demoRow) map[string]*demoPatientData {
	out := map[string]*demoPatientData{}
	for _, r := range rows {
		p := out[r.patientID]
		if p == nil {
			p = &demoPatientData{mrn: r.patientID, name: r.patientName}
			out[r.patientID] = p
		}
		p.rows = append(p.rows, r)
		if !slices.Contains(p.studies, r.study) {
			p.studies = append(p.studies, r.study)
		}
		if !slices.Contains(p.series, r.series) {
			p.series = append(p.series, r.series)
		}
		p.sops = append(p.sops, r.sop)
	}
	return out
}

// startDemoPACS starts an Orthanc of the test's own (stopped when the test
// ends) and loads the bundled demo studies into it. It skips the test in
// -short mode or when Orthanc is not installed.
func startDemoPACS(t *testing.T) (*orthanc.Server, []demoRow) {
	t.Helper()
	orthanc.SkipUnlessAvailable(t)
	rows := readDemoManifest(t)
	pacs, err := orthanc.Start(context.Background(), orthanc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pacs.Stop(); err != nil {
			t.Errorf("stopping Orthanc: %v", err)
		}
	})
	n, err := pacs.Upload(context.Background(), demoStudiesDir)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(rows) {
		t.Fatalf("uploaded %d files, the manifest lists %d", n, len(rows))
	}
	return pacs, rows
}

// pacsInstanceCount asks Orthanc itself how many instances it stores.
func pacsInstanceCount(t *testing.T, pacs *orthanc.Server) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "/instances", nil)
	resp, err := pacs.Do(req)
	if err != nil {
		t.Fatalf("GET Orthanc /instances: %v", err)
	}
	defer resp.Body.Close()
	var ids []string
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET Orthanc /instances: HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&ids); err != nil {
		t.Fatalf("GET Orthanc /instances: %v", err)
	}
	return len(ids)
}

// newRawClient is a client for attacks: loopback only, no cookie jar, no
// redirect following (a redirect is an answer to look at, not to obey),
// and the request path sent exactly as written.
func newRawClient(maxConns int) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return d.DialContext(ctx, "tcp4", "127.0.0.1:"+port)
		},
		MaxIdleConns:        maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     30 * time.Second,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
		DisableCompression:  true,
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// needle is a string that must not show up somewhere.
type needle struct {
	label, value string
}

// foreignNeedles are the identifiers of every patient but keep: PatientID,
// PatientName (as written in DICOM and as JSON escapes it), and the study,
// series and SOP instance UIDs.
func foreignNeedles(rows []demoRow, keep string) []needle {
	seen := map[string]bool{}
	var out []needle
	add := func(label, v string) {
		if v == "" || seen[v] {
			return
		}
		seen[v] = true
		out = append(out, needle{label, v})
	}
	for _, r := range rows {
		if r.patientID == keep {
			continue
		}
		add("PatientID of "+r.patientID, r.patientID)
		add("PatientName of "+r.patientID, r.patientName)
		if esc := strconv.QuoteToASCII(r.patientName); esc != `"`+r.patientName+`"` {
			add("PatientName (escaped) of "+r.patientID, strings.Trim(esc, `"`))
		}
		add("study UID of "+r.patientID, r.study)
		add("series UID of "+r.patientID, r.series)
		add("SOP instance UID of "+r.patientID, r.sop)
	}
	return out
}

// scanFor returns the labels of the needles found in data that the
// request itself did not carry (an echo of the attacker's own input is no
// leak).
func scanFor(needles []needle, request string, data ...[]byte) []string {
	var found []string
	for _, n := range needles {
		if strings.Contains(request, n.value) {
			continue
		}
		for _, d := range data {
			if bytes.Contains(d, []byte(n.value)) {
				found = append(found, n.label)
				break
			}
		}
	}
	return found
}

// headerBytes flattens a header for scanning.
func headerBytes(h http.Header) []byte {
	var b bytes.Buffer
	_ = h.Write(&b)
	return b.Bytes()
}

// readLogLines returns the lines of a log file (none when it does not
// exist yet).
func readLogLines(t *testing.T, name string) []string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// globalLogOption is the Caddyfile global option that writes every log
// (Caddy's own and the module's audit lines) to file as JSON.
func globalLogOption(file string) string {
	return fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel INFO\n\t}\n", file)
}

// resourceCounts are the in-process resources a leak would grow: Caddy
// runs inside the test binary (caddytest), so its goroutines and open
// file descriptors are the test's.
type resourceCounts struct {
	goroutines, fds int
}

func (c resourceCounts) String() string {
	return fmt.Sprintf("%d goroutines, %d open file descriptors", c.goroutines, c.fds)
}

func countResources() resourceCounts {
	fds := -1
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(ents)
	}
	return resourceCounts{goroutines: runtime.NumGoroutine(), fds: fds}
}

// waitResourcesSettle polls until the goroutine and descriptor counts are
// back within margin of before, at most for within; it returns the last
// counts and whether they settled. Idle keep-alive connections close on
// their own (the PACS transport after 800ms), so the counts need a moment.
func waitResourcesSettle(before resourceCounts, goroutineMargin, fdMargin int, within time.Duration, closeIdle ...func()) (resourceCounts, bool) {
	deadline := time.Now().Add(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, f := range closeIdle {
			f()
		}
		now := countResources()
		if now.goroutines <= before.goroutines+goroutineMargin && (before.fds < 0 || now.fds <= before.fds+fdMargin) {
			return now, true
		}
		if time.Now().After(deadline) {
			return now, false
		}
		<-tick.C
	}
}

// goroutineDump is the stacks of every goroutine, for a failure message.
func goroutineDump() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// attackLedger counts attempts and leaks across an adversarial run, and
// the attempts answered otherwise than required (a viewport rendered, a
// token for another server accepted: not a leak of another patient's
// data, but an attack that worked).
type attackLedger struct {
	mu         sync.Mutex
	attempts   int
	leaks      []string
	unexpected int
	statuses   map[int]int
}

func (l *attackLedger) status(code int) {
	l.mu.Lock()
	if l.statuses == nil {
		l.statuses = map[int]int{}
	}
	l.statuses[code]++
	l.mu.Unlock()
}

// statusSummary is "400×n, 403×m, …".
func (l *attackLedger) statusSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	codes := make([]int, 0, len(l.statuses))
	for c := range l.statuses {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	var parts []string
	for _, c := range codes {
		parts = append(parts, fmt.Sprintf("%d×%d", c, l.statuses[c]))
	}
	return strings.Join(parts, ", ")
}

func (l *attackLedger) attempt() {
	l.mu.Lock()
	l.attempts++
	l.mu.Unlock()
}

func (l *attackLedger) leak(format string, args ...any) {
	l.mu.Lock()
	l.leaks = append(l.leaks, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// miss records an attempt answered with a status it must not get.
func (l *attackLedger) miss() {
	l.mu.Lock()
	l.unexpected++
	l.mu.Unlock()
}

func (l *attackLedger) counts() (attempts, leaks, unexpected int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.attempts, len(l.leaks), l.unexpected
}

// hitLog records the requests a server received.
type hitLog struct {
	mu   sync.Mutex
	reqs []string
}

func (h *hitLog) add(r *http.Request) {
	h.mu.Lock()
	h.reqs = append(h.reqs, r.Method+" "+r.URL.Path)
	h.mu.Unlock()
}

func (h *hitLog) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.reqs)
}

// since returns the requests after the first n.
func (h *hitLog) since(n int) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.reqs[n:]...)
}
