// Package dicomweb is the image source that fronts a PACS speaking DICOMweb:
// searches become QIDO-RS queries (exact PatientID, every answer checked
// again) and WADO-RS retrieves go through a reverse proxy (Caddy's, in the
// server), streamed, with what the PACS sends checked against the study
// asked for (metadata before the first byte, each DICOM object from its
// header) and the PACS's own URLs in the answers rewritten onto the
// gateway (any other URL dropped).
//
// Upstream connection reuse: Orthanc closes idle keep-alive connections
// after 1 s, so the transport that talks to it must drop idle connections
// sooner (upstream.IdleConnTimeout, 800ms, the default of every upstream client).
package dicomweb

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/internal/upstream"
)

// Defaults of Config.
const (
	DefaultQIDOTimeout       = 30 * time.Second
	DefaultMaxConcurrentQIDO = 4
	// DefaultIdleConnTimeout is the keep-alive idle time of the default
	// client's transport: the gateway's one upstream default, below
	// Orthanc's fixed 1 s.
	DefaultIdleConnTimeout = upstream.IdleConnTimeout
	// MaxQIDOBody bounds a QIDO-RS answer read into memory.
	MaxQIDOBody = 32 << 20
)

// Config describes the PACS.
type Config struct {
	// BaseURL is the PACS's DICOMweb root, e.g.
	// http://pacs.internal:8042/dicom-web. QIDO-RS goes to this host;
	// WADO-RS goes through the proxy, whose upstreams default to it.
	BaseURL string `json:"base_url,omitempty"`
	// Username and Password are sent as HTTP Basic credentials.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Bearer is sent as "Authorization: Bearer …" (instead of Basic).
	Bearer string `json:"bearer,omitempty"`
	// QIDOTimeout bounds each QIDO-RS call. Default 30s. A caddy.Duration,
	// so that the Caddy module embeds this struct as its JSON ("30s").
	QIDOTimeout caddy.Duration `json:"qido_timeout,omitempty"`
	// MaxConcurrentQIDO bounds the QIDO-RS calls one search issues at a
	// time. Default 4 (Orthanc serializes QIDO internally anyway).
	MaxConcurrentQIDO int `json:"max_concurrent_qido,omitempty"`
	// PACSURLs are other DICOMweb roots the PACS writes into its answers
	// (RetrieveURL, BulkDataURI, Content-Location), for a PACS configured
	// with a public host name of its own. BaseURL and its http/https twin
	// are always rewritten.
	PACSURLs []string `json:"pacs_urls,omitempty"`
}

// Proxy forwards a prepared request to the PACS and streams the answer:
// caddyhttp.MiddlewareHandler, implemented by Caddy's *reverseproxy.Handler.
type Proxy interface {
	ServeHTTP(http.ResponseWriter, *http.Request, caddyhttp.Handler) error
}

// Source is the dicomweb image source. It is safe for concurrent use.
type Source struct {
	base       *url.URL
	baseStr    string // BaseURL without trailing slash
	authHeader string
	needles    []string // PACS URL prefixes (each ending in "/") to rewrite
	proxy      Proxy
	client     *http.Client
	logger     *zap.Logger
	timeout    time.Duration
	maxConc    int
}

// New checks cfg and builds a Source. proxy carries WADO-RS retrieves;
// client carries QIDO-RS searches (nil: a client whose keep-alive idle time
// is DefaultIdleConnTimeout); logger may be nil.
func New(cfg Config, proxy Proxy, client *http.Client, logger *zap.Logger) (*Source, error) {
	base, err := parseBase(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.Bearer != "" && (cfg.Username != "" || cfg.Password != "") {
		return nil, errors.New("dicomweb: set either basic auth or a bearer token, not both")
	}
	if cfg.Password != "" && cfg.Username == "" {
		return nil, errors.New("dicomweb: basic auth needs a user name")
	}
	if strings.ContainsAny(cfg.Username, ":\r\n") {
		return nil, errors.New("dicomweb: basic auth user name must not contain ':' or line breaks")
	}
	if strings.ContainsAny(cfg.Password+cfg.Bearer, "\r\n") {
		return nil, errors.New("dicomweb: credentials must not contain line breaks")
	}
	if proxy == nil {
		return nil, errors.New("dicomweb: a proxy for WADO-RS retrieves is required")
	}
	if cfg.QIDOTimeout < 0 {
		return nil, errors.New("dicomweb: qido timeout must not be negative")
	}
	if cfg.MaxConcurrentQIDO < 0 {
		return nil, errors.New("dicomweb: max concurrent QIDO must not be negative")
	}
	s := &Source{
		base:    base,
		baseStr: base.String(),
		proxy:   proxy,
		client:  client,
		logger:  logger,
		timeout: time.Duration(cfg.QIDOTimeout),
		maxConc: cfg.MaxConcurrentQIDO,
	}
	if s.client == nil {
		s.client = defaultClient()
	}
	if s.logger == nil {
		s.logger = zap.NewNop()
	}
	if s.timeout == 0 {
		s.timeout = DefaultQIDOTimeout
	}
	if s.maxConc == 0 {
		s.maxConc = DefaultMaxConcurrentQIDO
	}
	switch {
	case cfg.Bearer != "":
		s.authHeader = "Bearer " + cfg.Bearer
	case cfg.Username != "":
		r := &http.Request{Header: http.Header{}}
		r.SetBasicAuth(cfg.Username, cfg.Password)
		s.authHeader = r.Header.Get("Authorization")
	}
	seen := map[string]bool{}
	addNeedle := func(u *url.URL) {
		n := u.String() + "/"
		if !seen[n] {
			seen[n] = true
			s.needles = append(s.needles, n)
		}
	}
	addNeedle(base)
	twin := *base
	twin.Scheme = map[string]string{"http": "https", "https": "http"}[base.Scheme]
	addNeedle(&twin)
	for _, raw := range cfg.PACSURLs {
		u, err := parseBase(raw)
		if err != nil {
			return nil, fmt.Errorf("dicomweb: pacs_urls: %w", err)
		}
		addNeedle(u)
	}
	return s, nil
}

// parseBase checks a DICOMweb root URL and drops its trailing slash.
func parseBase(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("dicomweb: base URL is missing (e.g. http://pacs.internal:8042/dicom-web)")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("dicomweb: base URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("dicomweb: base URL %q must start with http:// or https://", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("dicomweb: base URL %q has no host", raw)
	}
	if u.User != nil {
		return nil, errors.New("dicomweb: base URL must not carry credentials; use basic_auth or bearer")
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return nil, fmt.Errorf("dicomweb: base URL %q must not have a query or fragment", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	if strings.Contains(u.Path, "//") || strings.Contains(u.Path, "/../") || strings.HasSuffix(u.Path, "/..") {
		return nil, fmt.Errorf("dicomweb: base URL path %q is not clean", u.Path)
	}
	return u, nil
}

// defaultClient is used when New gets no client.
func defaultClient() *http.Client {
	t := upstream.NewTransport()
	t.ResponseHeaderTimeout = 0
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return &http.Client{Transport: t}
}

// BaseURL is the PACS's DICOMweb root, without a trailing slash.
func (s *Source) BaseURL() string { return s.baseStr }

// setAuth adds the configured credentials (and removes any others).
func (s *Source) setAuth(h http.Header) {
	h.Del("Authorization")
	if s.authHeader != "" {
		h.Set("Authorization", s.authHeader)
	}
}

// Interface guards
var _ imagesource.Source = (*Source)(nil)
