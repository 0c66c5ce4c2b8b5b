package integration

// Helpers of the fleet test: Caddy processes started from a freshly built
// binary, HTTP calls that report errors instead of failing (they also run
// in load goroutines), WADO streams read part by part, and the admin
// endpoint's goroutine and metric counts.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/internal/fhirclient"
)

// caddyProc is one Caddy process a test started (caddy run, in the
// foreground, so its PID is Caddy's).
type caddyProc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // set before done closes
	logPath string
}

// buildCaddy builds the custom Caddy (standard modules plus smart_imaging)
// into a temporary directory, once per test.
func buildCaddy(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build Caddy: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "caddy")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	return bin
}

// checkPortsFree fails the test when something already listens on one of
// the ports, rather than testing a stranger.
func checkPortsFree(t *testing.T, ports ...int) {
	t.Helper()
	for _, p := range ports {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), 200*time.Millisecond)
		if err == nil {
			c.Close()
			t.Fatalf("port %d on 127.0.0.1 is already in use; the fleet test needs it free", p)
		}
	}
}

// processEnv is the test process's environment without the variables the
// fleet Caddyfiles read, plus a private HOME and XDG directories (Caddy
// writes its autosave there) and extra.
func processEnv(home string, extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if _, over := extra[name]; over {
			continue
		}
		switch name {
		case "HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "SMART_IMAGING_KEY", "SMART_IMAGING_PREVIOUS_KEY":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
		"XDG_DATA_HOME="+filepath.Join(home, "data"))
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

// startCaddy runs `caddy run --config config` from the repository root and
// waits until readyURL answers 200. The process is stopped in
// owner.Cleanup by its PID (SIGTERM, then SIGKILL if it does not exit in
// time); owner may be a parent of t, so a process outlives the subtest that
// started it.
func startCaddy(t, owner *testing.T, bin, name, config, logDir string, env []string, readyURL string) *caddyProc {
	t.Helper()
	logPath := filepath.Join(logDir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Dir = ".."
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &caddyProc{name: name, cmd: cmd, done: make(chan struct{}), logPath: logPath}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	owner.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(15 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		if owner.Failed() {
			owner.Logf("log of %s (pid %d):\n%s", p.name, p.cmd.Process.Pid, p.logTail(40))
		}
	})
	if err := waitHTTP200(readyURL, 30*time.Second, p.done); err != nil {
		t.Fatalf("%s (pid %d) did not become ready: %v\n%s", name, cmd.Process.Pid, err, p.logTail(40))
	}
	return p
}

func (p *caddyProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process and waits, bounded, for it to exit.
func (p *caddyProc) signal(t *testing.T, sig syscall.Signal, within time.Duration) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s (pid %d): %v", sig, p.name, p.cmd.Process.Pid, err)
	}
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("%s (pid %d) still runs %v after %v", p.name, p.cmd.Process.Pid, within, sig)
	}
}

func (p *caddyProc) logTail(lines int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// waitHTTP200 polls url until it answers 200, the deadline passes or
// stopped closes (the process died).
func waitHTTP200(url string, within time.Duration, stopped <-chan struct{}) error {
	deadline := time.Now().Add(within)
	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 2 * time.Second}
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-stopped:
			return errors.New("the process exited")
		default:
		}
		resp, err := c.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
		select {
		case <-stopped:
			return errors.New("the process exited")
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("no 200 from %s within %v: %v", url, within, last)
}

// newFleetClient is an HTTP client that talks to loopback directly (no
// proxy from the environment) and keeps connections alive.
func newFleetClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 16,
		DisableCompression:  true,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}}
}

// fetch GETs url with an Accept header within timeout and returns the
// response (body read and closed) or an error.
func fetch(c *http.Client, url, accept string, timeout time.Duration) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, body, fmt.Errorf("GET %s: reading body: %w", url, err)
	}
	return resp, body, nil
}

// fleetSearch is one ImagingStudy search: study UID → Endpoint address, and
// the replica that answered (X-Replica).
type fleetSearch struct {
	endpoints map[string]string
	replica   string
}

func searchStudies(c *http.Client, url string) (fleetSearch, error) {
	resp, body, err := fetch(c, url, "application/fhir+json", 20*time.Second)
	if err != nil {
		return fleetSearch{}, fmt.Errorf("search: %w", err)
	}
	res := fleetSearch{replica: resp.Header.Get("X-Replica")}
	if resp.StatusCode != http.StatusOK {
		return res, fmt.Errorf("search %s: status %d from %q: %.300s", url, resp.StatusCode, res.replica, body)
	}
	eps, err := fhirclient.StudyEndpoints(body)
	if err != nil {
		return res, fmt.Errorf("search %s: %w", url, err)
	}
	res.endpoints = eps
	return res, nil
}

// rebase moves an Endpoint address written for the balancer onto another
// base (a replica): same route path, same study token.
func rebase(t *testing.T, address, from, to string) string {
	t.Helper()
	if !strings.HasPrefix(address, from+"/") {
		t.Fatalf("Endpoint address %s is not under %s", redact(address), from)
	}
	return to + strings.TrimPrefix(address, from)
}

var wadoToken = regexp.MustCompile(`/wado/[A-Za-z0-9_.-]+`)

// redact hides the study tokens of WADO addresses in test messages.
func redact(s string) string { return wadoToken.ReplaceAllString(s, "/wado/{token}") }

// tokenOf is the study token inside an Endpoint address ({base}/wado/{token}).
func tokenOf(address string) string { return address[strings.LastIndex(address, "/")+1:] }

// tokenKID reads the kid of a study token's protected header: which key
// minted it.
func tokenKID(token string) string {
	hdr, _, _ := strings.Cut(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(hdr)
	if err != nil {
		return ""
	}
	var h struct {
		KID string `json:"kid"`
	}
	_ = json.Unmarshal(raw, &h)
	return h.KID
}

// studyStream is a WADO-RS study retrieve read one part at a time, so the
// test decides how far the transfer has got when it acts.
type studyStream struct {
	resp    *http.Response
	cancel  context.CancelFunc
	mr      *multipart.Reader
	body    *countingBody
	parts   int
	seen    map[string]bool // SHA-256 of the parts read
	replica string
}

type countingBody struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func openStudyStream(c *http.Client, url string) (*studyStream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Accept", `multipart/related; type="application/dicom"`)
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("GET %s: status %d: %.300s", url, resp.StatusCode, b)
	}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/related" || params["boundary"] == "" {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("GET %s: Content-Type %q", url, resp.Header.Get("Content-Type"))
	}
	body := &countingBody{r: resp.Body}
	return &studyStream{resp: resp, cancel: cancel, body: body, replica: resp.Header.Get("X-Replica"), seen: map[string]bool{},
		mr: multipart.NewReader(bufio.NewReaderSize(body, 64<<10), params["boundary"])}, nil
}

// next reads one whole part and checks it is one of the study's files,
// byte for byte (want: SHA-256 → file), not sent before. It returns io.EOF
// itself (not wrapped) only at the closing boundary: a well-formed end.
func (s *studyStream) next(want map[string]string) error {
	p, err := s.mr.NextPart()
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(h, p)
	if err != nil {
		return fmt.Errorf("part %d after %d bytes: %w", s.parts+1, n, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	file, ok := want[sum]
	if !ok {
		return fmt.Errorf("part %d (%d bytes) is none of the study's files", s.parts+1, n)
	}
	if s.seen[sum] {
		return fmt.Errorf("part %d repeats %s", s.parts+1, file)
	}
	if cl := p.Header.Get("Content-Length"); cl != "" && cl != strconv.FormatInt(n, 10) {
		return fmt.Errorf("part %d: Content-Length %s but %d bytes", s.parts+1, cl, n)
	}
	s.seen[sum] = true
	s.parts++
	return nil
}

func (s *studyStream) close() {
	s.resp.Body.Close()
	s.cancel()
}

// hashFiles maps the SHA-256 of every file under dir to its name.
func hashFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		out[hex.EncodeToString(h.Sum(nil))] = p
		return nil
	})
	if err != nil {
		t.Fatalf("hashing %s: %v", dir, err)
	}
	return out
}

// copyTree copies the regular files under src to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
}

// goroutineCount reads "goroutine profile: total N" from a Caddy admin
// endpoint's pprof handler.
func goroutineCount(c *http.Client, admin string) (int, error) {
	resp, body, err := fetch(c, admin+"/debug/pprof/goroutine?debug=1", "", 10*time.Second)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("pprof: status %d", resp.StatusCode)
	}
	first, _, _ := bytes.Cut(body, []byte("\n"))
	var n int
	if _, err := fmt.Sscanf(string(first), "goroutine profile: total %d", &n); err != nil {
		return 0, fmt.Errorf("pprof first line %q: %w", first, err)
	}
	return n, nil
}

// settledGoroutines polls the goroutine count until it is at most limit
// (or, with limit < 0, until two readings in a row agree) and returns the
// last reading; it gives up after within.
func settledGoroutines(c *http.Client, admin string, limit int, within time.Duration) (int, error) {
	deadline := time.Now().Add(within)
	prev := -1
	for {
		n, err := goroutineCount(c, admin)
		if err != nil {
			return 0, err
		}
		if (limit >= 0 && n <= limit) || (limit < 0 && n == prev) {
			return n, nil
		}
		if time.Now().After(deadline) {
			return n, fmt.Errorf("goroutines did not settle within %v: last count %d (limit %d)", within, n, limit)
		}
		prev = n
		time.Sleep(200 * time.Millisecond) // poll interval, bounded by the deadline above
	}
}

// requestsTotal sums caddy_smart_imaging_requests_total over its labels,
// from a Caddy admin endpoint's /metrics.
func requestsTotal(c *http.Client, admin string) (float64, error) {
	resp, body, err := fetch(c, admin+"/metrics", "", 10*time.Second)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("metrics: status %d", resp.StatusCode)
	}
	var sum float64
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "caddy_smart_imaging_requests_total{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, errors.New("metrics: no caddy_smart_imaging_requests_total series")
	}
	return sum, nil
}

// loadGen runs a request function in a few goroutines until stopped,
// counting requests, failures and which replica answered.
type loadGen struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	n        atomic.Int64
	mu       sync.Mutex
	failures []string
	replicas map[string]int
}

// startLoad starts workers goroutines calling fn in a loop; each stops
// after maxEach calls at most.
func startLoad(workers, maxEach int, fn func() (replica string, err error)) *loadGen {
	l := &loadGen{stop: make(chan struct{}), replicas: map[string]int{}}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; i < maxEach; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				rep, err := fn()
				l.mu.Lock()
				if err != nil {
					l.failures = append(l.failures, redact(err.Error()))
				} else {
					l.replicas[rep]++
				}
				l.mu.Unlock()
				l.n.Add(1)
			}
		}()
	}
	return l
}

// waitMore waits until the workers have made more requests than n.
func (l *loadGen) waitMore(t *testing.T, n int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for l.n.Load() <= n {
		if time.Now().After(deadline) {
			t.Fatalf("the load made %d requests, no more than %d within %v", l.n.Load(), n, within)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, bounded by the deadline above
	}
}

// finish stops the workers and returns what they saw.
func (l *loadGen) finish() (int64, []string, map[string]int) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n.Load(), l.failures, l.replicas
}
