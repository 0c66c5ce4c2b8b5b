package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomweb"
	"github.com/smart-imaging/smart_imaging/internal/upstream"
)

func init() {
	caddy.RegisterModule(DICOMwebImages{})
}

// DefaultPACSKeepAlive is the keep-alive idle time of the upstream
// transport when the configuration sets none: the one upstream default
// (upstream.IdleConnTimeout), below the 1 s after which Orthanc closes idle
// connections, so a request never races that close.
const DefaultPACSKeepAlive = upstream.IdleConnTimeout

// DefaultPACSReadBuffer is the upstream transport's read buffer when the
// configuration sets none (Go's default is 4 KiB). The reverse proxy
// reads 32 KiB at a time; with a larger buffer one system call fetches
// what the socket holds and the proxy's reads are served from memory,
// which cut the gateway's CPU per retrieved study by about a sixth in
// `go run ./bench`. Set `transport http { read_buffer … }` to change it.
const DefaultPACSReadBuffer = 128 << 10

// DICOMwebImages is the "dicomweb" image source: a PACS with a DICOMweb
// interface. Searches are exact-match QIDO-RS queries to the base URL's
// host; WADO-RS retrieves go through a Caddy reverse proxy (its upstreams,
// load balancing, health checks and transport are configurable) and stream
// to the client with the PACS's URLs rewritten onto the gateway.
type DICOMwebImages struct {
	// Config is the source's own configuration, used as it is: base_url,
	// username, password, bearer, qido_timeout, max_concurrent_qido,
	// pacs_urls (placeholders such as {env.PACS_URL} are resolved at
	// start).
	dicomweb.Config
	// Lookup is "studies-by-mrn" (default) or "all-studies".
	Lookup imagesource.Lookup `json:"lookup,omitempty"`
	// Proxy is the reverse proxy that carries WADO-RS retrieves. Its
	// upstreams default to the base URL's host and port; its transport to
	// http (with TLS for an https base URL) with keep-alive idle time
	// DefaultPACSKeepAlive. Its QIDO-RS client shares the same transport.
	Proxy *reverseproxy.Handler `json:"proxy,omitempty"`

	src         *dicomweb.Source
	provisioned bool
}

// CaddyModule returns the Caddy module information.
func (DICOMwebImages) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.smart_imaging.images.dicomweb",
		New: func() caddy.Module { return new(DICOMwebImages) },
	}
}

// Provision sets up the reverse proxy and the source. It does no network
// I/O.
func (m *DICOMwebImages) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	cfg := m.Config
	cfg.BaseURL = repl.ReplaceKnown(m.BaseURL, "")
	cfg.Username = repl.ReplaceKnown(m.Username, "")
	cfg.Password = repl.ReplaceKnown(m.Password, "")
	cfg.Bearer = repl.ReplaceKnown(m.Bearer, "")
	cfg.PACSURLs = nil
	for _, u := range m.PACSURLs {
		cfg.PACSURLs = append(cfg.PACSURLs, repl.ReplaceKnown(u, ""))
	}
	if m.Lookup != "" {
		if _, err := imagesource.ParseLookup(string(m.Lookup)); err != nil {
			return fmt.Errorf("images dicomweb: %w", err)
		}
	}
	base, err := url.Parse(cfg.BaseURL)
	if err != nil || base.Host == "" || (base.Scheme != "http" && base.Scheme != "https") {
		return fmt.Errorf("images dicomweb: base URL %q: want an absolute http(s) URL such as http://pacs.internal:8042/dicom-web", cfg.BaseURL)
	}

	if m.Proxy == nil {
		m.Proxy = new(reverseproxy.Handler)
	}
	if len(m.Proxy.HandleResponse) > 0 || m.Proxy.Rewrite != nil {
		return errors.New("images dicomweb: handle_response and rewrite are not supported: the gateway builds the upstream request and reads the answer itself")
	}
	if len(m.Proxy.Upstreams) == 0 && m.Proxy.DynamicUpstreamsRaw == nil {
		port := base.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[base.Scheme]
		}
		m.Proxy.Upstreams = reverseproxy.UpstreamPool{{Dial: net.JoinHostPort(base.Hostname(), port)}}
	}
	raw, err := transportWithDefaults(m.Proxy.TransportRaw, base.Scheme == "https")
	if err != nil {
		return fmt.Errorf("images dicomweb: transport: %w", err)
	}
	m.Proxy.TransportRaw = raw

	if err := m.Proxy.Provision(ctx); err != nil {
		return fmt.Errorf("images dicomweb: reverse proxy: %w", err)
	}
	m.provisioned = true
	client := &http.Client{Transport: m.Proxy.Transport, CheckRedirect: upstream.NoRedirects}
	src, err := dicomweb.New(cfg, m.Proxy, client, ctx.Logger())
	if err != nil {
		return fmt.Errorf("images dicomweb: %w", err)
	}
	m.src = src
	return nil
}

// transportWithDefaults fills in the http transport's defaults: keep-alive
// idle time DefaultPACSKeepAlive and read buffer DefaultPACSReadBuffer
// when unset, TLS for an https base URL. A
// transport of another protocol is left alone.
func transportWithDefaults(raw json.RawMessage, tls bool) (json.RawMessage, error) {
	var t reverseproxy.HTTPTransport
	if raw != nil {
		var probe struct {
			Protocol string `json:"protocol"`
		}
		if err := json.Unmarshal(raw, &probe); err != nil {
			return nil, err
		}
		if probe.Protocol != "http" {
			return raw, nil
		}
		if err := json.Unmarshal(raw, &t); err != nil {
			return nil, err
		}
	}
	if t.KeepAlive == nil {
		t.KeepAlive = new(reverseproxy.KeepAlive)
	}
	if t.KeepAlive.IdleConnTimeout == 0 {
		t.KeepAlive.IdleConnTimeout = caddy.Duration(DefaultPACSKeepAlive)
	}
	if t.ReadBufferSize == 0 {
		t.ReadBufferSize = DefaultPACSReadBuffer
	}
	if tls && t.TLS == nil {
		t.TLS = new(reverseproxy.TLSConfig)
	}
	return caddyconfig.JSONModuleObject(&t, "protocol", "http", nil), nil
}

// Cleanup releases the reverse proxy (its connections and its upstreams'
// entries in the shared pool).
func (m *DICOMwebImages) Cleanup() error {
	if m.provisioned && m.Proxy != nil {
		m.provisioned = false
		return m.Proxy.Cleanup()
	}
	return nil
}

// LookupMode implements ImagesModule.
func (m *DICOMwebImages) LookupMode() imagesource.Lookup { return m.Lookup }

// FindStudies implements imagesource.Source.
func (m *DICOMwebImages) FindStudies(ctx context.Context, q imagesource.Query) ([]imagesource.Study, error) {
	return m.src.FindStudies(ctx, q)
}

// Retrieve implements imagesource.Source.
func (m *DICOMwebImages) Retrieve(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	return m.src.Retrieve(w, r, req)
}

// rejectedProxyOptions are reverse_proxy subdirectives that would take the
// upstream request or the answer out of the gateway's hands.
var rejectedProxyOptions = map[string]bool{
	"handle_response": true, "replace_status": true, "rewrite": true, "method": true,
	"copy_response": true, "copy_response_headers": true,
}

// subdirectives is the table of the block's own options; every other
// option goes to the reverse proxy.
func (m *DICOMwebImages) subdirectives() subdirectives {
	return subdirectives{
		{"lookup", lookupArg(&m.Lookup)},
		{"basic_auth", func(d *caddyfile.Dispenser) error {
			if !d.AllArgs(&m.Username, &m.Password) {
				return d.Err("basic_auth needs a user name and a password")
			}
			return nil
		}},
		{"bearer", func(d *caddyfile.Dispenser) error {
			if !d.AllArgs(&m.Bearer) {
				return d.Err("bearer needs one token")
			}
			return nil
		}},
		{"qido_timeout", positiveDuration(&m.QIDOTimeout)},
		{"max_concurrent_qido", positiveInt(&m.MaxConcurrentQIDO)},
		{"pacs_url", someArgs(&m.PACSURLs)},
	}
}

// UnmarshalCaddyfile reads:
//
//	images dicomweb <base url> {
//		lookup studies-by-mrn|all-studies
//		basic_auth <user> <password>
//		bearer <token>
//		qido_timeout <duration>
//		max_concurrent_qido <n>
//		pacs_url <url>...
//		# any reverse_proxy subdirective: to, lb_policy, health_uri,
//		# transport http { tls …; keepalive …; response_header_timeout … }, …
//	}
func (m *DICOMwebImages) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	// The reverse proxy reads a copy of the tokens with ours deleted, the
	// way forward_auth passes its block on to reverse_proxy.
	d.Next() // "dicomweb"
	rp := d.NewFromNextSegment()
	rp.Next()
	if !rp.NextArg() {
		return rp.Err("images dicomweb needs the PACS's DICOMweb base URL (e.g. http://pacs.internal:8042/dicom-web)")
	}
	m.BaseURL = rp.Val()
	rp.DeleteN(1)
	if rp.NextArg() {
		return rp.ArgErr()
	}
	own := m.subdirectives()
	for rp.NextBlock(0) {
		if rp.Nesting() != 1 {
			continue
		}
		opt := rp.Val()
		if parse := own.find(opt); parse != nil {
			// Ours: read it, then delete its tokens (its name and
			// arguments) from the reverse proxy's copy.
			n := 1 + rp.CountRemainingArgs()
			if err := parse(rp); err != nil {
				return err
			}
			rp.DeleteN(n)
			continue
		}
		if rejectedProxyOptions[opt] || len(opt) > 0 && opt[0] == '@' {
			return rp.Errf("images dicomweb: reverse_proxy option '%s' is not supported here: the gateway builds the upstream request and reads the answer itself", opt)
		}
		// A reverse_proxy option: skip its arguments and block.
		rp.RemainingArgs()
		for nesting := rp.Nesting(); rp.NextBlock(nesting); {
		}
	}
	rp.Reset()
	proxy := new(reverseproxy.Handler)
	if err := proxy.UnmarshalCaddyfile(rp); err != nil {
		return err
	}
	m.Proxy = proxy
	return nil
}

// Check runs one QIDO-RS query against the PACS (readiness).
func (m *DICOMwebImages) Check(ctx context.Context) error { return m.src.Check(ctx) }

// Interface guards
var (
	_ caddy.Module          = (*DICOMwebImages)(nil)
	_ caddy.Provisioner     = (*DICOMwebImages)(nil)
	_ caddy.CleanerUpper    = (*DICOMwebImages)(nil)
	_ caddyfile.Unmarshaler = (*DICOMwebImages)(nil)
	_ ImagesModule          = (*DICOMwebImages)(nil)
	_ checker               = (*DICOMwebImages)(nil)
)
