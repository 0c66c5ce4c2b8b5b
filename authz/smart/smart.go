// Package smart is the smart-on-fhir Authorizer: it accepts exactly the
// access tokens an EHR's SMART authorization server issued for a patient,
// and maps that patient to PACS keys through the EHR's FHIR Patient
// resource.
//
// Tokens are validated by RFC 7662 introspection (the gateway authenticated
// as a SMART Backend Services client with a private_key_jwt assertion, or
// with client_secret_basic) or locally as JWTs against the EHR's JWKS
// (asymmetric algorithms only; iss, aud, exp and nbf checked with 30 s of
// leeway). Endpoints come from {fhir_base_url}/.well-known/smart-configuration,
// fetched on first use (never in New), cached for an hour and fetched again
// after a failure; each can be configured instead.
//
// Decisions are cached by the SHA-256 of the token: a valid token until its
// exp or cache_ttl, whichever comes first; a refused one for
// inactive_cache_ttl. Concurrent misses for one token share one call to the
// EHR, and the cache holds at most cache_size tokens (oldest evicted first).
// The gateway's own Backend Services token is reused until shortly before
// it expires. A patient's PACS keys are cached per patient for cache_ttl.
//
// Statuses: no token, or an invalid, inactive, expired or foreign one: 401
// with WWW-Authenticate: Bearer error="invalid_token". Scopes without a
// patient-level ImagingStudy read: 403 with error="insufficient_scope". No
// patient in context: 403 (never treated as system access). EHR answering
// 429/502/503/504: 503 with Retry-After. EHR unreachable: 502; not
// answering within the timeout: 504 with Retry-After (the rule every
// upstream shares, internal/upstream). EHR answering something the
// protocol does not allow: 502.
package smart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/internal/fhirid"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// maxTokenLen bounds the bearer tokens considered at all.
const maxTokenLen = 16 << 10

// Authorizer is the smart-on-fhir authz.Authorizer. It is safe for
// concurrent use.
type Authorizer struct {
	s          *settings
	client     *http.Client
	jwksClient *http.Client
	observer   func(result string)
	urlCheck   func(u string) error
	logger     *zap.Logger
	now        func() time.Time

	group     singleflight.Group
	waiting   atomic.Int64 // callers waiting in flight, for tests
	tokens    *ttlCache[*tokenEntry]
	callerTok *ttlCache[callerToken] // by authz.HashToken, patient_lookup_token caller only
	patients  *ttlCache[*patientEntry]
	disc      discoveryCache
	backend   backendCache
	jwks      *jwk.Cache
	jwksState jwksState
}

// tokenEntry is a cached decision on one token.
type tokenEntry struct {
	principal *authz.Principal
	deny      *authz.Error
	// aud is the introspected audience, checked on every request against
	// the audience in effect for it (audienceDeny): with none configured,
	// that is the route's, which may differ from one request to the next.
	aud []string
}

type callerToken struct {
	token   string
	patient string
}

type patientEntry struct {
	keys   []pacskey.PatientKey
	idents []authz.Identifier // the identifiers keys come from
	deny   *authz.Error
}

// New checks cfg and builds an Authorizer. It does no network I/O (Caddy
// runs it for `caddy validate` too); it reads the private key file. client
// is used for every call to the EHR (nil: a default client); ctx bounds
// background work (the JWKS cache's refreshes) and should be cancelled when
// the configuration is unloaded.
func New(ctx context.Context, cfg Config, client *http.Client, logger *zap.Logger) (*Authorizer, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	if client == nil {
		client = &http.Client{Timeout: s.timeout}
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	// The JWKS cache fetches without a context; the client's own timeout
	// is what bounds a slow EHR there.
	jwksClient := client
	if client.Timeout <= 0 || client.Timeout > s.timeout {
		c := *client
		c.Timeout = s.timeout
		jwksClient = &c
	}
	a := &Authorizer{
		s:          s,
		client:     client,
		jwksClient: jwksClient,
		logger:     logger,
		now:        time.Now,
		tokens:     newTTLCache[*tokenEntry](s.cacheSize),
		patients:   newTTLCache[*patientEntry](s.cacheSize),
		jwksState: jwksState{
			registered: map[string]bool{},
			fetched:    map[string]bool{},
			last:       map[string]time.Time{},
			lastFail:   map[string]*authz.Error{},
		},
	}
	if s.lookupToken == LookupTokenCaller {
		a.callerTok = newTTLCache[callerToken](s.cacheSize)
	}
	if s.validation == ValidationJWT {
		a.jwks = jwk.NewCache(ctx)
	}
	return a, nil
}

// FHIRBaseURL is the EHR FHIR base the authorizer was configured with, for
// building absolute Patient references and checking ?patient= values.
func (a *Authorizer) FHIRBaseURL() string { return a.s.fhirBase }

// Validation reports the validation mode in effect ("introspection" or
// "jwt").
func (a *Authorizer) Validation() string { return a.s.validation }

func missingToken() *authz.Error {
	return &authz.Error{Status: http.StatusUnauthorized, Code: "login",
		Message: "an access token is required (Authorization: Bearer)", Challenge: "Bearer"}
}

func tokenKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func wellFormedToken(t string) bool {
	if len(t) > maxTokenLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		if t[i] <= 0x20 || t[i] >= 0x7f {
			return false
		}
	}
	return true
}

// SetURLCheck registers a check every endpoint found through discovery
// must pass before the gateway calls it (dynamic configurations allow only
// the hosts on their route's list). Call it before serving requests.
func (a *Authorizer) SetURLCheck(f func(u string) error) { a.urlCheck = f }

// SetCacheObserver registers a function told of every token cache lookup:
// "hit", "miss" (the EHR is asked) or "collapsed" (answered by a concurrent
// lookup of the same token). Call it before serving requests.
func (a *Authorizer) SetCacheObserver(f func(result string)) { a.observer = f }

func (a *Authorizer) observe(result string) {
	if a.observer != nil {
		a.observer(result)
	}
}

// Authorize validates the request's bearer token. Failures are *authz.Error.
func (a *Authorizer) Authorize(r *http.Request) (*authz.Principal, error) {
	token := authz.BearerToken(r)
	if token == "" {
		return nil, missingToken()
	}
	if !wellFormedToken(token) {
		return nil, authz.Unauthorized("the access token is malformed", nil)
	}
	key := tokenKey(token)
	if e, ok := a.tokens.get(key, a.now()); ok {
		a.observe("hit")
		return a.decide(r, e)
	}
	v, err := a.flight(r.Context(), "token:"+key, func(ctx context.Context) (any, error) {
		if e, ok := a.tokens.get(key, a.now()); ok {
			a.observe("collapsed")
			return e, nil
		}
		a.observe("miss")
		e, fail := a.check(ctx, token)
		if fail != nil {
			return nil, fail
		}
		a.store(key, token, e)
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	return a.decide(r, v.(*tokenEntry))
}

// decide is the cached or fresh decision on a token for this request: the
// audience first, then the decision itself.
func (a *Authorizer) decide(r *http.Request, e *tokenEntry) (*authz.Principal, error) {
	if deny := a.audienceDeny(r.Context(), e.aud); deny != nil {
		return nil, deny
	}
	p, err := e.result()
	if err != nil {
		return nil, err
	}
	// A cached decision is as good as the token's exp: checked on every
	// request, whatever the cache holds.
	if err := authz.CheckExpiry(p, a.now()); err != nil {
		return nil, err
	}
	return p, nil
}

// audienceDeny checks an introspected audience. The introspection answer
// may carry none (many EHRs leave it out): nothing to compare. Otherwise
// it must name the configured audience (audience, or the route's base_url
// + "/fhir", set at provisioning) or, with none configured, the FHIR base
// of the route serving this request (authz.RouteFHIRBase); with neither
// known, the token is refused rather than taken unchecked. JWTs have their
// audience checked against the configured one when they are verified.
func (a *Authorizer) audienceDeny(ctx context.Context, aud []string) *authz.Error {
	if len(aud) == 0 {
		return nil
	}
	want := a.s.audience
	if len(want) == 0 {
		base := strings.TrimRight(authz.RouteFHIRBase(ctx), "/")
		if base == "" {
			return authz.Unauthorized("the access token names an audience (aud) and this route has none configured to compare it with", nil)
		}
		want = []string{base}
	}
	if !audienceMatches(aud, want) {
		return authz.Unauthorized("the access token was not issued for this server (aud)", nil)
	}
	return nil
}

func (e *tokenEntry) result() (*authz.Principal, error) {
	if e.deny != nil {
		d := *e.deny
		return nil, &d
	}
	p := *e.principal
	p.Scopes = slices.Clone(p.Scopes)
	return &p, nil
}

func (a *Authorizer) store(key, token string, e *tokenEntry) {
	now := a.now()
	if e.deny != nil {
		a.tokens.put(key, e, now.Add(a.s.inactiveTTL), now)
		return
	}
	exp := now.Add(a.s.cacheTTL)
	if p := e.principal; !p.Expires.IsZero() && p.Expires.Before(exp) {
		exp = p.Expires
	}
	a.tokens.put(key, e, exp, now)
	if a.callerTok != nil {
		// The patient lookup right after this needs the caller's token,
		// even when cache_ttl 0 keeps no decision.
		callerExp := exp
		if a.s.cacheTTL <= 0 {
			callerExp = now.Add(time.Minute)
			if p := e.principal; !p.Expires.IsZero() && p.Expires.Before(callerExp) {
				callerExp = p.Expires
			}
		}
		a.callerTok.put(e.principal.TokenHash, callerToken{token: token, patient: e.principal.Patient}, callerExp, now)
	}
}

// check validates token at the EHR and decides. fail is set only for
// trouble reaching the EHR (not cached).
func (a *Authorizer) check(ctx context.Context, token string) (*tokenEntry, *authz.Error) {
	hash := authz.HashToken(token)
	var c *claims
	if a.s.validation == ValidationJWT {
		var deny, fail *authz.Error
		c, deny, fail = a.checkJWT(ctx, token)
		if fail != nil {
			return nil, fail
		}
		if deny != nil {
			a.logDecision(hash, nil, deny)
			return &tokenEntry{deny: deny}, nil
		}
	} else {
		var fail *authz.Error
		if c, fail = a.introspect(ctx, token); fail != nil {
			return nil, fail
		}
		if deny := a.checkIntrospected(c); deny != nil {
			a.logDecision(hash, nil, deny)
			return &tokenEntry{deny: deny}, nil
		}
	}
	p, deny := a.principal(c, hash)
	a.logDecision(hash, p, deny)
	e := &tokenEntry{principal: p, deny: deny}
	if a.s.validation != ValidationJWT {
		e.aud = c.aud
	}
	return e, nil
}

// checkIntrospected applies the checks introspection leaves to the
// resource server: active, exp/nbf (with leeway), and iss when the
// response has it and the configuration names it. The audience is checked
// per request (audienceDeny).
func (a *Authorizer) checkIntrospected(c *claims) *authz.Error {
	now := a.now()
	switch {
	case !c.active:
		return authz.Unauthorized("the access token is not active", nil)
	case !c.exp.IsZero() && !now.Before(c.exp):
		// No leeway on exp: an authorization server answering active for
		// a token past its own exp is not believed (IG: expired tokens
		// are refused on every request).
		return authz.Unauthorized("the access token has expired", nil)
	case !c.nbf.IsZero() && now.Add(leeway).Before(c.nbf):
		return authz.Unauthorized("the access token is not valid yet", nil)
	case a.s.issuer != "" && c.iss != "" && c.iss != a.s.issuer:
		return authz.Unauthorized("the access token was issued by another authorization server", nil)
	}
	return nil
}

// principal applies the scope and patient-context rules to valid claims.
// A token with a patient in context is an App Launch token: it needs a
// patient ImagingStudy scope and never gains system access. A token
// without one is a Backend Services client: it needs a system
// ImagingStudy scope and a backend_client entry (its pre-authorized
// patients); a missing patient context is never system access on its own.
func (a *Authorizer) principal(c *claims, hash string) (*authz.Principal, *authz.Error) {
	user := c.fhirUser
	if user == "" {
		user = c.sub
	}
	p := &authz.Principal{
		Scopes:    c.scopes,
		ClientID:  c.clientID,
		User:      user,
		Expires:   a.expiresOf(c),
		TokenHash: hash,
	}
	if ref, _ := a.patientRef(c); ref == "" {
		if deny := a.backendPrincipal(c, p); deny != nil {
			return nil, deny
		}
		return p, nil
	}
	g := authz.ReadScopes(c.scopes, "patient", "ImagingStudy")
	if !g.Granted && !a.acceptedScope(c.scopes) {
		return nil, insufficientScope("patient", g.Ignored)
	}
	id, deny := a.patientOf(c)
	if deny != nil {
		return nil, deny
	}
	p.Patient, p.PatientReference = id, a.s.fhirBase+"/Patient/"+id
	if g.Granted {
		p.Modalities, p.IgnoredScopes = g.Modalities, g.Ignored
	}
	return p, nil
}

// backendPrincipal fills p for a token without patient context: a
// configured backend client with a system ImagingStudy scope, or a 403.
func (a *Authorizer) backendPrincipal(c *claims, p *authz.Principal) *authz.Error {
	g := authz.ReadScopes(c.scopes, "system", "ImagingStudy")
	if !g.Granted {
		if authz.ReadScopes(c.scopes, "patient", "ImagingStudy").Granted || a.acceptedScope(c.scopes) {
			return authz.Forbidden("the access token has no patient in context; patient scopes need one (no patient context is never system access)")
		}
		return insufficientScope("system", g.Ignored)
	}
	if len(a.s.backendClients) == 0 {
		deny := insufficientScope("patient", nil)
		deny.Message = "the access token has no patient in context, and this route does not offer SMART Backend Services: system scopes grant nothing here (no backend_client is configured)"
		return deny
	}
	bc, ok := a.s.backendClients[c.clientID]
	if !ok || c.clientID == "" {
		return authz.Forbidden("the access token has no patient in context, and its client is not a backend client of this route: its system scopes grant nothing here")
	}
	p.Backend = true
	p.Patients, p.AllPatients = slices.Clone(bc.Patients), bc.AllPatients
	p.Modalities, p.IgnoredScopes = g.Modalities, g.Ignored
	return nil
}

// insufficientScope is the 403 for a token whose scopes grant no read of
// ImagingStudy in context, naming scopes ignored for their query.
func insufficientScope(context string, ignored []string) *authz.Error {
	msg := "the access token's scopes do not allow reading imaging (" + context + "/ImagingStudy.rs or " + context + "/ImagingStudy.read needed)"
	if len(ignored) > 0 {
		msg += "; ignored for a query this server does not understand: " + strings.Join(ignored, " ")
	}
	return &authz.Error{Status: http.StatusForbidden, Code: "forbidden", Message: msg,
		Challenge: `Bearer error="insufficient_scope", error_description="` + context + `-level ImagingStudy read needed", scope="` + context + `/ImagingStudy.rs"`}
}

// expiresOf is the token's exp or, when it has none, the time cache_ttl
// from now: a token without exp is never taken to live forever. With
// cache_ttl 0 it stays unknown (zero): every request is checked at the EHR.
func (a *Authorizer) expiresOf(c *claims) time.Time {
	if !c.exp.IsZero() || a.s.cacheTTL <= 0 {
		return c.exp
	}
	return a.now().Add(a.s.cacheTTL)
}

func (a *Authorizer) acceptedScope(scopes []string) bool {
	for _, s := range a.s.acceptScopes {
		if slices.Contains(scopes, s) {
			return true
		}
	}
	return false
}

// patientOf finds the patient in context: the "patient" claim, or per
// patient_claim a fhirUser naming a Patient, or sub.
func (a *Authorizer) patientOf(c *claims) (string, *authz.Error) {
	ref, source := a.patientRef(c)
	if ref == "" {
		return "", authz.Forbidden("the access token has no patient in context; this server only grants patient-level access")
	}
	id, ok := authz.PatientIDFromReference(ref, a.s.fhirBase)
	if !ok || !fhirid.Valid(id) {
		return "", authz.Forbidden("the access token's " + source + " does not name a Patient of this EHR")
	}
	return id, nil
}

// patientRef is where the patient in context comes from, and its value
// ("" when the token has none).
func (a *Authorizer) patientRef(c *claims) (ref, source string) {
	ref, source = c.patient, "patient"
	if ref == "" {
		switch a.s.patientClaim {
		case "fhirUser":
			if namesPatient(c.fhirUser, a.s.fhirBase) {
				ref, source = c.fhirUser, "fhirUser"
			}
		case "sub":
			ref, source = c.sub, "sub"
		}
	}
	return ref, source
}

// namesPatient reports whether a fhirUser value is a Patient reference:
// "Patient/123" or "{fhirBase}/Patient/123".
func namesPatient(ref, fhirBase string) bool {
	return strings.HasPrefix(ref, "Patient/") || strings.HasPrefix(ref, fhirBase+"/Patient/")
}

func (a *Authorizer) logDecision(hash string, p *authz.Principal, deny *authz.Error) {
	if ce := a.logger.Check(zap.DebugLevel, "access token checked"); ce != nil {
		fields := []zap.Field{zap.String("token", hash), zap.String("validation", a.s.validation)}
		if deny != nil {
			fields = append(fields, zap.Int("status", deny.Status), zap.String("reason", deny.Message))
		} else {
			fields = append(fields, zap.String("client_id", p.ClientID), zap.String("patient", p.Patient),
				zap.Time("expires", p.Expires))
		}
		ce.Write(fields...)
	}
}

func failFields(fail *authz.Error) []zap.Field {
	f := []zap.Field{zap.Int("status", fail.Status), zap.String("reason", fail.Message)}
	if fail.Err != nil {
		f = append(f, zap.NamedError("error", fail.Err))
	}
	return f
}

// flight runs fn once for all concurrent callers with the same key. fn gets
// a context that keeps ctx's values but not its cancellation, so one
// caller going away does not fail the others (every EHR call inside has its
// own timeout); each caller stops waiting when its own ctx ends.
func (a *Authorizer) flight(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	detached := context.WithoutCancel(ctx)
	ch := a.group.DoChan(key, func() (any, error) { return fn(detached) })
	a.waiting.Add(1) // joined: counted only once DoChan has registered it
	defer a.waiting.Add(-1)
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, asAuthzError(r.Err)
		}
		return r.Val, nil
	case <-ctx.Done():
		return nil, transportError("authorization server", ctx.Err())
	}
}

// asAuthzError makes sure callers see an *authz.Error.
func asAuthzError(err error) *authz.Error {
	var ae *authz.Error
	if errors.As(err, &ae) {
		cp := *ae
		return &cp
	}
	return &authz.Error{Status: http.StatusBadGateway, Code: "exception", Message: "authorization failed", Err: err}
}

// Interface guards
var _ authz.Authorizer = (*Authorizer)(nil)
