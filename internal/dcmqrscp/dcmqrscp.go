//go:build linux

// Package dcmqrscp is a test harness for a second, independent DIMSE peer:
// dcmtk's dcmqrscp (Debian package dcmtk), a query/retrieve archive. Start
// writes a dcmqrscp.cfg that knows one gateway AE (allowed to query and to
// be the destination of C-MOVE) and one loader AE, starts dcmqrscp on a
// free loopback port in its own process group, and loads DICOM files with
// storescu; Stop ends that process group by its PID.
package dcmqrscp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Default binaries (Debian dcmtk).
const (
	DefaultBinary   = "/usr/bin/dcmqrscp"
	DefaultStorescu = "/usr/bin/storescu"
	// AET is the archive's AE title.
	AET = "DCMQRSCP"
	// LoaderAET is the AE title storescu uses to load files.
	LoaderAET = "SIA-LOADER"
)

// Options configure an archive.
type Options struct {
	// GatewayAET is the AE title allowed to query and retrieve.
	GatewayAET string
	// GatewayPort is where the archive sends C-MOVE results (the
	// gateway's C-STORE receiver on 127.0.0.1); 0 when unused.
	GatewayPort int
}

// Server is a running dcmqrscp.
type Server struct {
	dir    string
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
	once   sync.Once
}

// Available reports whether dcmqrscp and storescu are installed.
func Available() bool {
	for _, b := range []string{DefaultBinary, DefaultStorescu} {
		if st, err := os.Stat(b); err != nil || st.IsDir() {
			return false
		}
	}
	return true
}

// Require starts an archive for a test, or skips the test in -short mode
// or when dcmtk is missing; with SIA_REQUIRE_DIMSE=1 (CI) a missing dcmtk
// fails the test instead. The archive stops when the test ends.
func Require(tb testing.TB, opts Options) *Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip("skipping the dcmqrscp test in -short mode (it starts dcmqrscp)")
	}
	if !Available() {
		msg := "dcmtk is not installed (" + DefaultBinary + "); apt-get install dcmtk to run this test"
		if os.Getenv("SIA_REQUIRE_DIMSE") == "1" {
			tb.Fatal("SIA_REQUIRE_DIMSE=1 but " + msg)
		}
		tb.Skip(msg)
	}
	s, err := Start(context.Background(), opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Stop() })
	return s
}

// Start writes the configuration and starts dcmqrscp; the caller must call
// Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.GatewayAET == "" {
		opts.GatewayAET = "SMART-IMAGING"
	}
	dir, err := os.MkdirTemp("", "dcmqrscp-sia-*")
	if err != nil {
		return nil, fmt.Errorf("dcmqrscp: %w", err)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	storage := filepath.Join(dir, "storage")
	if err := os.MkdirAll(storage, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("dcmqrscp: %w", err)
	}
	gwPort := opts.GatewayPort
	if gwPort == 0 {
		gwPort = 1 // never used: C-MOVE is not asked for
	}
	cfg := fmt.Sprintf(`NetworkTCPPort  = %d
MaxPDUSize      = 65536
MaxAssociations = 32

HostTable BEGIN
gateway = (%s, 127.0.0.1, %d)
loader  = (%s, 127.0.0.1, 1)
allowed = gateway, loader
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
%s %s RW (1000, 1024mb) allowed
AETable END
`, port, opts.GatewayAET, gwPort, LoaderAET, AET, storage)
	conf := filepath.Join(dir, "dcmqrscp.cfg")
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("dcmqrscp: %w", err)
	}
	log, err := os.Create(filepath.Join(dir, "dcmqrscp.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("dcmqrscp: %w", err)
	}
	defer log.Close()
	cmd := exec.Command(DefaultBinary, "-c", conf, "--disable-host-lookup")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("dcmqrscp: start: %w", err)
	}
	s := &Server{dir: dir, port: port, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(s.exited) }()
	if err := s.waitListening(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) waitListening(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("dcmqrscp: exited during start%s", s.logTail())
		case <-ctx.Done():
			return fmt.Errorf("dcmqrscp: not listening on %s: %w%s", s.Addr(), err, s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "dcmqrscp.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	if len(b) == 0 {
		return ""
	}
	return "\ndcmqrscp log (tail):\n" + string(b)
}

// Addr is 127.0.0.1:PORT.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Load stores every *.dcm file under dir with storescu.
func (s *Server) Load(ctx context.Context, dir string) error {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.EqualFold(filepath.Ext(p), ".dcm") {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("dcmqrscp: load: %w", err)
	}
	if len(files) == 0 {
		return errors.New("dcmqrscp: load: no .dcm files under " + dir)
	}
	args := append([]string{"-aet", LoaderAET, "-aec", AET, "127.0.0.1", strconv.Itoa(s.port)}, files...)
	out, err := exec.CommandContext(ctx, DefaultStorescu, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dcmqrscp: storescu: %w: %s", err, out)
	}
	return nil
}

// Stop ends dcmqrscp (SIGTERM to its process group, SIGKILL after 5 s) and
// removes its directory.
func (s *Server) Stop() {
	s.once.Do(func() {
		pgid := s.cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-s.exited
		}
		// Children forked per association are in the same group.
		syscall.Kill(-pgid, syscall.SIGKILL)
		os.RemoveAll(s.dir)
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("dcmqrscp: pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
