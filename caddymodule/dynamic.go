package caddymodule

import (
	"bytes"
	"container/list"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// DynamicConfig enables /dyn/{base64url(JSON)}/… on a route: the reference
// server's inline tenants. The JSON is this module's own JSON config with
// only "authz", "images" and "study_token_ttl"; it runs with the route's
// study token key. Every URL in it must name a host on AllowHosts, and it
// may not name local files or placeholders.
type DynamicConfig struct {
	// AllowHosts are the hosts (host or host:port) a dynamic config may send
	// requests to: its PACS and its EHR endpoints.
	AllowHosts []string `json:"allow_hosts,omitempty"`
	// AllowMock lets dynamic configs use "authz mock" (a fixed patient with
	// no EHR): for demos only.
	AllowMock bool `json:"allow_mock,omitempty"`
	// MaxConfigs bounds how many dynamic configs stay provisioned at once
	// (least recently used are cleaned up). Default 32.
	MaxConfigs int `json:"max_configs,omitempty"`
}

// maxDynamicSegment bounds the encoded segment.
const maxDynamicSegment = 8192

// dynamicTenants provisions and caches the handlers of dynamic configs.
type dynamicTenants struct {
	cfg    DynamicConfig
	parent *Handler
	ctx    caddy.Context

	mu    sync.Mutex
	lru   *list.List // of *dynamicTenant, most recent first
	byKey map[string]*list.Element
}

type dynamicTenant struct {
	key     string
	handler *Handler
	cancel  func()
}

func newDynamicTenants(ctx caddy.Context, parent *Handler, cfg DynamicConfig) (*dynamicTenants, error) {
	if len(cfg.AllowHosts) == 0 {
		return nil, errors.New("dynamic_config: allow_hosts is required (the PACS and EHR hosts dynamic configs may use)")
	}
	for _, h := range cfg.AllowHosts {
		if h == "" || strings.ContainsAny(h, "/*?#@ ") {
			return nil, fmt.Errorf("dynamic_config: allow_hosts entry %q must be a host or host:port", h)
		}
	}
	if cfg.MaxConfigs <= 0 {
		cfg.MaxConfigs = 32
	}
	return &dynamicTenants{cfg: cfg, parent: parent, ctx: ctx, lru: list.New(), byKey: map[string]*list.Element{}}, nil
}

// cleanup releases every provisioned dynamic config.
func (d *dynamicTenants) cleanup() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for e := d.lru.Front(); e != nil; e = e.Next() {
		e.Value.(*dynamicTenant).cancel()
	}
	d.lru.Init()
	clear(d.byKey)
}

// serveDynamic answers /dyn/{segment}/… with the handler of that config.
func (h *Handler) serveDynamic(w http.ResponseWriter, r *http.Request, rest string) error {
	seg, tail, _ := strings.Cut(rest, "/")
	child, err := h.dynamic.get(h.route(r), seg)
	if err != nil {
		return h.fail(w, r, err)
	}
	// The child sees the path under the segment; its public base (from the
	// original request) keeps the /dyn/{segment} prefix.
	r2 := r.Clone(r.Context())
	r2.URL.Path = "/" + tail
	r2.URL.RawPath = ""
	return child.ServeHTTP(w, r2, nil)
}

func (d *dynamicTenants) get(route, seg string) (*Handler, error) {
	if seg == "" || len(seg) > maxDynamicSegment {
		return nil, &problem{Status: http.StatusBadRequest, Code: "invalid",
			Message: fmt.Sprintf("the /dyn segment must be 1 to %d characters of base64url JSON", maxDynamicSegment)}
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(seg, "="))
	if err != nil {
		return nil, &problem{Status: http.StatusBadRequest, Code: "invalid", Message: "the /dyn segment is not base64url (RFC 4648 §5)"}
	}
	sum := sha256.Sum256(append([]byte(route+"\x00"), raw...))
	key := hex.EncodeToString(sum[:])

	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.byKey[key]; ok {
		d.lru.MoveToFront(e)
		return e.Value.(*dynamicTenant).handler, nil
	}
	child, cancel, err := d.provision(raw, key, route)
	if err != nil {
		return nil, err
	}
	d.byKey[key] = d.lru.PushFront(&dynamicTenant{key: key, handler: child, cancel: cancel})
	for d.lru.Len() > d.cfg.MaxConfigs {
		old := d.lru.Back()
		t := old.Value.(*dynamicTenant)
		t.cancel()
		delete(d.byKey, t.key)
		d.lru.Remove(old)
	}
	return child, nil
}

// dynamicDoc is what a dynamic config may contain.
type dynamicDoc struct {
	Authz         json.RawMessage `json:"authz"`
	Images        json.RawMessage `json:"images"`
	StudyTokenTTL caddy.Duration  `json:"study_token_ttl,omitempty"`
}

func (d *dynamicTenants) provision(raw []byte, key, parentRoute string) (*Handler, func(), error) {
	bad := func(format string, args ...any) error {
		return &problem{Status: http.StatusBadRequest, Code: "invalid", Message: "dynamic config: " + fmt.Sprintf(format, args...)}
	}
	var doc dynamicDoc
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, nil, bad("not a JSON object with authz, images and study_token_ttl only: %v", err)
	}
	if dec.More() {
		return nil, nil, bad("trailing data after the JSON object")
	}
	if doc.Authz == nil || doc.Images == nil {
		return nil, nil, bad("authz and images are required")
	}
	authzKind, err := kindOf(doc.Authz)
	if err != nil {
		return nil, nil, bad("authz: %v", err)
	}
	switch authzKind {
	case "smart-on-fhir":
	case "mock":
		if !d.cfg.AllowMock {
			return nil, nil, bad("authz mock is not allowed on this route (dynamic_config allow_mock)")
		}
	default:
		return nil, nil, bad("authz kind %q is not allowed (smart-on-fhir%s)", authzKind, map[bool]string{true: " or mock", false: ""}[d.cfg.AllowMock])
	}
	imagesKind, err := kindOf(doc.Images)
	if err != nil {
		return nil, nil, bad("images: %v", err)
	}
	if imagesKind != "dicomweb" {
		return nil, nil, bad("images kind %q is not allowed: only dicomweb (a folder would expose this server's files)", imagesKind)
	}
	if err := onlyFields(doc.Images, dynamicImagesFields); err != nil {
		return nil, nil, bad("images: %v", err)
	}
	if err := inlineKeyOnly(doc.Authz); err != nil {
		return nil, nil, bad("authz: %v", err)
	}
	for _, part := range []struct {
		name string
		raw  json.RawMessage
	}{{"authz", doc.Authz}, {"images", doc.Images}} {
		if err := d.checkValues(part.raw); err != nil {
			return nil, nil, bad("%s: %v", part.name, err)
		}
	}

	child := &Handler{
		AuthzRaw:      doc.Authz,
		ImagesRaw:     doc.Images,
		StudyTokenTTL: doc.StudyTokenTTL,
		RouteID:       parentRoute + "/dyn/" + key[:16],
		CORS:          d.parent.CORS,
		MaxRenderSize: d.parent.MaxRenderSize,
		inheritKeys:   d.parent.keys,
		metricsRoute:  parentRoute + "/dyn",
	}
	// A child context keeps the dynamic config's modules apart. Its cancel
	// function must not be called: in Caddy 2.11 it also runs the parent
	// context's cleanup callbacks (closing the running config's log
	// writers). The modules are cleaned up here instead.
	cctx, _ := caddy.NewContext(d.ctx)
	cancel := func() { child.cleanupModules() }
	if err := child.Provision(cctx); err != nil {
		cancel()
		return nil, nil, bad("%v", err)
	}
	if err := child.Validate(); err != nil {
		cancel()
		return nil, nil, bad("%v", err)
	}
	if sa, ok := child.authorizer.(urlRestricter); ok {
		// Endpoints the EHR's discovery names must be on the list too.
		sa.restrictURLs(func(raw string) error {
			u, err := url.Parse(raw)
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || !d.allowed(u.Host) {
				return fmt.Errorf("%q is not on this route's allow list", raw)
			}
			return nil
		})
	}
	d.parent.logger.Info("dynamic config provisioned", zap.String("config_hash", key[:16]),
		zap.String("authz", authzKind), zap.String("images", imagesKind))
	return child, cancel, nil
}

// dynamicImagesFields are the dicomweb options a dynamic config may set.
// The reverse proxy block ("proxy": upstream dial addresses, transports) is
// not among them: it would name hosts outside the allow list's reach.
var dynamicImagesFields = []string{"kind", "base_url", "lookup", "username", "password", "bearer", "qido_timeout", "max_concurrent_qido"}

func onlyFields(raw json.RawMessage, allowed []string) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	for k := range m {
		if !slices.Contains(allowed, k) {
			return fmt.Errorf("field %q is not allowed in a dynamic config (allowed: %s)", k, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// inlineKeyOnly refuses a private_key that is not the key itself: any
// other value is a file name, and a dynamic config must not make the
// server open (or probe for) its files.
func inlineKeyOnly(raw json.RawMessage) error {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	k, ok := m["private_key"].(string)
	if !ok {
		return nil
	}
	t := strings.TrimSpace(k)
	if strings.HasPrefix(t, "{") || strings.HasPrefix(t, "-----BEGIN ") {
		return nil
	}
	return errors.New("private_key must be the key itself (a JWK or PEM): file paths are not allowed in dynamic configs")
}

// notContacted are option names whose URLs name things, not servers the
// gateway calls; they are checked for placeholders only.
var notContacted = []string{"mrn_system", "audience", "issuer", "scope", "accept_scopes"}

func kindOf(raw json.RawMessage) (string, error) {
	var k struct {
		Kind string `json:"kind"`
	}
	if err := json.Unmarshal(raw, &k); err != nil || k.Kind == "" {
		return "", errors.New(`needs an object with "kind"`)
	}
	return k.Kind, nil
}

// checkValues walks every string in a module's JSON: no placeholders, no
// file paths, and every URL http(s) with a host on the allow list.
func (d *dynamicTenants) checkValues(raw json.RawMessage) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	var walk func(path string, v any) error
	walk = func(path string, v any) error {
		switch x := v.(type) {
		case map[string]any:
			for k, sub := range x {
				if path == "" && slices.Contains(notContacted, k) {
					if err := noPlaceholders(k, sub); err != nil {
						return err
					}
					continue
				}
				if err := walk(path+"."+k, sub); err != nil {
					return err
				}
			}
		case []any:
			for i, sub := range x {
				if err := walk(fmt.Sprintf("%s[%d]", path, i), sub); err != nil {
					return err
				}
			}
		case string:
			return d.checkString(path, x)
		}
		return nil
	}
	return walk("", v)
}

func (d *dynamicTenants) checkString(path, s string) error {
	if t := strings.TrimSpace(s); strings.HasPrefix(t, "{") && json.Valid([]byte(t)) {
		// An inline JSON document (a JWK): check its strings too.
		return d.checkValues(json.RawMessage(t))
	}
	if strings.ContainsAny(s, "{}") {
		return fmt.Errorf("%s: placeholders are not allowed in dynamic configs", path)
	}
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, "./") || strings.HasPrefix(s, "../") || strings.HasPrefix(s, "~") {
		return fmt.Errorf("%s: file paths are not allowed in dynamic configs", path)
	}
	if !strings.Contains(s, ":") {
		return nil
	}
	if !strings.Contains(s, "://") {
		// "host:port", including forms url.Parse refuses ("10.0.0.1:80").
		if host, _, err := net.SplitHostPort(s); err == nil && host != "" && !strings.ContainsAny(s, "/ ") {
			if !d.allowed(s) {
				return fmt.Errorf("%s: host %q is not on this route's allow list", path, s)
			}
			return nil
		}
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return nil // not a URL ("patient/*.rs", a host:port is checked below)
	}
	switch u.Scheme {
	case "http", "https":
	default:
		if u.Opaque != "" && u.Host == "" && !strings.Contains(s, "//") {
			// "host:port" or a scope such as "patient/ImagingStudy.rs".
			if host, _, err := net.SplitHostPort(s); err == nil && host != "" {
				if !d.allowed(s) {
					return fmt.Errorf("%s: host %q is not on this route's allow list", path, s)
				}
			}
			return nil
		}
		return fmt.Errorf("%s: URL scheme %q is not allowed (http or https only)", path, u.Scheme)
	}
	if u.User != nil {
		return fmt.Errorf("%s: credentials in URLs are not allowed", path)
	}
	if !d.allowed(u.Host) {
		return fmt.Errorf("%s: host %q is not on this route's allow list", path, u.Host)
	}
	return nil
}

// allowed reports whether host (host or host:port, as in a URL) is on the
// allow list: an entry without a port allows any port of that host.
func (d *dynamicTenants) allowed(host string) bool {
	h := strings.ToLower(host)
	name := h
	if hn, _, err := net.SplitHostPort(h); err == nil {
		name = hn
	}
	return slices.ContainsFunc(d.cfg.AllowHosts, func(a string) bool {
		a = strings.ToLower(a)
		return a == h || a == name || "["+a+"]" == name
	})
}

// cleanupModules cleans up the guest modules of a dynamic config's handler.
func (h *Handler) cleanupModules() {
	for _, m := range []any{h.authorizer, h.source} {
		if c, ok := m.(caddy.CleanerUpper); ok {
			if err := c.Cleanup(); err != nil {
				h.logger.Warn("cleaning up a dynamic config", zap.Error(err))
			}
		}
	}
}

// noPlaceholders refuses placeholders anywhere in v.
func noPlaceholders(name string, v any) error {
	b, _ := json.Marshal(v)
	var strs []string
	_ = json.Unmarshal(b, &strs)
	var one string
	if json.Unmarshal(b, &one) == nil {
		strs = append(strs, one)
	}
	for _, s := range strs {
		if strings.ContainsAny(s, "{}") {
			return fmt.Errorf(".%s: placeholders are not allowed in dynamic configs", name)
		}
	}
	return nil
}
