package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// gateway is the Caddy child process.
type gateway struct {
	port, adminPort int
	dir             string
	cmd             *exec.Cmd
	exited          chan struct{}
	waitErr         error
}

// gatewayConfig is everything the Caddyfile needs.
type gatewayConfig struct {
	port, adminPort int
	ehrFHIRBase     string
	clientID        string
	pacsURL         string // Orthanc's DICOMweb root
	pacsHostPort    string // Orthanc's host:port, for the plain proxy route
	countURL        string // the counting proxy's DICOMweb root
	user, pass      string
	dimseAddr       string // Orthanc's DICOM port
	dimseAET        string
	dimseCache      string // parent of the two DIMSE routes' cache dirs
}

// The DIMSE routes' caches: /dimse large enough for every study, /dimse-small
// half the size of the 16 studies the concurrency run pulls (about 17 MB).
const (
	dimseCacheSize      = 1 << 30
	dimseSmallCacheSize = 8 << 20
	dimseAE             = "SMART-IMAGING"
)

// Environment variables of the child (secrets stay out of the Caddyfile).
const (
	envClientSecret = "SIA_BENCH_CLIENT_SECRET"
	envPACSPassword = "SIA_BENCH_PACS_PASSWORD"
	envStudyKey     = "SIA_BENCH_STUDY_TOKEN_KEY"
	envPACSBasic    = "SIA_BENCH_PACS_BASIC_AUTH" // "Basic …" for the plain route
)

// caddyfile is the gateway's configuration: three routes on one site, all
// authorizing with the test EHR (introspection, client_secret_basic):
// /bench fronts Orthanc directly (the measured route), /count fronts it
// through the counting proxy (study tokens bound to the grant, so the
// fresh-token burst can use an address another token of the same grant
// searched for), /ttl is /bench with a 1 s decision cache,
// /nocache is /bench with cache_ttl 0 (every request introspected).
// /plain is a bare reverse_proxy to Orthanc (no module, no authorization):
// the cost of Caddy's proxying alone.
func (c gatewayConfig) caddyfile() string {
	route := func(prefix, pacs, extra string, more ...string) string {
		return fmt.Sprintf(`	handle_path /%[1]s/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[2]s
				client_id %[3]s
				client_secret {env.%[4]s}
				mrn_system %[5]s%[6]s
			}
			images dicomweb %[7]s {
				basic_auth %[8]s {env.%[9]s}
			}
			study_token_key {env.%[10]s}
			base_url http://127.0.0.1:%[11]d/%[1]s%[12]s
			dicomweb_root
		}
	}
`, prefix, c.ehrFHIRBase, c.clientID, envClientSecret, mrnSystem, extra,
			pacs, c.user, envPACSPassword, envStudyKey, c.port, strings.Join(more, ""))
	}
	plain := fmt.Sprintf(`	handle_path /plain/* {
		reverse_proxy %s {
			header_up Authorization {env.%s}
			transport http {
				keepalive 800ms
			}
		}
	}
`, c.pacsHostPort, envPACSBasic)
	dimse := func(prefix string, size int64) string {
		if c.dimseAddr == "" {
			return ""
		}
		return fmt.Sprintf(`	handle_path /%[1]s/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[2]s
				client_id %[3]s
				client_secret {env.%[4]s}
				mrn_system %[5]s
			}
			images dimse %[6]s {
				called_ae %[7]s
				calling_ae %[8]s
				cache_dir %[9]s
				cache_size %[10]d
			}
			study_token_key {env.%[11]s}
			base_url http://127.0.0.1:%[12]d/%[1]s
		}
	}
`, prefix, c.ehrFHIRBase, c.clientID, envClientSecret, mrnSystem, c.dimseAddr, c.dimseAET, dimseAE,
			filepath.Join(c.dimseCache, prefix), size, envStudyKey, c.port)
	}
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	http_port %d
	grace_period 2s
}

http://127.0.0.1:%d {
%s%s%s%s%s%s%s%s%s}
`, c.adminPort, c.port, c.port,
		route("bench", c.pacsURL, ""),
		route("count", c.countURL, "", "\n\t\t\tstudy_token_binding grant"),
		route("ttl", c.pacsURL, "\n\t\t\t\tcache_ttl 1s"),
		// /cached is /bench with the metadata cache; /reval has a ttl so
		// short that every request revalidates (one QIDO study query).
		route("cached", c.pacsURL, "", "\n\t\t\tmetadata_cache {\n\t\t\t\tttl 1h\n\t\t\t}"),
		route("reval", c.pacsURL, "", "\n\t\t\tmetadata_cache {\n\t\t\t\tttl 1ns\n\t\t\t}"),
		route("nocache", c.pacsURL, "\n\t\t\t\tcache_ttl 0"),
		plain, dimse("dimse", dimseCacheSize), dimse("dimse-small", dimseSmallCacheSize))
}

// startGateway writes the Caddyfile and starts this binary as the gateway,
// logging to dir/gateway.log, and waits until it answers.
func startGateway(ctx context.Context, dir string, c gatewayConfig, clientSecret string) (*gateway, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if c.port, err = freePort(); err != nil {
		return nil, err
	}
	if c.adminPort, err = freePort(); err != nil {
		return nil, err
	}
	cf := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cf, []byte(c.caddyfile()), 0o600); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	logf, err := os.Create(filepath.Join(dir, "gateway.log"))
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	defer logf.Close()
	home := filepath.Join(dir, "home")
	cmd := exec.Command(self)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		childEnv+"="+cf,
		envClientSecret+"="+clientSecret,
		envPACSPassword+"="+c.pass,
		envStudyKey+"="+base64.StdEncoding.EncodeToString(key),
		envPACSBasic+"=Basic "+base64.StdEncoding.EncodeToString([]byte(c.user+":"+c.pass)),
		// Caddy's data and config directories: inside the run's temp dir.
		"HOME="+home, "XDG_DATA_HOME="+filepath.Join(home, "data"), "XDG_CONFIG_HOME="+filepath.Join(home, "config"),
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = childSysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("gateway: start: %w", err)
	}
	g := &gateway{port: c.port, adminPort: c.adminPort, dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() {
		g.waitErr = cmd.Wait()
		close(g.exited)
	}()
	if err := g.waitReady(ctx); err != nil {
		g.stop()
		return nil, fmt.Errorf("%w%s", err, g.logTail())
	}
	return g, nil
}

func (g *gateway) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.url("/bench/health/live"), nil)
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-g.exited:
			return fmt.Errorf("gateway exited during start: %v", g.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("gateway not ready: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// url is an absolute URL on the gateway's site.
func (g *gateway) url(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(g.port) + path
}

// adminURL is an absolute URL on the gateway's admin endpoint.
func (g *gateway) adminURL(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(g.adminPort) + path
}

func (g *gateway) pid() int { return g.cmd.Process.Pid }

func (g *gateway) logTail() string {
	b, err := os.ReadFile(filepath.Join(g.dir, "gateway.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return "\ngateway log (tail):\n" + string(b)
}

// stop sends SIGTERM (Caddy shuts down gracefully) and SIGKILL after 10 s.
func (g *gateway) stop() error {
	select {
	case <-g.exited:
		return nil
	default:
	}
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("gateway: SIGTERM: %w", err)
	}
	select {
	case <-g.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	if err := g.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("gateway: SIGKILL: %w", err)
	}
	<-g.exited
	return nil
}

func (g *gateway) alive() bool {
	select {
	case <-g.exited:
		return false
	default:
		return true
	}
}

// fetchProfile saves the gateway's profile kind ("profile?seconds=2",
// "heap") from its admin endpoint to file.
func (g *gateway) fetchProfile(ctx context.Context, kind, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.adminURL("/debug/pprof/"+kind), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("pprof %s: %w", kind, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof %s: HTTP %d", kind, resp.StatusCode)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("pprof %s: %w", kind, err)
	}
	return f.Close()
}

// freePort asks the kernel for a free loopback port and releases it.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port, nil
}
