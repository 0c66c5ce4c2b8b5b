package caddymodule

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dimse"
)

func init() {
	caddy.RegisterModule(DIMSEImages{})
}

// DIMSEImages is the "dimse" image source: a PACS that speaks only the
// DICOM network protocol. Searches are C-FIND queries; a study is
// retrieved once with C-GET (or C-MOVE into the gateway's own C-STORE
// receiver) into a private, bounded on-disk cache and served from there.
type DIMSEImages struct {
	// Config is the source's own configuration, used as it is: address,
	// called_ae, calling_ae, retrieve, move_destination, listen,
	// cache_dir, cache_size, cache_ttl, timeout (placeholders resolved at
	// start).
	dimse.Config
	// Lookup is "studies-by-mrn" (default) or "all-studies".
	Lookup imagesource.Lookup `json:"lookup,omitempty"`

	src *dimse.Source
}

// CaddyModule returns the Caddy module information.
func (DIMSEImages) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.smart_imaging.images.dimse",
		New: func() caddy.Module { return new(DIMSEImages) },
	}
}

// Provision checks the configuration, makes the cache directory and, for
// C-MOVE, starts the C-STORE receiver. It does not contact the PACS.
func (m *DIMSEImages) Provision(ctx caddy.Context) error {
	if m.Lookup != "" {
		if _, err := imagesource.ParseLookup(string(m.Lookup)); err != nil {
			return fmt.Errorf("images dimse: %w", err)
		}
	}
	repl := caddy.NewReplacer()
	var listen func() (net.Listener, error)
	if m.Config.Retrieve == dimse.CMove && m.Listen != "" {
		// Caddy's listener pool keeps the socket across config reloads;
		// it is opened with the first C-MOVE, not here (caddy validate
		// provisions too).
		na, err := caddy.ParseNetworkAddressWithDefaults(repl.ReplaceKnown(m.Listen, ""), "tcp", 11112)
		if err != nil || na.PortRangeSize() != 1 {
			return fmt.Errorf("images dimse: listen %q: want one host:port such as :11112", m.Listen)
		}
		listen = func() (net.Listener, error) {
			l, err := na.Listen(ctx, 0, net.ListenConfig{})
			if err != nil {
				return nil, err
			}
			ln, ok := l.(net.Listener)
			if !ok {
				return nil, fmt.Errorf("listen %s: not a stream listener", na)
			}
			return ln, nil
		}
	}
	cfg := m.Config
	cfg.Addr = repl.ReplaceKnown(m.Addr, "")
	cfg.CalledAE = repl.ReplaceKnown(m.CalledAE, "")
	cfg.CallingAE = repl.ReplaceKnown(m.CallingAE, "")
	cfg.MoveDestination = repl.ReplaceKnown(m.MoveDestination, "")
	cfg.Listen = repl.ReplaceKnown(m.Listen, "")
	cfg.ListenFunc = listen
	cfg.CacheDir = repl.ReplaceKnown(m.CacheDir, "")
	src, err := dimse.New(cfg, ctx.Logger())
	if err != nil {
		return fmt.Errorf("images dimse: %w", err)
	}
	m.src = src
	return nil
}

// Cleanup stops the receiver and removes the cache with every file in it.
func (m *DIMSEImages) Cleanup() error {
	if m.src == nil {
		return nil
	}
	err := m.src.Close()
	m.src = nil
	return err
}

// LookupMode implements ImagesModule.
func (m *DIMSEImages) LookupMode() imagesource.Lookup { return m.Lookup }

// FindStudies implements imagesource.Source.
func (m *DIMSEImages) FindStudies(ctx context.Context, q imagesource.Query) ([]imagesource.Study, error) {
	return m.src.FindStudies(ctx, q)
}

// Retrieve implements imagesource.Source.
func (m *DIMSEImages) Retrieve(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	return m.src.Retrieve(w, r, req)
}

// Check sends a C-ECHO (readiness).
func (m *DIMSEImages) Check(ctx context.Context) error { return m.src.Check(ctx) }

// UnmarshalCaddyfile reads:
//
//	images dimse <host>:<port> {
//		called_ae <AE>
//		calling_ae <AE>
//		retrieve c-get|c-move
//		move_destination <AE>
//		listen <address>
//		cache_dir <dir>
//		cache_size <size>
//		cache_ttl <duration>
//		timeout <duration>
//		lookup studies-by-mrn|all-studies
//	}
func (m *DIMSEImages) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "dimse"
	if !d.NextArg() {
		return d.Err("images dimse needs the PACS's host:port (e.g. pacs.internal:104)")
	}
	m.Addr = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	if err := m.subdirectives().parseBlock(d, "images dimse"); err != nil {
		return err
	}
	if m.CalledAE == "" || m.CallingAE == "" {
		return d.Err("images dimse needs called_ae (the PACS's AE title) and calling_ae (the gateway's)")
	}
	return nil
}

// subdirectives is the table of the block's options.
func (m *DIMSEImages) subdirectives() subdirectives {
	return subdirectives{
		{"called_ae", oneArg(&m.CalledAE)},
		{"calling_ae", oneArg(&m.CallingAE)},
		{"retrieve", oneOf(&m.Config.Retrieve, dimse.CGet, dimse.CMove)},
		{"move_destination", oneArg(&m.MoveDestination)},
		{"listen", oneArg(&m.Listen)},
		{"cache_dir", oneArg(&m.CacheDir)},
		{"cache_size", func(d *caddyfile.Dispenser) error {
			var v string
			if err := oneArg(&v)(d); err != nil {
				return err
			}
			n, err := humanize.ParseBytes(v)
			if err != nil || n == 0 || n > 1<<62 {
				return d.Errf("cache_size: %q is not a size such as 20GiB", v)
			}
			m.CacheSize = int64(n)
			return nil
		}},
		{"cache_ttl", positiveDuration(&m.CacheTTL)},
		{"timeout", positiveDuration(&m.Timeout)},
		{"lookup", lookupArg(&m.Lookup)},
	}
}

// Interface guards.
var (
	_ ImagesModule          = (*DIMSEImages)(nil)
	_ caddy.Provisioner     = (*DIMSEImages)(nil)
	_ caddy.CleanerUpper    = (*DIMSEImages)(nil)
	_ caddyfile.Unmarshaler = (*DIMSEImages)(nil)
	_ checker               = (*DIMSEImages)(nil)
)
