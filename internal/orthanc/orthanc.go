// Package orthanc is the project's own test harness for a real PACS: it
// starts Orthanc (Debian packages orthanc and orthanc-dicomweb) as a child
// process listening on loopback, with its DICOMweb plugin, Basic auth and a
// throw-away storage directory, loads DICOM files into it and stops it
// again. Tests and benchmarks use Require or Shared; programs use Start.
//
// Orthanc 1.10.1 has no bind-address option: it listens on every IPv4
// address. RemoteAccessAllowed=false makes it answer 401 to every peer that
// is not 127.0.0.1, and the DICOM (C-STORE) port is disabled.
package orthanc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Default locations of the Debian packages.
const (
	DefaultBinary = "/usr/sbin/Orthanc"
	DefaultPlugin = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
)

// Default credentials of a test instance.
const (
	DefaultUsername = "smart"
	DefaultPassword = "smart-secret"
)

// Options configure an Orthanc instance. The zero value is a usable
// default: a free port, user smart / smart-secret, case-insensitive QIDO
// matching (the plugin default, and the more adversarial choice for a
// patient-scoped proxy).
type Options struct {
	// Port is the HTTP port on 127.0.0.1. 0 picks a free port. Start fails
	// when the port is busy.
	Port int
	// Username and Password are the one registered user (Basic auth).
	Username, Password string
	// QidoCaseSensitive sets DicomWeb.QidoCaseSensitive.
	QidoCaseSensitive bool
	// DicomWebHost, when set, is DicomWeb.Host: the host[:port] Orthanc
	// writes into RetrieveURL, BulkDataURI and Content-Location instead of
	// the request's Host header.
	DicomWebHost string
	// Dir holds the configuration, storage and log. Empty: a new temporary
	// directory that Stop removes.
	Dir string
	// Binary and Plugin override DefaultBinary and DefaultPlugin.
	Binary, Plugin string
	// StartTimeout bounds the wait for /system to answer. Default 30s.
	StartTimeout time.Duration
	// DICOM, when set, enables Orthanc's DICOM (DIMSE) server.
	DICOM *DICOMOptions
}

// DICOMOptions enable Orthanc's DICOM port, a DIMSE peer for the dimse
// image source.
type DICOMOptions struct {
	// Port on every IPv4 address (Orthanc has no bind address). 0 picks a
	// free port.
	Port int
	// AET is Orthanc's AE title. Default "ORTHANC". Orthanc checks that
	// callers name it.
	AET string
	// Modalities are the AEs Orthanc knows (DicomModalities), by name.
	Modalities map[string]Modality
}

// Modality is a remote AE registered in Orthanc, with the services it may
// ask for. C-MOVE sends to its Host and Port.
type Modality struct {
	AET        string
	Host       string
	Port       int
	AllowEcho  bool
	AllowFind  bool
	AllowGet   bool
	AllowMove  bool
	AllowStore bool
}

// Server is a running Orthanc started by Start.
type Server struct {
	opts    Options
	port    int
	dir     string
	ownDir  bool
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited
	waitErr error         // valid after exited is closed
	client  *http.Client

	stopOnce sync.Once
	stopErr  error
}

// Available reports whether the Orthanc binary and its DICOMweb plugin are
// installed at their default locations.
func Available() bool {
	return fileExists(DefaultBinary) && fileExists(DefaultPlugin)
}

func fileExists(name string) bool {
	st, err := os.Stat(name)
	return err == nil && !st.IsDir()
}

// Start writes a configuration and starts Orthanc as a child process in its
// own process group, then waits (bounded by opts.StartTimeout and ctx) until
// its REST API answers with this instance's name: an older server holding
// the port cannot pass for it. The caller must call Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Username == "" {
		opts.Username = DefaultUsername
	}
	if opts.Password == "" {
		opts.Password = DefaultPassword
	}
	if opts.Binary == "" {
		opts.Binary = DefaultBinary
	}
	if opts.Plugin == "" {
		opts.Plugin = DefaultPlugin
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if !fileExists(opts.Binary) {
		return nil, fmt.Errorf("orthanc: binary %s not found (apt-get install orthanc)", opts.Binary)
	}
	if !fileExists(opts.Plugin) {
		return nil, fmt.Errorf("orthanc: DICOMweb plugin %s not found (apt-get install orthanc-dicomweb)", opts.Plugin)
	}

	if opts.DICOM != nil {
		d := *opts.DICOM
		if d.AET == "" {
			d.AET = "ORTHANC"
		}
		if d.Port == 0 {
			p, err := freePort()
			if err != nil {
				return nil, err
			}
			d.Port = p
		} else if err := checkPortFree(d.Port); err != nil {
			return nil, err
		}
		opts.DICOM = &d
	}
	port := opts.Port
	if port == 0 {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		port = p
	} else if err := checkPortFree(port); err != nil {
		return nil, err
	}

	s := &Server{opts: opts, port: port, dir: opts.Dir, exited: make(chan struct{}),
		client: &http.Client{Timeout: 60 * time.Second}}
	if s.dir == "" {
		d, err := os.MkdirTemp("", "orthanc-sia-*")
		if err != nil {
			return nil, fmt.Errorf("orthanc: temp dir: %w", err)
		}
		s.dir, s.ownDir = d, true
	}
	cleanup := func() {
		if s.ownDir {
			os.RemoveAll(s.dir)
		}
	}
	name := "SIA-TEST-PACS-" + randomHex(6)
	if err := s.writeConfig(name); err != nil {
		cleanup()
		return nil, err
	}

	cmd := exec.Command(opts.Binary, "--logfile="+s.logFile(), filepath.Join(s.dir, "conf"))
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		cleanup()
		return nil, fmt.Errorf("orthanc: start %s: %w", opts.Binary, err)
	}
	s.cmd = cmd
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()

	if err := s.waitReady(ctx, name); err != nil {
		s.Stop()
		return nil, fmt.Errorf("%w%s", err, s.logTail())
	}
	return s, nil
}

func (s *Server) writeConfig(name string) error {
	storage := filepath.Join(s.dir, "storage")
	conf := filepath.Join(s.dir, "conf")
	for _, d := range []string{storage, conf} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("orthanc: %w", err)
		}
	}
	dicomweb := map[string]any{
		"Enable":            true,
		"Root":              "/dicom-web/",
		"EnableWado":        true,
		"WadoRoot":          "/wado",
		"Ssl":               false,
		"StudiesMetadata":   "Full",
		"SeriesMetadata":    "Full",
		"QidoCaseSensitive": s.opts.QidoCaseSensitive,
	}
	if s.opts.DicomWebHost != "" {
		dicomweb["Host"] = s.opts.DicomWebHost
	}
	cfg := map[string]any{
		"Name":                   name,
		"StorageDirectory":       storage,
		"IndexDirectory":         storage,
		"TemporaryDirectory":     s.dir,
		"Plugins":                []string{s.opts.Plugin},
		"HttpServerEnabled":      true,
		"HttpPort":               s.port,
		"RemoteAccessAllowed":    false,
		"AuthenticationEnabled":  true,
		"RegisteredUsers":        map[string]string{s.opts.Username: s.opts.Password},
		"OrthancExplorerEnabled": false,
		"WebDavEnabled":          false,
		"HttpDescribeErrors":     true,
		"HttpCompressionEnabled": false,
		"KeepAlive":              true,
		"TcpNoDelay":             true,
		"HttpThreadsCount":       50,
		"DicomServerEnabled":     false,
		"DicomPort":              0,
		"StorageCompression":     false,
		"OverwriteInstances":     true,
		"SaveJobs":               false,
		"MetricsEnabled":         false,
		"DeidentifyLogs":         true,
		"DicomWeb":               dicomweb,
	}
	if d := s.opts.DICOM; d != nil {
		cfg["DicomServerEnabled"] = true
		cfg["DicomAet"] = d.AET
		cfg["DicomPort"] = d.Port
		cfg["DicomCheckCalledAet"] = true
		cfg["DicomAlwaysAllowEcho"] = false
		cfg["DicomAlwaysAllowStore"] = false
		cfg["DicomScpTimeout"] = 30
		mods := map[string]any{}
		for name, m := range d.Modalities {
			mods[name] = map[string]any{
				"AET": m.AET, "Host": m.Host, "Port": m.Port,
				"AllowEcho": m.AllowEcho, "AllowFind": m.AllowFind, "AllowGet": m.AllowGet,
				"AllowMove": m.AllowMove, "AllowStore": m.AllowStore,
			}
		}
		cfg["DicomModalities"] = mods
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("orthanc: config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(conf, "orthanc.json"), b, 0o600); err != nil {
		return fmt.Errorf("orthanc: write config: %w", err)
	}
	return nil
}

// waitReady polls /system until it answers with this instance's name.
func (s *Server) waitReady(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.StartTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("orthanc: exited during start (%v); is port %d taken?", s.waitErr, s.port)
		default:
		}
		got, err := s.systemName(ctx)
		if err == nil {
			if got != name {
				return fmt.Errorf("orthanc: port %d is answered by another Orthanc (%q)", s.port, got)
			}
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("orthanc: not ready after %v: %w", s.opts.StartTimeout, last)
		case <-s.exited:
		case <-tick.C:
		}
	}
}

func (s *Server) systemName(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/system", nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(s.opts.Username, s.opts.Password)
	resp, err := s.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /system: HTTP %d", resp.StatusCode)
	}
	var sys struct{ Name string }
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&sys); err != nil {
		return "", fmt.Errorf("GET /system: %w", err)
	}
	return sys.Name, nil
}

// URL is the root of Orthanc's REST API, http://127.0.0.1:PORT.
func (s *Server) URL() string { return "http://127.0.0.1:" + strconv.Itoa(s.port) }

// DICOMwebURL is the DICOMweb root, http://127.0.0.1:PORT/dicom-web.
func (s *Server) DICOMwebURL() string { return s.URL() + "/dicom-web" }

// DICOMAddr is the DICOM port's address, 127.0.0.1:PORT ("" when the
// DICOM server is off).
func (s *Server) DICOMAddr() string {
	if s.opts.DICOM == nil {
		return ""
	}
	return "127.0.0.1:" + strconv.Itoa(s.opts.DICOM.Port)
}

// DICOMAET is Orthanc's AE title ("" when the DICOM server is off).
func (s *Server) DICOMAET() string {
	if s.opts.DICOM == nil {
		return ""
	}
	return s.opts.DICOM.AET
}

// Port is the HTTP port.
func (s *Server) Port() int { return s.port }

// Username is the registered user.
func (s *Server) Username() string { return s.opts.Username }

// Password is the registered user's password.
func (s *Server) Password() string { return s.opts.Password }

// Dir is the directory holding configuration, storage and log.
func (s *Server) Dir() string { return s.dir }

// PID is the Orthanc process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

func (s *Server) logFile() string { return filepath.Join(s.dir, "orthanc.log") }

// logTail returns the end of Orthanc's log, for error messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logFile())
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\northanc log (tail):\n" + string(b)
}

// Do sends req to Orthanc with the registered user's credentials. The
// request URL may be relative to URL() ("/dicom-web/studies").
func (s *Server) Do(req *http.Request) (*http.Response, error) {
	if req.URL.Host == "" {
		req = req.Clone(req.Context())
		req.URL.Scheme, req.URL.Host = "http", "127.0.0.1:"+strconv.Itoa(s.port)
	}
	req.SetBasicAuth(s.opts.Username, s.opts.Password)
	return s.client.Do(req)
}

// Upload POSTs every *.dcm file under dir (recursively) to /instances and
// returns how many were stored.
func (s *Server) Upload(ctx context.Context, dir string) (int, error) {
	files, err := DICOMFiles(dir)
	if err != nil {
		return 0, err
	}
	for i, f := range files {
		if err := s.uploadFile(ctx, f); err != nil {
			return i, err
		}
	}
	return len(files), nil
}

// DICOMFiles lists every *.dcm file under dir, recursively; none is an
// error.
func DICOMFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.EqualFold(filepath.Ext(p), ".dcm") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("orthanc: upload: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("orthanc: upload: no .dcm files under %s", dir)
	}
	return files, nil
}

func (s *Server) uploadFile(ctx context.Context, name string) error {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Errorf("orthanc: upload: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+"/instances", bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("orthanc: upload %s: %w", name, err)
	}
	req.Header.Set("Content-Type", "application/dicom")
	resp, err := s.Do(req)
	if err != nil {
		return fmt.Errorf("orthanc: upload %s: %w", name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("orthanc: upload %s: HTTP %d: %s", name, resp.StatusCode, bytes.TrimSpace(body))
	}
	return nil
}

// Stop ends Orthanc: SIGTERM to its process, SIGKILL after 10 s if it is
// still running, then removes the directory Start created. Only the
// process Start launched is signalled. Stop is safe to call more than once.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			select {
			case <-s.exited:
			default:
				resume(s.cmd.Process) // a suspended process cannot handle SIGTERM
				if err := terminate(s.cmd.Process); err != nil && !errors.Is(err, os.ErrProcessDone) {
					s.stopErr = fmt.Errorf("orthanc: SIGTERM: %w", err)
				}
				select {
				case <-s.exited:
				case <-time.After(10 * time.Second):
					if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
						s.stopErr = fmt.Errorf("orthanc: SIGKILL: %w", err)
					}
					<-s.exited
				}
			}
		}
		if s.ownDir {
			if err := os.RemoveAll(s.dir); err != nil && s.stopErr == nil {
				s.stopErr = fmt.Errorf("orthanc: remove %s: %w", s.dir, err)
			}
		}
	})
	return s.stopErr
}

// Kill ends Orthanc at once with SIGKILL, as a crash would, and waits until
// it is gone. Use it to test a PACS that dies; Stop still cleans up.
func (s *Server) Kill() error {
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("orthanc: SIGKILL: %w", err)
	}
	<-s.exited
	return nil
}

// Suspend stops the process with SIGSTOP: connections are still accepted
// by the kernel but never answered, as with a hung PACS. Resume undoes it.
func (s *Server) Suspend() error { return suspend(s.cmd.Process) }

// Resume continues a process stopped by Suspend.
func (s *Server) Resume() error { return resume(s.cmd.Process) }

// Exited reports whether the process has ended.
func (s *Server) Exited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// freePort asks the kernel for a free port on every interface (Orthanc
// binds 0.0.0.0) and releases it.
func freePort() (int, error) {
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		return 0, fmt.Errorf("orthanc: pick a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("orthanc: pick a free port: %w", err)
	}
	return port, nil
}

// checkPortFree refuses a port another process holds.
func checkPortFree(port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("orthanc: invalid port %d", port)
	}
	l, err := net.Listen("tcp4", "0.0.0.0:"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("orthanc: port %d is busy; stop the other server first: %w", port, err)
	}
	return l.Close()
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return strconv.FormatInt(time.Now().UnixNano(), 16)
	}
	return hex.EncodeToString(b)
}
