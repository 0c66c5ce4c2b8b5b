// Package caddymodule is the Caddy glue of smart_imaging: module
// registration, Caddyfile parsing, the Provision/Validate/Cleanup life cycle
// and request routing. The authorization, DICOM and FHIR logic lives in
// authz/, imagesource/ and internal/fhir; this package wires them to Caddy.
package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/metacache"
	"github.com/smart-imaging/smart_imaging/internal/delay"
	"github.com/smart-imaging/smart_imaging/internal/dwroot"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the smart_imaging HTTP handler: a SMART Imaging Access server
// for one route (tenant). It answers FHIR ImagingStudy searches under
// /fhir/ and WADO-RS retrieves under /wado/{studyToken}/, relative to the
// route's stripped prefix.
//
// On every authorized request it sets these placeholders, for the access
// log and for later handlers:
//
//   - {http.auth.user.id}: the caller, the token's fhirUser or sub, else
//     its OAuth client id (the access log's user_id);
//   - {http.auth.user.client_id}: the OAuth client id;
//   - {http.smart_imaging.patient}: the FHIR id of the patient in context
//     (empty on routes without patient binding).
//
// Refusals handed to handle_errors routes carry Caddy's own
// {err.status_code} and {err.message}.
type Handler struct {
	// Authz says how callers are authorized: a module in the
	// http.handlers.smart_imaging.authz namespace, chosen by "kind"
	// ("mock", "smart-on-fhir").
	AuthzRaw json.RawMessage `json:"authz,omitempty" caddy:"namespace=http.handlers.smart_imaging.authz inline_key=kind"`

	// Images says where studies come from: a module in the
	// http.handlers.smart_imaging.images namespace, chosen by "kind"
	// ("folder", "dicomweb").
	ImagesRaw json.RawMessage `json:"images,omitempty" caddy:"namespace=http.handlers.smart_imaging.images inline_key=kind"`

	// StudyTokenKey is the base64 encoding of the 32-byte key that encrypts
	// study tokens. Placeholders such as {env.SMART_IMAGING_KEY} are
	// resolved at start. Every replica serving the same route needs the same
	// key. Empty: a random key per process (tokens die on restart).
	StudyTokenKey string `json:"study_token_key,omitempty"`

	// StudyTokenPreviousKeys are older keys that still open tokens during a
	// key rotation. New tokens always use StudyTokenKey.
	StudyTokenPreviousKeys []string `json:"study_token_previous_keys,omitempty"`

	// StudyTokenTTL is how long a study token stays valid. Default 1h. A
	// token never outlives the access token it was issued for, when that
	// token's expiry is known.
	StudyTokenTTL caddy.Duration `json:"study_token_ttl,omitempty"`

	// StudyTokenBinding is what a study token is bound to besides study,
	// patient and route: "token" (default), the access token that
	// searched, or "grant", its client_id, user and patient (addresses
	// survive a token refresh).
	StudyTokenBinding string `json:"study_token_binding,omitempty"`

	// BaseURL is the public URL of this route (scheme, host and prefix, e.g.
	// https://imaging.example.org/ehr). Empty: derived from each request
	// (its scheme, Host and the prefix handle_path stripped).
	BaseURL string `json:"base_url,omitempty"`

	// RouteID names the route inside study tokens, so a token minted for one
	// route opens on no other. Empty: the route's path prefix.
	RouteID string `json:"route_id,omitempty"`

	// CORS lists the origins browser apps may call from
	// ("https://viewer.example.org"), or "*" for any (open demos only).
	// Applies to FHIR and WADO alike; preflights are answered without a
	// token.
	CORS []string `json:"cors,omitempty"`

	// Dynamic, when set, enables /dyn/{base64url(JSON)}/… on this route
	// for the hosts it allows. Off by default.
	Dynamic *DynamicConfig `json:"dynamic_config,omitempty"`

	// MaxRenderSize is the largest width or height, in pixels, a rendered
	// or thumbnail request may ask for (its viewport), and the size the
	// folder source fits an image into when none is asked for. Larger
	// requests are refused with 400 before the source sees them. Default
	// 2048 (imagesource.DefaultMaxRenderSize); from 128 (a thumbnail's
	// default size) to 65535.
	MaxRenderSize int `json:"max_render_size,omitempty"`

	// DICOMwebRoot serves a patient-scoped DICOMweb root at
	// {route}/dicomweb/: QIDO-RS bound to the caller's patient and WADO-RS
	// of the patient's studies. Off by default.
	DICOMwebRoot bool `json:"dicomweb_root,omitempty"`

	// Delay answers searches and WADO-RS retrieves 503 with Retry-After
	// until the instants it names: for testing clients against a slow
	// archive.
	Delay *delay.Config `json:"delay,omitempty"`

	// MetadataCache keeps WADO-RS metadata and study searches in memory
	// (imagesource/metacache). Unset: no cache.
	MetadataCache *MetadataCacheConfig `json:"metadata_cache,omitempty"`

	gate       *delay.Gate
	owners     *dwroot.Owners
	authorizer authz.Authorizer
	source     imagesource.Source
	metaCache  *metacache.Source
	lookup     imagesource.Lookup
	keys       *studytoken.Keyring
	ttl        time.Duration
	binding    studytoken.Binding
	baseURL    *url.URL
	cors       *corsPolicy
	dynamic    *dynamicTenants
	// inheritKeys is the parent route's keyring, for dynamic configs.
	inheritKeys *studytoken.Keyring
	// metricsRoute, when set, is the route label of metrics (dynamic
	// configs share their parent's label to keep cardinality bounded).
	metricsRoute string
	logger       *zap.Logger
	audit        *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.smart_imaging",
		New: func() caddy.Module { return new(Handler) },
	}
}

// AuthzModule is implemented by the guest modules of the
// http.handlers.smart_imaging.authz namespace.
type AuthzModule interface {
	caddy.Module
	authz.Authorizer
}

// ImagesModule is implemented by the guest modules of the
// http.handlers.smart_imaging.images namespace.
type ImagesModule interface {
	caddy.Module
	imagesource.Source
	// LookupMode is how the route finds a patient's studies.
	LookupMode() imagesource.Lookup
}

// unrestricter is implemented by authorizers that can disable patient
// binding (authz mock with disable_authz_checks).
type unrestricter interface{ Unrestricted() bool }

// tokenIgnorer is implemented by authorizers that validate no bearer token
// (authz mock): binding study tokens to one would bind them to any string.
type tokenIgnorer interface{ ChecksNoToken() bool }

// fhirBaser is implemented by authorizers that know the EHR's FHIR base, so
// absolute patient references can be matched.
type fhirBaser interface{ EHRBaseURL() string }

// routeBinder is implemented by authorizers that finish provisioning once
// they know their route's public FHIR base (base_url + "/fhir", or "" when
// the route derives it from each request). The handler calls bindRoute
// right after loading the module: the route's settings are passed, never
// looked up among the loaded modules.
type routeBinder interface {
	bindRoute(routeFHIRBase string) error
}

// urlRestricter is implemented by authorizers that call URLs an upstream
// names (the EHR's discovery document), so that a /dyn route can hold them
// to its allow-list.
type urlRestricter interface {
	restrictURLs(check func(u string) error)
}

// Provision sets up the handler. It does no network I/O: caddy validate runs
// it too.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.audit = h.logger.Named("audit")
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	for _, o := range h.CORS {
		if !validOrigin(o) {
			return fmt.Errorf("cors: %q is not an origin; use scheme://host[:port] or *", o)
		}
	}
	h.cors = newCORSPolicy(h.CORS)

	routeFHIRBase := ""
	if h.BaseURL != "" {
		repl := caddy.NewReplacer()
		raw, err := repl.ReplaceOrErr(h.BaseURL, true, true)
		if err != nil {
			return fmt.Errorf("base_url: %w", err)
		}
		u, err := url.Parse(strings.TrimRight(raw, "/"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("base_url %q: want an absolute http(s) URL such as https://imaging.example.org/ehr", raw)
		}
		h.baseURL = u
		routeFHIRBase = strings.TrimRight(raw, "/") + "/fhir"
	}

	if h.AuthzRaw == nil {
		return errors.New("authz: missing; add an 'authz mock { … }' or 'authz smart-on-fhir { … }' block")
	}
	mod, err := ctx.LoadModule(h, "AuthzRaw")
	if err != nil {
		return fmt.Errorf("loading authz module: %w", err)
	}
	az, ok := mod.(AuthzModule)
	if !ok {
		return fmt.Errorf("authz module %T does not implement authz.Authorizer", mod)
	}
	if b, ok := az.(routeBinder); ok {
		if err := b.bindRoute(routeFHIRBase); err != nil {
			return err
		}
	}
	h.authorizer = az

	if h.ImagesRaw == nil {
		return errors.New("images: missing; add an 'images folder <dir>' or 'images dicomweb <url>' block")
	}
	mod, err = ctx.LoadModule(h, "ImagesRaw")
	if err != nil {
		return fmt.Errorf("loading images module: %w", err)
	}
	im, ok := mod.(ImagesModule)
	if !ok {
		return fmt.Errorf("images module %T does not implement imagesource.Source", mod)
	}
	h.source = im
	h.lookup = im.LookupMode()
	if h.lookup == "" {
		h.lookup = imagesource.LookupStudiesByMRN
	}
	if h.lookup == imagesource.LookupAllStudies && !h.unrestricted() {
		return errors.New("images: lookup all-studies returns every patient's studies; use it only with 'authz mock { disable_authz_checks }', or use lookup studies-by-mrn")
	}
	if err := h.provisionMetadataCache(); err != nil {
		return err
	}

	if h.inheritKeys != nil {
		h.keys = h.inheritKeys
	} else if err := h.provisionKeys(); err != nil {
		return err
	}
	h.ttl = time.Duration(h.StudyTokenTTL)
	if h.ttl == 0 {
		h.ttl = time.Hour
	}
	if h.DICOMwebRoot {
		h.owners = dwroot.NewOwners(ownerCacheTTL, ownerCacheMax)
	}
	if h.binding, err = studytoken.ParseBinding(h.StudyTokenBinding); err != nil {
		return err
	}
	if ti, ok := h.authorizer.(tokenIgnorer); ok && ti.ChecksNoToken() {
		// Nothing checks the bearer here: bind to the fixed grant.
		h.binding = studytoken.BindGrant
	}
	if err := h.provisionDelay(); err != nil {
		return err
	}
	if h.Dynamic != nil {
		h.dynamic, err = newDynamicTenants(ctx, h, *h.Dynamic)
		if err != nil {
			return err
		}
	}
	return nil
}

func (h *Handler) provisionKeys() error {
	repl := caddy.NewReplacer()
	if h.StudyTokenKey == "" {
		if len(h.StudyTokenPreviousKeys) > 0 {
			return errors.New("study_token_key: previous keys are set but the current key is missing")
		}
		kr, err := studytoken.RandomKeyring()
		if err != nil {
			return fmt.Errorf("study_token_key: %w", err)
		}
		h.keys = kr
		h.logger.Warn("study_token_key is not set: using a random key for this process; study tokens will not survive a restart and replicas will not share them")
		return nil
	}
	decode := func(raw string) ([]byte, error) {
		s, err := repl.ReplaceOrErr(raw, true, true)
		if err != nil {
			return nil, err
		}
		return studytoken.ParseKey(s)
	}
	current, err := decode(h.StudyTokenKey)
	if err != nil {
		return fmt.Errorf("study_token_key: %w", err)
	}
	var previous [][]byte
	for i, raw := range h.StudyTokenPreviousKeys {
		k, err := decode(raw)
		if err != nil {
			return fmt.Errorf("study_token_key: previous key %d: %w", i+1, err)
		}
		previous = append(previous, k)
	}
	h.keys, err = studytoken.NewKeyring(current, previous...)
	if err != nil {
		return fmt.Errorf("study_token_key: %w", err)
	}
	return nil
}

// Cleanup releases the dynamic configs this route provisioned.
func (h *Handler) Cleanup() error {
	if h.dynamic != nil {
		h.dynamic.cleanup()
	}
	h.closeMetadataCache()
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.MaxRenderSize != 0 && (h.MaxRenderSize < imagesource.MinMaxRenderSize || h.MaxRenderSize > imagesource.MaxImageSide) {
		// Below 128, a thumbnail asked for without a viewport (rendered at
		// 128 by the sources) would pass a bound the route means to set.
		return fmt.Errorf("max_render_size must be from %d to %d pixels", imagesource.MinMaxRenderSize, imagesource.MaxImageSide)
	}
	if h.StudyTokenTTL < 0 {
		return errors.New("study_token_ttl must be positive")
	}
	if _, err := studytoken.ParseBinding(h.StudyTokenBinding); err != nil {
		return err
	}
	if time.Duration(h.StudyTokenTTL) > 24*time.Hour {
		return errors.New("study_token_ttl must be at most 24h: study tokens are credentials")
	}
	return nil
}

// maxRenderSize is the route's bound on rendered sizes.
func (h *Handler) maxRenderSize() int {
	if h.MaxRenderSize > 0 {
		return h.MaxRenderSize
	}
	return imagesource.DefaultMaxRenderSize
}

func (h *Handler) unrestricted() bool {
	u, ok := h.authorizer.(unrestricter)
	return ok && u.Unrestricted()
}

func (h *Handler) fhirBase() string {
	if b, ok := h.authorizer.(fhirBaser); ok {
		return b.EHRBaseURL()
	}
	return ""
}

// ServeHTTP routes a request under the route prefix.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.cors.apply(w, r) {
		return nil
	}
	if _, ok := routePrefix(r); !ok {
		return h.fail(w, r, &problem{Status: http.StatusBadRequest, Code: "invalid",
			Message: "the request path is not canonical (dot segments or repeated slashes)"})
	}
	path := r.URL.EscapedPath()
	if h.serveDual(w, r, path) {
		return nil
	}
	if held, err := h.holdBack(w, r, path); held {
		return err
	}
	switch {
	case path == "/fhir":
		return h.serveWelcome(w, r)
	case path == "/fhir/metadata":
		return h.serveMetadata(w, r)
	case path == "/fhir/.well-known/smart-configuration":
		return h.serveSMARTConfiguration(w, r)
	case path == "/fhir/ImagingStudy" || path == "/fhir/ImagingStudy/_search":
		return h.serveSearch(w, r)
	case path == "/health/live":
		return h.serveLive(w, r)
	case path == "/health/ready":
		return h.serveReady(w, r)
	case strings.HasPrefix(path, "/wado/"):
		return h.serveWADO(w, r, strings.TrimPrefix(path, "/wado/"))
	case strings.HasPrefix(path, "/dicomweb/") && h.DICOMwebRoot:
		return h.serveDICOMwebRoot(w, r, strings.TrimPrefix(path, "/dicomweb/"))
	case strings.HasPrefix(path, "/dyn/") && h.dynamic != nil:
		return h.serveDynamic(w, r, strings.TrimPrefix(path, "/dyn/"))
	}
	return h.fail(w, r, &problem{Status: http.StatusNotFound, Code: "not-found",
		Message: "no such resource: this route serves /fhir/metadata, /fhir/ImagingStudy and /wado/{token}/studies/…"})
}

// publicBase is the public URL of the route: base_url, or the scheme, host
// and stripped prefix of the original request.
func (h *Handler) publicBase(r *http.Request) string {
	if h.baseURL != nil {
		return h.baseURL.String()
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	prefix, _ := routePrefix(r)
	return scheme + "://" + r.Host + prefix
}

// routePrefix is the part of the original path that a handle_path (or
// uri strip_prefix) removed before this handler ran. It reports false when
// the original path does not end with the current one (Caddy cleaned dot
// segments or doubled slashes away): such a request is refused rather than
// guessed at.
func routePrefix(r *http.Request) (string, bool) {
	orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
	if !ok || orig.URL == nil {
		return "", true
	}
	if p := orig.URL.Path; p != "" {
		clean := path.Clean(p)
		if strings.HasSuffix(p, "/") && clean != "/" {
			clean += "/"
		}
		if clean != p {
			// Dot segments or repeated slashes (also percent-encoded ones)
			// anywhere in the path.
			return "", false
		}
	}
	op, cp := orig.URL.EscapedPath(), r.URL.EscapedPath()
	if !strings.HasSuffix(op, cp) {
		return "", false
	}
	return strings.TrimRight(op[:len(op)-len(cp)], "/"), true
}

// route names the route in study tokens.
func (h *Handler) route(r *http.Request) string {
	if h.RouteID != "" {
		return h.RouteID
	}
	if p, ok := routePrefix(r); ok && p != "" {
		return p
	} else if !ok {
		return "(non-canonical path)"
	}
	return "/"
}

// authorize runs the authorizer and records the caller for the audit line
// and the access log. The authorizer learns the route's public FHIR base
// (base_url, else derived from the request) through the request's
// context: a token's audience must name it when none is configured.
func (h *Handler) authorize(r *http.Request) (*authz.Principal, error) {
	start := time.Now()
	ar := r.WithContext(authz.WithRouteFHIRBase(r.Context(), h.publicBase(r)+"/fhir"))
	p, err := h.authorizer.Authorize(ar)
	metricAuthzDuration.WithLabelValues(h.metricRoute(r)).Observe(time.Since(start).Seconds())
	if err == nil {
		// Whatever the authorizer cached, an expired token stops here.
		err = authz.CheckExpiry(p, time.Now())
	}
	if err == nil {
		setPrincipal(r, p)
	}
	return p, err
}

// metricRoute is the route label of metrics.
func (h *Handler) metricRoute(r *http.Request) string {
	if h.metricsRoute != "" {
		return h.metricsRoute
	}
	return h.route(r)
}

// Interface guards
var (
	_ caddy.Module                = (*Handler)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
