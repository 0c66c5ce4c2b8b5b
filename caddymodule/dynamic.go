package caddymodule

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/authz/smart"
	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomweb"
	"github.com/smart-imaging/smart_imaging/internal/dynconfig"
)

// DynamicConfig enables /dyn/{base64url(JSON)}/… on a route: the reference
// server's inline tenants. The JSON names only where to go: {"authz":
// {"kind": "smart-on-fhir", "fhir_base_url": …, "client_id": …}, "images":
// {"kind": "dicomweb", "base_url": …, "lookup": "studies-by-mrn"},
// "study_token_ttl": …}. Everything that decides who may see what is set
// here by the operator; credentials come from Credentials, per host. A
// tenant runs with the route's study token key. See package dynconfig for
// the rules.
type DynamicConfig struct {
	// AllowHosts are the hosts (host or host:port) a dynamic config may send
	// requests to, as its PACS or as its EHR (the FHIR base and the
	// endpoints its discovery names).
	AllowHosts []string `json:"allow_hosts,omitempty"`
	// AllowEHRHosts may serve only as a tenant's EHR, AllowPACSHosts only
	// as its PACS.
	AllowEHRHosts  []string `json:"allow_ehr_hosts,omitempty"`
	AllowPACSHosts []string `json:"allow_pacs_hosts,omitempty"`
	// AllowMock lets dynamic configs use "authz mock" (the URL names the
	// patient, with no EHR): for demos only.
	AllowMock bool `json:"allow_mock,omitempty"`
	// MaxConfigs bounds how many dynamic configs stay provisioned at once
	// (the least recently used is released first). Default 32.
	MaxConfigs int `json:"max_configs,omitempty"`
	// Credentials are the gateway's credentials per allowed host: basic or
	// bearer for a PACS, client_secret or private_key (with the client id)
	// for an EHR. Placeholders such as {env.PACS_PASSWORD} are resolved at
	// start; a private key file is read at start.
	Credentials []dynconfig.Credential `json:"credentials,omitempty"`
	// AllowURLCredentials accepts credentials inside the URL's JSON
	// (client_secret, private_key, username, password, bearer). Off by
	// default: URLs end up in access logs and browser histories.
	AllowURLCredentials bool `json:"allow_url_credentials,omitempty"`
	// SMART is the authorization policy of every smart-on-fhir tenant: any
	// smart-on-fhir option (mrn_system, accept_scopes, audience, issuer,
	// patient_claim, patient_lookup_token, validation, endpoints, caches,
	// timeout) except fhir_base_url, client_id and the credentials. Unset:
	// the smart-on-fhir defaults.
	SMART *smart.Config `json:"smart_on_fhir,omitempty"`
	// MetadataCache gives every tenant a metadata cache of its own with
	// these bounds. Unset: tenants have none.
	MetadataCache *MetadataCacheConfig `json:"metadata_cache,omitempty"`
}

// dynamicTenants provisions and caches the handlers of dynamic configs.
type dynamicTenants struct {
	policy     dynconfig.Policy
	smart      smart.Config
	maxConfigs int
	metaCache  *MetadataCacheConfig // each tenant's, when the operator sets it
	parent     *Handler
	// root is the parent of every tenant's context: a child of the route's
	// context (so unloading the config cancels it) with no cleanup
	// callbacks of its own. Caddy 2.11's cancel function of a context made
	// by caddy.NewContext runs the cleanup callbacks of the context it was
	// made from; made from root, a tenant's cancel cancels exactly the
	// tenant's context and cleans up exactly the modules loaded into it.
	root caddy.Context

	// provisionMu serializes provisioning.
	provisionMu sync.Mutex

	mu     sync.Mutex
	lru    *list.List // of *dynamicTenant, most recent first
	byKey  map[string]*list.Element
	closed bool
}

// dynamicTenant is one provisioned dynamic config.
type dynamicTenant struct {
	key     string
	handler *Handler
	// release cancels the tenant's context and cleans up its modules: the
	// reverse proxy (its metrics updater, its upstreams' pool entries, its
	// transport's idle connections) and the authorizer (the JWKS cache's
	// workers). Called once, when the tenant is evicted and no request is
	// using it any more.
	release func()
	// inUse counts the requests being served by the tenant; evicted is set
	// when the tenant left the cache. Both are guarded by
	// dynamicTenants.mu.
	inUse   int
	evicted bool
}

func newDynamicTenants(ctx caddy.Context, parent *Handler, cfg DynamicConfig) (*dynamicTenants, error) {
	d := &dynamicTenants{
		policy: dynconfig.Policy{
			AllowHosts:          cfg.AllowHosts,
			AllowEHRHosts:       cfg.AllowEHRHosts,
			AllowPACSHosts:      cfg.AllowPACSHosts,
			AllowMock:           cfg.AllowMock,
			AllowURLCredentials: cfg.AllowURLCredentials,
			MaxStudyTokenTTL:    parent.ttl,
		},
		maxConfigs: cfg.MaxConfigs,
		metaCache:  cfg.MetadataCache,
		parent:     parent,
		lru:        list.New(),
		byKey:      map[string]*list.Element{},
	}
	if d.maxConfigs <= 0 {
		d.maxConfigs = 32
	}
	creds, err := resolveCredentials(cfg.Credentials)
	if err != nil {
		return nil, fmt.Errorf("dynamic_config: %w", err)
	}
	d.policy.Credentials = creds
	if err := d.policy.Check(); err != nil {
		return nil, fmt.Errorf("dynamic_config: %w", err)
	}
	if cfg.SMART != nil {
		if err := checkSMARTPolicy(*cfg.SMART); err != nil {
			return nil, fmt.Errorf("dynamic_config: authz smart-on-fhir: %w", err)
		}
		d.smart = *cfg.SMART
	}
	d.root, _ = caddy.NewContext(ctx)
	return d, nil
}

// checkSMARTPolicy refuses the options that a dynamic tenant supplies
// (from its URL or from the route's credentials), and a policy that could
// never work.
func checkSMARTPolicy(c smart.Config) error {
	for _, f := range []struct{ name, value string }{
		{"fhir_base_url", c.FHIRBaseURL}, {"client_id", c.ClientID}, {"client_secret", c.ClientSecret},
		{"private_key", c.PrivateKey}, {"private_key_alg", c.PrivateKeyAlg}, {"private_key_id", c.PrivateKeyID},
	} {
		if f.value != "" {
			return fmt.Errorf("%s is not part of the policy: the EHR comes from the /dyn URL, its client id and keys from credentials", f.name)
		}
	}
	if (c.Validation == smart.ValidationJWT || c.JWKSURL != "") && len(c.Audience) == 0 {
		return errors.New("jwt validation needs audience: the token audiences dynamic tenants accept")
	}
	return nil
}

// resolveCredentials resolves placeholders in the operator's credentials
// (an unset variable is an error) and reads private key files, so that a
// tenant's modules get the values themselves.
func resolveCredentials(in []dynconfig.Credential) ([]dynconfig.Credential, error) {
	repl := caddy.NewReplacer()
	out := make([]dynconfig.Credential, 0, len(in))
	for _, c := range in {
		for _, v := range []*string{&c.Host, &c.Username, &c.Password, &c.Token, &c.ClientID, &c.ClientSecret, &c.PrivateKey} {
			s, err := repl.ReplaceOrErr(*v, true, true)
			if err != nil {
				return nil, fmt.Errorf("credentials for %s: %w", c.Host, err)
			}
			*v = s
		}
		if k := strings.TrimSpace(c.PrivateKey); k != "" && !strings.HasPrefix(k, "{") && !strings.HasPrefix(k, "-----BEGIN") {
			b, err := os.ReadFile(k)
			if err != nil {
				return nil, fmt.Errorf("credentials for %s: reading the private key: %w", c.Host, err)
			}
			c.PrivateKey = strings.TrimSpace(string(b))
		}
		out = append(out, c)
	}
	return out, nil
}

// cleanup releases every provisioned dynamic config (now, or when the
// last request it serves ends).
func (d *dynamicTenants) cleanup() {
	d.mu.Lock()
	d.closed = true
	var now []*dynamicTenant
	for e := d.lru.Front(); e != nil; e = e.Next() {
		if t := d.evictLocked(e); t != nil {
			now = append(now, t)
		}
	}
	d.mu.Unlock()
	for _, t := range now {
		t.release()
	}
}

// serveDynamic answers /dyn/{segment}/… with the handler of that config.
func (h *Handler) serveDynamic(w http.ResponseWriter, r *http.Request, rest string) error {
	seg, tail, _ := strings.Cut(rest, "/")
	t, err := h.dynamic.acquire(h.route(r), seg)
	if err != nil {
		return h.fail(w, r, err)
	}
	defer h.dynamic.done(t)
	// The child sees the path under the segment; its public base (from the
	// original request) keeps the /dyn/{segment} prefix.
	r2 := r.Clone(r.Context())
	r2.URL.Path = "/" + tail
	r2.URL.RawPath = ""
	return t.handler.ServeHTTP(w, r2, nil)
}

// acquire returns the tenant of a segment, provisioning it if needed, and
// counts the caller among its users until done.
func (d *dynamicTenants) acquire(route, seg string) (*dynamicTenant, error) {
	raw, err := dynconfig.DecodeSegment(seg)
	if err != nil {
		return nil, badDynamic(err)
	}
	sum := sha256.Sum256(append([]byte(route+"\x00"), raw...))
	key := hex.EncodeToString(sum[:])

	t, evicted, err := d.lookupOrProvision(raw, key, route)
	// Evicted (or superfluous) tenants are released outside the lock:
	// cleaning up closes idle connections.
	for _, old := range evicted {
		old.release()
	}
	return t, err
}

// lookupOrProvision finds or makes the tenant of key and counts the caller
// among its users; it returns the tenants evicted to make room, for the
// caller to release. Provisioning holds provisionMu, not mu: a stream of
// new configs waits on itself (Caddy's provisioning is not meant to run
// concurrently) but does not hold up requests to tenants already
// provisioned.
func (d *dynamicTenants) lookupOrProvision(raw []byte, key, route string) (*dynamicTenant, []*dynamicTenant, error) {
	if t, err := d.use(key); t != nil || err != nil {
		return t, nil, err
	}
	d.provisionMu.Lock()
	defer d.provisionMu.Unlock()
	// Another request may have provisioned it while this one waited.
	if t, err := d.use(key); t != nil || err != nil {
		return t, nil, err
	}
	tenant, err := d.policy.Parse(raw)
	if err != nil {
		return nil, nil, badDynamic(err)
	}
	fresh, err := d.provision(tenant, key, route)
	if err != nil {
		return nil, nil, err
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, []*dynamicTenant{fresh}, errReloading
	}
	fresh.inUse++
	d.byKey[key] = d.lru.PushFront(fresh)
	var evicted []*dynamicTenant
	for d.lru.Len() > d.maxConfigs {
		if old := d.evictLocked(d.lru.Back()); old != nil {
			evicted = append(evicted, old)
		}
	}
	return fresh, evicted, nil
}

// errReloading refuses /dyn requests that arrive while the route's
// configuration is being unloaded.
var errReloading = &problem{Status: http.StatusServiceUnavailable, Code: "transient", RetryAfter: time.Second,
	Message: "the configuration is being reloaded"}

// use returns the provisioned tenant of key, if any, counting the caller
// among its users.
func (d *dynamicTenants) use(key string) (*dynamicTenant, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errReloading
	}
	e, ok := d.byKey[key]
	if !ok {
		return nil, nil
	}
	d.lru.MoveToFront(e)
	t := e.Value.(*dynamicTenant)
	t.inUse++
	return t, nil
}

// evictLocked takes a tenant out of the cache and returns it when it can
// be released now (no request is using it); otherwise the last request
// releases it. d.mu must be held.
func (d *dynamicTenants) evictLocked(e *list.Element) *dynamicTenant {
	t := e.Value.(*dynamicTenant)
	d.lru.Remove(e)
	delete(d.byKey, t.key)
	t.evicted = true
	if t.inUse == 0 {
		return t
	}
	return nil
}

// done ends a request's use of a tenant, releasing it if it was evicted
// meanwhile and this was its last request.
func (d *dynamicTenants) done(t *dynamicTenant) {
	d.mu.Lock()
	t.inUse--
	last := t.evicted && t.inUse == 0
	d.mu.Unlock()
	if last {
		t.release()
	}
}

func badDynamic(err error) error {
	return &problem{Status: http.StatusBadRequest, Code: "invalid", Message: err.Error()}
}

// provision builds a tenant's handler in a context of its own.
func (d *dynamicTenants) provision(ten *dynconfig.Tenant, key, parentRoute string) (*dynamicTenant, error) {
	ttl := ten.StudyTokenTTL
	if ttl == 0 {
		ttl = d.parent.ttl
	}
	child := &Handler{
		AuthzRaw:      d.authzJSON(ten.Authz),
		ImagesRaw:     imagesJSON(ten.Images),
		StudyTokenTTL: caddy.Duration(ttl),
		RouteID:       parentRoute + "/dyn/" + key[:16],
		CORS:          d.parent.CORS,
		MaxRenderSize: d.parent.MaxRenderSize,
		Delay:         ten.Delay,
		MetadataCache: d.metaCache,
		inheritKeys:   d.parent.keys,
		metricsRoute:  parentRoute + "/dyn",
	}
	tctx, cancel := caddy.NewContext(d.root)
	var once sync.Once
	release := func() {
		once.Do(func() {
			cancel()
			_ = child.Cleanup() // the tenant's own resources, such as its metadata cache
		})
	}
	if err := child.Provision(tctx); err != nil {
		release()
		return nil, badDynamic(fmt.Errorf("dynamic config: %w", err))
	}
	if err := child.Validate(); err != nil {
		release()
		return nil, badDynamic(fmt.Errorf("dynamic config: %w", err))
	}
	// The tenant logs as its route does.
	child.logger, child.audit = d.parent.logger, d.parent.audit
	if sa, ok := child.authorizer.(urlRestricter); ok {
		// Endpoints the EHR's discovery names must be on the list too.
		sa.restrictURLs(func(u string) error { return d.policy.CheckEndpoint(u, dynconfig.RoleEHR) })
	}
	d.parent.logger.Info("dynamic config provisioned", zap.String("config_hash", key[:16]),
		zap.String("authz", ten.Authz.Kind), zap.String("images", dynconfig.ImagesDICOMweb))
	return &dynamicTenant{key: key, handler: child, release: release}, nil
}

// authzJSON is the tenant's authorizer: the operator's policy with the
// tenant's EHR, client id and credentials.
func (d *dynamicTenants) authzJSON(a dynconfig.Authz) []byte {
	if a.Kind == dynconfig.AuthzMock {
		m := MockAuthz{}
		m.Patient, m.MRN, m.FHIRBaseURL = a.Patient, a.MRN, a.FHIRBaseURL
		return caddyconfig.JSONModuleObject(m, "kind", dynconfig.AuthzMock, nil)
	}
	cfg := d.smart
	cfg.FHIRBaseURL, cfg.ClientID = a.FHIRBaseURL, a.ClientID
	cfg.ClientSecret, cfg.PrivateKey, cfg.PrivateKeyAlg, cfg.PrivateKeyID = a.ClientSecret, a.PrivateKey, a.PrivateKeyAlg, a.PrivateKeyID
	return caddyconfig.JSONModuleObject(SmartAuthz{Config: cfg}, "kind", dynconfig.AuthzSMART, nil)
}

// imagesJSON is the tenant's PACS, with the gateway's defaults for
// everything the URL may not set.
func imagesJSON(im dynconfig.Images) []byte {
	return caddyconfig.JSONModuleObject(DICOMwebImages{
		Config: dicomweb.Config{BaseURL: im.BaseURL, Username: im.Username, Password: im.Password, Bearer: im.Bearer},
		Lookup: imagesource.Lookup(im.Lookup),
	}, "kind", dynconfig.ImagesDICOMweb, nil)
}
