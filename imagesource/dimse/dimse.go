// Package dimse is an imagesource.Source in front of a PACS that speaks
// only the DICOM network protocol (DIMSE). Searches are Study Root C-FIND
// queries with exact PatientID keys, post-filtered to exact equality.
// A WADO-RS request for a study starts one C-GET (or C-MOVE into the
// source's own C-STORE receiver) of the whole study, shared by concurrent
// readers; every instance is checked against the study and the patient
// asked for before it is stored in a private, bounded on-disk cache, and
// object answers stream instances as they arrive. Everything else
// (metadata, frames, rendered, thumbnail, bulk data, and later object
// requests) is served from the cached files by the folder source's code.
package dimse

import (
	"context"
	"errors"
	"fmt"
	"github.com/caddyserver/caddy/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/internal/dimsenet"
)

// Retrieve methods.
const (
	CGet  = "c-get"
	CMove = "c-move"
)

// Defaults.
const (
	DefaultCacheSize = 20 << 30
	DefaultCacheTTL  = time.Hour
	DefaultTimeout   = 30 * time.Second
)

// Config configures a DIMSE source. Its JSON is the Caddy module's (which
// embeds it): durations as caddy.Duration ("30s"), sizes in bytes.
type Config struct {
	// Addr is the PACS's host:port.
	Addr string `json:"address,omitempty"`
	// CalledAE is the PACS's AE title; CallingAE ours.
	CalledAE  string `json:"called_ae,omitempty"`
	CallingAE string `json:"calling_ae,omitempty"`
	// Retrieve is CGet (default) or CMove.
	Retrieve string `json:"retrieve,omitempty"`
	// MoveDestination is the AE title the PACS sends C-MOVE results to
	// (default: CallingAE); Listen is where our receiver listens for them.
	MoveDestination string `json:"move_destination,omitempty"`
	Listen          string `json:"listen,omitempty"`
	// ListenFunc, when set, opens the receiver's listener instead of
	// listening on Listen (Caddy hands out listeners that survive config
	// reloads). The receiver starts with the first C-MOVE.
	ListenFunc func() (net.Listener, error) `json:"-"`
	// CacheDir is where a private cache directory is made (default: the
	// system temporary directory). It may be shared by several sources and
	// processes; New removes the cache directories in it that no live
	// source holds.
	CacheDir string `json:"cache_dir,omitempty"`
	// CacheSize bounds the bytes of cached instances. Default 20 GiB.
	CacheSize int64 `json:"cache_size,omitempty"`
	// CacheTTL is how long a study stays cached after its last use.
	// Default 1h.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`
	// Timeout bounds connecting and each wait for the PACS. Default 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// Source is a DIMSE PACS. Close releases its receiver and cache.
type Source struct {
	cfg     Config
	timeout time.Duration // cfg.Timeout, defaulted
	log     *zap.Logger
	cache   *cache
	ln      *dimsenet.Listener

	mu     sync.Mutex
	moving map[string]*entry // study UID → entry of a C-MOVE in progress
	stray  int               // instances refused on the receiver: no C-MOVE of theirs
	closed bool
}

var _ imagesource.Source = (*Source)(nil)

// New checks cfg, removes the cache directories under cfg.CacheDir left
// by sources that are gone (a killed gateway's), makes and locks its own
// private cache directory and, for C-MOVE, starts the C-STORE receiver. It
// does not contact the PACS.
func New(cfg Config, logger *zap.Logger) (*Source, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil || cfg.Addr == "" {
		return nil, fmt.Errorf("dimse image source: address %q: want host:port", cfg.Addr)
	}
	for name, ae := range map[string]string{"called_ae": cfg.CalledAE, "calling_ae": cfg.CallingAE} {
		if err := checkAE(ae); err != nil {
			return nil, fmt.Errorf("dimse image source: %s: %w", name, err)
		}
	}
	switch cfg.Retrieve {
	case "":
		cfg.Retrieve = CGet
	case CGet, CMove:
	default:
		return nil, fmt.Errorf("dimse image source: retrieve %q: use %s or %s", cfg.Retrieve, CGet, CMove)
	}
	if cfg.MoveDestination == "" {
		cfg.MoveDestination = cfg.CallingAE
	}
	if err := checkAE(cfg.MoveDestination); err != nil {
		return nil, fmt.Errorf("dimse image source: move_destination: %w", err)
	}
	if cfg.Retrieve == CMove && cfg.Listen == "" && cfg.ListenFunc == nil {
		return nil, errors.New("dimse image source: retrieve c-move needs listen (the address of our C-STORE receiver, e.g. :11112, which the PACS knows for the move destination AE)")
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	ttl, timeout := time.Duration(cfg.CacheTTL), time.Duration(cfg.Timeout)
	if ttl <= 0 {
		ttl = DefaultCacheTTL
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	c, err := newCache(cfg.CacheDir, cfg.CacheSize, ttl, timeout, logger)
	if err != nil {
		return nil, err
	}
	s := &Source{cfg: cfg, timeout: timeout, log: logger, cache: c, moving: map[string]*entry{}}
	return s, nil
}

// receiver starts the C-STORE receiver of C-MOVE on first use.
func (s *Source) receiver() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return nil
	}
	if s.closed {
		return errClosed
	}
	var ln net.Listener
	var err error
	if s.cfg.ListenFunc != nil {
		ln, err = s.cfg.ListenFunc()
	} else {
		ln, err = net.Listen("tcp", s.cfg.Listen)
	}
	if err != nil {
		return fmt.Errorf("start the C-STORE receiver for C-MOVE: %w", err)
	}
	rcv, err := dimsenet.Serve(ln, dimsenet.ListenerConfig{
		AE:            s.cfg.MoveDestination,
		AcceptCalling: func(ae string) bool { return strings.EqualFold(strings.TrimSpace(ae), s.cfg.CalledAE) },
		Store:         s.storeMoved,
		Timeout:       s.timeout,
		OnError: func(err error) {
			s.log.Warn("dimse image source: C-STORE receiver", zap.Error(err))
		},
	})
	if err != nil {
		return err
	}
	s.ln = rcv
	return nil
}

// checkAE accepts 1 to 16 printable ASCII characters without backslash.
func checkAE(ae string) error {
	t := strings.TrimSpace(ae)
	if t == "" || len(ae) > 16 {
		return fmt.Errorf("AE title %q: want 1 to 16 characters", ae)
	}
	for _, c := range ae {
		if c < 0x20 || c > 0x7e || c == '\\' {
			return fmt.Errorf("AE title %q: only printable ASCII without backslash", ae)
		}
	}
	return nil
}

// CacheUsage reports the cache's bytes and studies (benchmarks, tests).
func (s *Source) CacheUsage() Usage { return s.cache.usage() }

// CacheDir is the source's private cache directory.
func (s *Source) CacheDir() string { return s.cache.root }

// ListenAddr is the receiver's address (nil before the first C-MOVE).
func (s *Source) ListenAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Close stops the receiver, interrupts retrieves in progress and removes
// the cache directory with every cached file.
func (s *Source) Close() error {
	var err error
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		err = ln.Close()
	}
	if cerr := s.cache.close(); err == nil {
		err = cerr
	}
	return err
}

func (s *Source) netConfig() dimsenet.Config {
	return dimsenet.Config{CallingAE: s.cfg.CallingAE, CalledAE: s.cfg.CalledAE, Timeout: s.timeout}
}

// Check opens an association and sends a C-ECHO (readiness).
func (s *Source) Check(ctx context.Context) error {
	a, err := dimsenet.Dial(ctx, s.cfg.Addr, s.netConfig(), dimsenet.QueryContexts()[:1])
	if err != nil {
		return pacsError("C-ECHO", err)
	}
	defer a.Release()
	if err := a.Echo(ctx); err != nil {
		a.Abort()
		return pacsError("C-ECHO", err)
	}
	return nil
}

// pacsError turns a DIMSE failure into a client-facing error: 504 when the
// PACS was too slow, 502 otherwise, naming the operation and never
// anything the PACS could use against the caller.
func pacsError(op string, err error) error {
	if err == nil {
		return nil
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		return &imagesource.Error{Status: http.StatusGatewayTimeout, Code: "timeout",
			Message: "the PACS did not answer the " + op + " in time", Err: err}
	}
	var rj *dimsenet.RejectError
	if errors.As(err, &rj) {
		return &imagesource.Error{Status: http.StatusBadGateway, Code: "transient",
			Message: "the PACS refused the gateway's association for " + op + ": " + rj.Error(), Err: err}
	}
	if se, ok := imagesource.AsError(err); ok {
		return se
	}
	return &imagesource.Error{Status: http.StatusBadGateway, Code: "exception",
		Message: "the PACS failed the " + op, Err: err}
}
