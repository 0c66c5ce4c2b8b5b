// Package testehr is a test EHR that runs inside a test binary: an
// httptest.Server on 127.0.0.1 speaking the protocols a SMART imaging
// gateway meets at a real EHR. It serves SMART discovery, an OAuth token
// endpoint for SMART Backend Services (private_key_jwt client assertions
// verified against the registered client's public keys, or
// client_secret_basic), RFC 7662 token introspection, a JWKS with the keys
// that sign JWT access tokens, and FHIR Patient reads.
//
// Tests mint app access tokens with IssueToken (opaque tokens known to the
// introspection endpoint, or signed JWTs), count the calls each endpoint
// received, and make the EHR fail on purpose: Close (down), Stall (slow
// until released) and Garble (answers garbage).
package testehr

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// Endpoint names one of the EHR's endpoints, for counters and fault knobs.
type Endpoint int

// The EHR's endpoints.
const (
	Discovery Endpoint = iota
	Token
	Introspect
	JWKS
	Patient
	Authorize
	numEndpoints
)

func (e Endpoint) String() string {
	switch e {
	case Discovery:
		return "discovery"
	case Token:
		return "token"
	case Introspect:
		return "introspect"
	case JWKS:
		return "jwks"
	case Patient:
		return "patient"
	case Authorize:
		return "authorize"
	}
	return fmt.Sprintf("endpoint(%d)", int(e))
}

// TokenFormat says how IssueToken encodes an access token.
type TokenFormat int

const (
	// Opaque tokens are random strings the introspection endpoint knows.
	Opaque TokenFormat = iota
	// JWT tokens are signed with one of the EHR's keys (published at the
	// JWKS endpoint); the introspection endpoint knows them too.
	JWT
)

// TokenSpec describes an app access token to mint. Zero fields get
// defaults: Exp one hour from now, Iss the EHR's issuer, ClientID "app",
// Scope "launch/patient patient/ImagingStudy.rs", Alg RS256.
type TokenSpec struct {
	// Patient is the patient in context ("123"); left out of the
	// introspection response and the JWT when OmitPatient is set.
	Patient string
	// Scope is the space-separated granted scope.
	Scope string
	// ClientID is the app's client id.
	ClientID string
	// Sub is the token subject (the end user); defaults to FHIRUser, then
	// to "user-1".
	Sub string
	// FHIRUser is the end user as a FHIR reference ("Patient/123",
	// "https://ehr/fhir/Practitioner/9").
	FHIRUser string
	// Exp is the expiry.
	Exp time.Time
	// Nbf, when set, is the not-before time (JWT only).
	Nbf time.Time
	// Aud is the audience; empty leaves it out.
	Aud []string
	// Iss is the issuer.
	Iss string
	// OmitPatient leaves the patient context out, as some EHRs do.
	OmitPatient bool
	// Format is Opaque or JWT.
	Format TokenFormat
	// Alg is the JWT signature algorithm, RS256 or ES256.
	Alg jwa.SignatureAlgorithm
	// Extra claims are added to the JWT and the introspection response.
	Extra map[string]any
	// ActiveAfterExp makes introspection keep answering active: true, with
	// the past exp, after the token expired (a misbehaving authorization
	// server).
	ActiveAfterExp bool
	// OmitExp leaves exp out of the introspection response.
	OmitExp bool
}

// Client is an OAuth client registered at the EHR (the gateway).
type Client struct {
	// ID is the client_id.
	ID string
	// Secret enables client_secret_basic when not empty.
	Secret string
	// Keys are the client's public keys for private_key_jwt.
	Keys jwk.Set
	// RedirectURIs are the exact redirect URIs the client may use at the
	// authorization endpoint (authorization code grant).
	RedirectURIs []string
}

// Identifier is a FHIR Patient.identifier.
type Identifier struct {
	System string `json:"system,omitempty"`
	Value  string `json:"value,omitempty"`
	// TypeCode is a code of http://terminology.hl7.org/CodeSystem/v2-0203
	// ("MR") put in type.coding; empty leaves type out.
	TypeCode string `json:"-"`
	// Use is the identifier use ("usual", "old").
	Use string `json:"use,omitempty"`
}

type issued struct {
	spec    TokenSpec
	backend bool // a token issued by /token to a registered client
	revoked bool
}

type fault struct {
	status int
	body   string
}

// EHR is a running test EHR.
type EHR struct {
	srv    *httptest.Server
	issuer string

	// BackendTokenTTL is the expires_in of tokens from the token endpoint
	// (default 300 s). Set it before the first token request.
	BackendTokenTTL time.Duration

	calls [numEndpoints]atomic.Int64

	mu            sync.Mutex
	tokens        map[string]*issued
	clients       map[string]Client
	jtis          map[string]bool
	patients      map[string][]byte
	signingKeys   []jwk.Key // private
	stalls        [numEndpoints]chan struct{}
	faults        [numEndpoints]*fault
	discovery     map[string]any // overrides
	codeFlow      codeFlow
	lastTokenAuth string
	closed        bool
}

// New starts a test EHR on 127.0.0.1; it is closed when the test ends.
func New(tb testing.TB) *EHR {
	tb.Helper()
	e := &EHR{
		tokens:   map[string]*issued{},
		clients:  map[string]Client{},
		jtis:     map[string]bool{},
		patients: map[string][]byte{},
	}
	e.signingKeys = []jwk.Key{
		GenerateKey(tb, jwa.RS256, "ehr-rs-1"),
		GenerateKey(tb, jwa.ES256, "ehr-es-1"),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fhir/.well-known/smart-configuration", e.wrap(Discovery, e.serveDiscovery))
	mux.HandleFunc("POST /auth/token", e.wrap(Token, e.serveToken))
	mux.HandleFunc("POST /auth/introspect", e.wrap(Introspect, e.serveIntrospect))
	mux.HandleFunc("GET /auth/jwks", e.wrap(JWKS, e.serveJWKS))
	mux.HandleFunc("GET /fhir/Patient/{id}", e.wrap(Patient, e.servePatient))
	e.routeCodeFlow(mux)
	e.srv = httptest.NewServer(e.browserCORS(mux))
	e.issuer = e.srv.URL + "/auth"
	tb.Cleanup(e.Close)
	return e
}

// URL is the server root ("http://127.0.0.1:port").
func (e *EHR) URL() string { return e.srv.URL }

// FHIRBase is the FHIR base URL; discovery lives under it.
func (e *EHR) FHIRBase() string { return e.srv.URL + "/fhir" }

// Issuer is the issuer of the tokens the EHR mints.
func (e *EHR) Issuer() string { return e.issuer }

// TokenEndpoint is the OAuth token endpoint.
func (e *EHR) TokenEndpoint() string { return e.srv.URL + "/auth/token" }

// IntrospectionEndpoint is the RFC 7662 endpoint.
func (e *EHR) IntrospectionEndpoint() string { return e.srv.URL + "/auth/introspect" }

// JWKSURL is where the EHR publishes the public keys of its JWT tokens.
func (e *EHR) JWKSURL() string { return e.srv.URL + "/auth/jwks" }

// Calls reports how many requests an endpoint has received.
func (e *EHR) Calls(ep Endpoint) int64 { return e.calls[ep].Load() }

// Close stops the server: later connections are refused. Stalled requests
// are released first.
func (e *EHR) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	for i, ch := range e.stalls {
		if ch != nil {
			close(ch)
			e.stalls[i] = nil
		}
	}
	e.mu.Unlock()
	e.srv.CloseClientConnections()
	e.srv.Close()
}

// Stall makes requests to ep wait until release is called (or the client
// gives up). The count of calls still increases when a request arrives.
func (e *EHR) Stall(ep Endpoint) (release func()) {
	ch := make(chan struct{})
	e.mu.Lock()
	e.stalls[ep] = ch
	e.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			if e.stalls[ep] == ch {
				e.stalls[ep] = nil
			}
			e.mu.Unlock()
			close(ch)
		})
	}
}

// Garble makes ep answer status and body (as application/json) instead of
// doing its job, until Restore.
func (e *EHR) Garble(ep Endpoint, status int, body string) {
	e.mu.Lock()
	e.faults[ep] = &fault{status: status, body: body}
	e.mu.Unlock()
}

// Restore undoes Garble.
func (e *EHR) Restore(ep Endpoint) {
	e.mu.Lock()
	e.faults[ep] = nil
	e.mu.Unlock()
}

// SetDiscovery overrides a field of the smart-configuration document; a nil
// value removes the field.
func (e *EHR) SetDiscovery(field string, value any) {
	e.mu.Lock()
	if e.discovery == nil {
		e.discovery = map[string]any{}
	}
	e.discovery[field] = value
	e.mu.Unlock()
}

// RegisterClient registers (or replaces) an OAuth client.
func (e *EHR) RegisterClient(c Client) {
	e.mu.Lock()
	e.clients[c.ID] = c
	e.mu.Unlock()
}

// AddPatient stores a Patient resource with the given identifiers.
func (e *EHR) AddPatient(id string, ids ...Identifier) {
	type coding struct {
		System string `json:"system"`
		Code   string `json:"code"`
	}
	type typ struct {
		Coding []coding `json:"coding"`
	}
	type ident struct {
		Use    string `json:"use,omitempty"`
		Type   *typ   `json:"type,omitempty"`
		System string `json:"system,omitempty"`
		Value  string `json:"value,omitempty"`
	}
	res := struct {
		ResourceType string  `json:"resourceType"`
		ID           string  `json:"id"`
		Identifier   []ident `json:"identifier,omitempty"`
	}{ResourceType: "Patient", ID: id}
	for _, i := range ids {
		x := ident{Use: i.Use, System: i.System, Value: i.Value}
		if i.TypeCode != "" {
			x.Type = &typ{Coding: []coding{{System: "http://terminology.hl7.org/CodeSystem/v2-0203", Code: i.TypeCode}}}
		}
		res.Identifier = append(res.Identifier, x)
	}
	b, err := json.Marshal(res)
	if err != nil {
		panic(err)
	}
	e.SetPatientJSON(id, b)
}

// SetPatientJSON stores a raw Patient body served at Patient/{id}.
func (e *EHR) SetPatientJSON(id string, body []byte) {
	e.mu.Lock()
	e.patients[id] = body
	e.mu.Unlock()
}

// LastPatientReadAuth reports which credential the last successful Patient
// read used: "backend" or "app".
func (e *EHR) LastPatientReadAuth() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastTokenAuth
}

// IssueToken mints an app access token and registers it for introspection.
func (e *EHR) IssueToken(spec TokenSpec) string {
	if spec.Exp.IsZero() {
		spec.Exp = time.Now().Add(time.Hour)
	}
	if spec.Iss == "" {
		spec.Iss = e.issuer
	}
	if spec.ClientID == "" {
		spec.ClientID = "app"
	}
	if spec.Scope == "" {
		spec.Scope = "launch/patient patient/ImagingStudy.rs"
	}
	if spec.Sub == "" {
		spec.Sub = spec.FHIRUser
		if spec.Sub == "" {
			spec.Sub = "user-1"
		}
	}
	var tok string
	switch spec.Format {
	case JWT:
		tok = e.signJWT(spec)
	default:
		tok = randomString(24)
	}
	e.mu.Lock()
	e.tokens[tok] = &issued{spec: spec}
	e.mu.Unlock()
	return tok
}

// Revoke makes a token inactive.
func (e *EHR) Revoke(token string) {
	e.mu.Lock()
	if t, ok := e.tokens[token]; ok {
		t.revoked = true
	}
	e.mu.Unlock()
}

// RevokeBackendTokens revokes every token issued by the token endpoint.
func (e *EHR) RevokeBackendTokens() {
	e.mu.Lock()
	for _, t := range e.tokens {
		if t.backend {
			t.revoked = true
		}
	}
	e.mu.Unlock()
}

// RotateSigningKeys replaces the JWT signing keys (new kids); tokens signed
// with the old keys no longer verify against the published JWKS.
func (e *EHR) RotateSigningKeys(tb testing.TB) {
	tb.Helper()
	n := randomString(4)
	keys := []jwk.Key{
		GenerateKey(tb, jwa.RS256, "ehr-rs-"+n),
		GenerateKey(tb, jwa.ES256, "ehr-es-"+n),
	}
	e.mu.Lock()
	e.signingKeys = keys
	e.mu.Unlock()
}

// PublicJWKS returns the published key set.
func (e *EHR) PublicJWKS() jwk.Set {
	e.mu.Lock()
	keys := slices.Clone(e.signingKeys)
	e.mu.Unlock()
	set := jwk.NewSet()
	for _, k := range keys {
		pk, err := k.PublicKey()
		if err != nil {
			panic(err)
		}
		if err := set.AddKey(pk); err != nil {
			panic(err)
		}
	}
	return set
}

var keyCache sync.Map // alg|kid -> raw private key

// GenerateKey makes a private JWK for alg (RS256/RS384/RS512 make a 2048-bit
// RSA key, ES256/ES384/ES512 the matching curve) with kid and alg set. To
// keep tests fast the key material is remembered per (alg, kid) within the
// process: ask for another kid to get another key.
func GenerateKey(tb testing.TB, alg jwa.SignatureAlgorithm, kid string) jwk.Key {
	tb.Helper()
	cacheKey := alg.String() + "|" + kid
	raw, ok := keyCache.Load(cacheKey)
	if !ok {
		raw = generateRaw(tb, alg)
		raw, _ = keyCache.LoadOrStore(cacheKey, raw)
	}
	k, err := jwk.FromRaw(raw)
	if err != nil {
		tb.Fatalf("testehr: jwk: %v", err)
	}
	if kid != "" {
		_ = k.Set(jwk.KeyIDKey, kid)
	}
	_ = k.Set(jwk.AlgorithmKey, alg)
	return k
}

func generateRaw(tb testing.TB, alg jwa.SignatureAlgorithm) any {
	tb.Helper()
	var raw any
	var err error
	switch alg {
	case jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512:
		raw, err = rsa.GenerateKey(rand.Reader, 2048)
	case jwa.ES256:
		raw, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jwa.ES384:
		raw, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case jwa.ES512:
		raw, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	default:
		tb.Fatalf("testehr: cannot generate a key for %s", alg)
	}
	if err != nil {
		tb.Fatalf("testehr: generate key: %v", err)
	}
	return raw
}

// PublicSet returns a set holding the public halves of keys.
func PublicSet(tb testing.TB, keys ...jwk.Key) jwk.Set {
	tb.Helper()
	set := jwk.NewSet()
	for _, k := range keys {
		pk, err := k.PublicKey()
		if err != nil {
			tb.Fatalf("testehr: public key: %v", err)
		}
		if err := set.AddKey(pk); err != nil {
			tb.Fatalf("testehr: add key: %v", err)
		}
	}
	return set
}

func (e *EHR) signJWT(spec TokenSpec) string {
	alg := spec.Alg
	if alg == "" {
		alg = jwa.RS256
	}
	e.mu.Lock()
	var key jwk.Key
	for _, k := range e.signingKeys {
		if k.Algorithm() == alg {
			key = k
		}
	}
	e.mu.Unlock()
	if key == nil {
		panic("testehr: no signing key for " + alg.String())
	}
	b := jwt.NewBuilder().
		Issuer(spec.Iss).
		Subject(spec.Sub).
		Expiration(spec.Exp).
		IssuedAt(time.Now()).
		JwtID(randomString(8)).
		Claim("scope", spec.Scope).
		Claim("client_id", spec.ClientID)
	if len(spec.Aud) > 0 {
		b = b.Audience(spec.Aud)
	}
	if !spec.Nbf.IsZero() {
		b = b.NotBefore(spec.Nbf)
	}
	if spec.Patient != "" && !spec.OmitPatient {
		b = b.Claim("patient", spec.Patient)
	}
	if spec.FHIRUser != "" {
		b = b.Claim("fhirUser", spec.FHIRUser)
	}
	for k, v := range spec.Extra {
		b = b.Claim(k, v)
	}
	tok, err := b.Build()
	if err != nil {
		panic(err)
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(alg, key))
	if err != nil {
		panic(err)
	}
	return string(signed)
}

func (e *EHR) wrap(ep Endpoint, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		e.calls[ep].Add(1)
		e.mu.Lock()
		stall := e.stalls[ep]
		f := e.faults[ep]
		e.mu.Unlock()
		if stall != nil {
			select {
			case <-stall:
			case <-r.Context().Done():
				return
			}
		}
		if f != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(f.status)
			_, _ = w.Write([]byte(f.body))
			return
		}
		h(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="testehr"`)
	}
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

func (e *EHR) serveDiscovery(w http.ResponseWriter, _ *http.Request) {
	doc := map[string]any{
		"issuer":                                e.issuer,
		"jwks_uri":                              e.JWKSURL(),
		"authorization_endpoint":                e.srv.URL + "/auth/authorize",
		"token_endpoint":                        e.TokenEndpoint(),
		"introspection_endpoint":                e.IntrospectionEndpoint(),
		"token_endpoint_auth_methods_supported": []string{"private_key_jwt", "client_secret_basic"},
		"token_endpoint_auth_signing_alg_values_supported": []string{"RS384", "ES384"},
		"grant_types_supported":                            []string{"authorization_code", "client_credentials"},
		"scopes_supported":                                 []string{"openid", "fhirUser", "launch/patient", "patient/*.rs", "system/Patient.rs"},
		"response_types_supported":                         []string{"code"},
		"code_challenge_methods_supported":                 []string{"S256"},
		"capabilities": []string{"launch-ehr", "launch-standalone", "client-public",
			"client-confidential-asymmetric", "context-ehr-patient", "context-standalone-patient",
			"permission-patient", "permission-v1", "permission-v2", "sso-openid-connect"},
	}
	e.mu.Lock()
	for k, v := range e.discovery {
		if v == nil {
			delete(doc, k)
		} else {
			doc[k] = v
		}
	}
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, doc)
}

// basicAuth decodes client_secret_basic credentials (RFC 6749 §2.3.1: id
// and secret form-urlencoded before base64).
func basicAuth(r *http.Request) (id, secret string, ok bool) {
	u, p, ok := r.BasicAuth()
	if !ok {
		return "", "", false
	}
	id, err1 := url.QueryUnescape(u)
	secret, err2 := url.QueryUnescape(p)
	if err1 != nil || err2 != nil {
		return "", "", false
	}
	return id, secret, true
}

func (e *EHR) checkSecret(id, secret string) bool {
	e.mu.Lock()
	c, ok := e.clients[id]
	e.mu.Unlock()
	return ok && c.Secret != "" && subtle.ConstantTimeCompare([]byte(c.Secret), []byte(secret)) == 1
}

var assertionAlgs = []jwa.SignatureAlgorithm{jwa.RS384, jwa.ES384, jwa.RS256, jwa.ES256}

// verifyAssertion checks a private_key_jwt client assertion and returns the
// client id.
func (e *EHR) verifyAssertion(assertion string) (string, error) {
	msg, err := jws.Parse([]byte(assertion))
	if err != nil || len(msg.Signatures()) != 1 {
		return "", fmt.Errorf("client_assertion is not a compact JWS")
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	if !slices.Contains(assertionAlgs, hdr.Algorithm()) {
		return "", fmt.Errorf("client_assertion alg %q not accepted", hdr.Algorithm())
	}
	unverified, err := jwt.Parse([]byte(assertion), jwt.WithVerify(false), jwt.WithValidate(false))
	if err != nil {
		return "", fmt.Errorf("client_assertion claims: %w", err)
	}
	clientID := unverified.Issuer()
	e.mu.Lock()
	c, ok := e.clients[clientID]
	e.mu.Unlock()
	if !ok || c.Keys == nil {
		return "", fmt.Errorf("unknown client %q", clientID)
	}
	kid := hdr.KeyID()
	key, ok := c.Keys.LookupKeyID(kid)
	if !ok {
		return "", fmt.Errorf("no registered key with kid %q", kid)
	}
	tok, err := jwt.Parse([]byte(assertion),
		jwt.WithKey(hdr.Algorithm(), key),
		jwt.WithValidate(true),
		jwt.WithIssuer(clientID),
		jwt.WithSubject(clientID),
		jwt.WithAudience(e.TokenEndpoint()),
		jwt.WithRequiredClaim("exp"),
		jwt.WithRequiredClaim("jti"),
		jwt.WithAcceptableSkew(5*time.Second))
	if err != nil {
		return "", fmt.Errorf("client_assertion: %w", err)
	}
	if tok.Expiration().After(time.Now().Add(5*time.Minute + 5*time.Second)) {
		return "", fmt.Errorf("client_assertion exp is more than 5 minutes away")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.jtis[clientID+"|"+tok.JwtID()] {
		return "", fmt.Errorf("client_assertion jti reused")
	}
	e.jtis[clientID+"|"+tok.JwtID()] = true
	return clientID, nil
}

func (e *EHR) serveToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "bad form")
		return
	}
	if r.PostForm.Get("grant_type") == "authorization_code" {
		e.serveCodeGrant(w, r)
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "only client_credentials")
		return
	}
	var clientID string
	if at := r.PostForm.Get("client_assertion_type"); at != "" {
		if at != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			oauthError(w, http.StatusBadRequest, "invalid_client", "unsupported client_assertion_type")
			return
		}
		id, err := e.verifyAssertion(r.PostForm.Get("client_assertion"))
		if err != nil {
			oauthError(w, http.StatusUnauthorized, "invalid_client", err.Error())
			return
		}
		clientID = id
	} else if id, secret, ok := basicAuth(r); ok {
		if !e.checkSecret(id, secret) {
			oauthError(w, http.StatusUnauthorized, "invalid_client", "bad client credentials")
			return
		}
		clientID = id
	} else {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "no client authentication")
		return
	}
	ttl := e.BackendTokenTTL
	if ttl <= 0 {
		ttl = 300 * time.Second
	}
	scope := r.PostForm.Get("scope")
	tok := randomString(24)
	e.mu.Lock()
	e.tokens[tok] = &issued{backend: true, spec: TokenSpec{
		ClientID: clientID, Sub: clientID, Scope: scope, Exp: time.Now().Add(ttl), Iss: e.issuer,
	}}
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"token_type":   "bearer",
		"expires_in":   int(ttl / time.Second),
		"scope":        scope,
	})
}

// lookup returns the token if it is known, not revoked and not expired.
func (e *EHR) lookup(tok string) (*issued, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t, ok := e.tokens[tok]
	if !ok || t.revoked || !time.Now().Before(t.spec.Exp) && !t.spec.ActiveAfterExp {
		return nil, false
	}
	cp := *t
	return &cp, true
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

func (e *EHR) serveIntrospect(w http.ResponseWriter, r *http.Request) {
	// The caller must authenticate: a backend token or a client secret.
	authed := false
	if b := bearer(r); b != "" {
		t, ok := e.lookup(b)
		authed = ok && t.backend
	} else if id, secret, ok := basicAuth(r); ok {
		authed = e.checkSecret(id, secret)
	}
	if !authed {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		return
	}
	if err := r.ParseForm(); err != nil || r.PostForm.Get("token") == "" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "token is required")
		return
	}
	t, ok := e.lookup(r.PostForm.Get("token"))
	if !ok || t.backend {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	s := t.spec
	resp := map[string]any{
		"active":     true,
		"scope":      s.Scope,
		"client_id":  s.ClientID,
		"sub":        s.Sub,
		"iss":        s.Iss,
		"exp":        s.Exp.Unix(),
		"token_type": "Bearer",
	}
	if s.OmitExp {
		delete(resp, "exp")
	}
	if len(s.Aud) == 1 {
		resp["aud"] = s.Aud[0]
	} else if len(s.Aud) > 1 {
		resp["aud"] = s.Aud
	}
	if s.Patient != "" && !s.OmitPatient {
		resp["patient"] = s.Patient
	}
	if s.FHIRUser != "" {
		resp["fhirUser"] = s.FHIRUser
	}
	for k, v := range s.Extra {
		resp[k] = v
	}
	writeJSON(w, http.StatusOK, resp)
}

func (e *EHR) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, e.PublicJWKS())
}

func operationOutcome(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/fhir+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"resourceType": "OperationOutcome",
		"issue":        []any{map[string]string{"severity": "error", "code": code, "diagnostics": msg}},
	})
}

func (e *EHR) servePatient(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	t, ok := e.lookup(bearer(r))
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		operationOutcome(w, http.StatusUnauthorized, "login", "a valid access token is required")
		return
	}
	kind := "backend"
	if t.backend {
		if !strings.Contains(t.spec.Scope, "system/Patient.") && !strings.Contains(t.spec.Scope, "system/*.") {
			operationOutcome(w, http.StatusForbidden, "forbidden", "scope does not allow Patient reads")
			return
		}
	} else {
		kind = "app"
		if t.spec.OmitPatient || t.spec.Patient != id {
			operationOutcome(w, http.StatusForbidden, "forbidden", "the token is not bound to this patient")
			return
		}
	}
	e.mu.Lock()
	body, found := e.patients[id]
	if found {
		e.lastTokenAuth = kind
	}
	e.mu.Unlock()
	if !found {
		operationOutcome(w, http.StatusNotFound, "not-found", "no such patient")
		return
	}
	w.Header().Set("Content-Type", "application/fhir+json")
	_, _ = w.Write(body)
}

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
