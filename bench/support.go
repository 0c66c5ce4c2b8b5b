package main

import (
	"bufio"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// harnessTB lets test helpers that take a testing.TB (testehr.New,
// testehr.GenerateKey) run in this program. Only the methods those helpers
// call are implemented; the embedded nil TB makes any other call panic
// loudly instead of misbehaving quietly.
type harnessTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
}

func (t *harnessTB) Helper() {}

func (t *harnessTB) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

func (t *harnessTB) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (t *harnessTB) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (t *harnessTB) Errorf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (t *harnessTB) Logf(format string, args ...any)   { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (t *harnessTB) Name() string                      { return "bench" }

// runCleanups runs the registered cleanups, last first.
func (t *harnessTB) runCleanups() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// countingProxy sits between one gateway route and Orthanc and counts the
// QIDO-RS calls it forwards, and the most that were in flight at once.
type countingProxy struct {
	srv         *http.Server
	ln          net.Listener
	studies     atomic.Int64 // GET …/studies?…
	series      atomic.Int64 // GET …/studies/{uid}/series
	other       atomic.Int64
	inflight    atomic.Int64
	maxInflight atomic.Int64
}

func startCountingProxy(target string) (*countingProxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("counting proxy: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("counting proxy: %w", err)
	}
	p := &countingProxy{ln: ln}
	rp := httputil.NewSingleHostReverseProxy(u)
	// Cancelled searches at the end of a case are expected; stay quiet.
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch path := strings.TrimSuffix(r.URL.Path, "/"); {
		case strings.HasSuffix(path, "/dicom-web/studies"):
			p.studies.Add(1)
		case strings.HasSuffix(path, "/series") && strings.Count(path, "/") == 4:
			p.series.Add(1)
		default:
			p.other.Add(1)
		}
		n := p.inflight.Add(1)
		for {
			m := p.maxInflight.Load()
			if n <= m || p.maxInflight.CompareAndSwap(m, n) {
				break
			}
		}
		defer p.inflight.Add(-1)
		rp.ServeHTTP(w, r)
	})}
	go p.srv.Serve(ln)
	return p, nil
}

// URL is the proxy's root; Orthanc's paths follow it unchanged.
func (p *countingProxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *countingProxy) reset() {
	p.studies.Store(0)
	p.series.Store(0)
	p.other.Store(0)
	p.maxInflight.Store(0)
}

func (p *countingProxy) close() { p.srv.Close() }

// clockTicks is the kernel's USER_HZ: /proc/<pid>/stat counts CPU time in
// these units. 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuSeconds is the user+system CPU time of a process so far (Linux; 0
// elsewhere or when the process is gone).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	// The command name may hold spaces; fields follow the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks
}

// procStatusKB reads a "Name:   123 kB" line of /proc/<pid>/status; 0
// when unavailable.
func procStatusKB(pid int, field string) int64 {
	return procStatusKBFile("/proc/"+strconv.Itoa(pid)+"/status", field)
}

// machine describes where the numbers come from.
type machine struct {
	CPUs           int     `json:"cpus"`
	CPUModel       string  `json:"cpu_model"`
	MemTotalGiB    float64 `json:"mem_total_gib"`
	Kernel         string  `json:"kernel"`
	GoVersion      string  `json:"go_version"`
	Orthanc        string  `json:"orthanc_version"`
	DICOMwebPlugin string  `json:"orthanc_dicomweb_plugin_version"`
	LoadAvgStart   string  `json:"loadavg_start"`
	LoadAvgEnd     string  `json:"loadavg_end"`
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func readTrim(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func loadAvg() string {
	f := strings.Fields(readTrim("/proc/loadavg"))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func memTotalGiB() float64 {
	kb := procStatusKBFile("/proc/meminfo", "MemTotal")
	return float64(kb) / (1 << 20)
}

func procStatusKBFile(name, field string) int64 {
	f, err := os.Open(name)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == field {
			fs := strings.Fields(v)
			if len(fs) > 0 {
				n, _ := strconv.ParseInt(fs[0], 10, 64)
				return n
			}
		}
	}
	return 0
}
