package smart

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/smart-imaging/smart_imaging/internal/fhirid"
)

// ErrNoAudience is New's error for jwt validation with no audience to
// compare tokens with.
var ErrNoAudience = errors.New("jwt validation needs an audience (the route's FHIR base URL by default)")

// Validation modes.
const (
	// ValidationIntrospection asks the EHR's RFC 7662 endpoint about every
	// token (once per cache lifetime). Revocation is noticed.
	ValidationIntrospection = "introspection"
	// ValidationJWT verifies JWT access tokens locally against the EHR's
	// JWKS. Revocation is not noticed before the token expires.
	ValidationJWT = "jwt"
	// ValidationAuto is jwt when jwks_url is set, introspection otherwise.
	ValidationAuto = "auto"
)

// Patient lookup credentials.
const (
	// LookupTokenBackend reads Patient resources with the gateway's own
	// SMART Backend Services token.
	LookupTokenBackend = "backend"
	// LookupTokenCaller reads Patient resources with the caller's access
	// token (EHRs that will not give the gateway its own credentials).
	LookupTokenCaller = "caller"
)

// Defaults.
const (
	DefaultScope            = "system/Patient.read"
	DefaultCacheTTL         = 5 * time.Minute
	DefaultInactiveCacheTTL = 10 * time.Second
	DefaultCacheSize        = 10000
	DefaultTimeout          = 10 * time.Second
)

// Config configures the smart-on-fhir authorizer. Every field is optional
// except fhir_base_url; endpoints come from the EHR's
// {fhir_base_url}/.well-known/smart-configuration unless set here.
type Config struct {
	// FHIRBaseURL is the EHR's FHIR base ("https://ehr.example.org/fhir").
	// Discovery is fetched under it, Patient reads go to it, and
	// ImagingStudy.subject references are built on it.
	FHIRBaseURL string `json:"fhir_base_url,omitempty"`

	// ClientID is the gateway's client id at the EHR (SMART Backend
	// Services), used to introspect tokens and read Patient resources.
	ClientID string `json:"client_id,omitempty"`
	// ClientSecret authenticates the gateway with HTTP Basic
	// (client_secret_basic) when no private key is configured. Use a
	// placeholder such as {env.SMART_CLIENT_SECRET}.
	ClientSecret string `json:"client_secret,omitempty"`
	// PrivateKey is the gateway's private key for private_key_jwt client
	// assertions: a path to a JWK, JWKS or PEM file, or an inline JWK/PEM.
	PrivateKey string `json:"private_key,omitempty"`
	// PrivateKeyAlg is the client assertion algorithm: RS384 or ES384 (the
	// SMART ones), or RS256/RS512/ES256/ES512. Default: the key's alg,
	// else RS384 for RSA and ES256/ES384/ES512 by EC curve.
	PrivateKeyAlg string `json:"private_key_alg,omitempty"`
	// PrivateKeyID is the kid put in the client assertion header. Default:
	// the JWK's kid, else its RFC 7638 SHA-256 thumbprint.
	PrivateKeyID string `json:"private_key_id,omitempty"`
	// Scope is requested for the gateway's own token. Default
	// "system/Patient.read".
	Scope string `json:"scope,omitempty"`

	// IntrospectionEndpoint overrides the discovered introspection_endpoint
	// (Epic's discovery, for one, does not list it).
	IntrospectionEndpoint string `json:"introspection_endpoint,omitempty"`
	// TokenEndpoint overrides the discovered token_endpoint.
	TokenEndpoint string `json:"token_endpoint,omitempty"`
	// JWKSURL is where the EHR publishes the keys that sign its JWT access
	// tokens. Setting it selects jwt validation in auto mode; in jwt mode
	// without it the discovered jwks_uri is used.
	JWKSURL string `json:"jwks_url,omitempty"`

	// Validation is "introspection", "jwt" or "auto" (default: jwt when
	// jwks_url is set, introspection otherwise).
	Validation string `json:"validation,omitempty"`
	// Audience lists acceptable token audiences. Default (set by the Caddy
	// glue): the route's base_url + "/fhir". Required for jwt validation.
	// With introspection, an answer that carries aud must name one of
	// them or, when there are none, the route's FHIR base the request
	// carries (authz.RouteFHIRBase); an answer without aud is not compared.
	Audience []string `json:"audience,omitempty"`
	// Issuer is the expected token issuer. For jwt validation the default
	// is the issuer in the smart-configuration; with introspection it is
	// checked when set and the response carries iss.
	Issuer string `json:"issuer,omitempty"`
	// PatientClaim names where the patient in context comes from when the
	// token has no "patient": "patient" (no fallback, the default),
	// "fhirUser" (when it names a Patient) or "sub".
	PatientClaim string `json:"patient_claim,omitempty"`
	// AcceptScopes are extra scopes that grant imaging access in place of a
	// patient-level ImagingStudy read (e.g. "patient/DiagnosticReport.read"
	// for EHRs without ImagingStudy scopes). The token still needs a
	// patient in context.
	AcceptScopes []string `json:"accept_scopes,omitempty"`

	// MRNSystem lists the identifier systems whose values are the PACS
	// PatientID. Unset: identifiers of type MR (v2-0203).
	MRNSystem []string `json:"mrn_system,omitempty"`
	// PatientLookupToken is "backend" (default) or "caller": whose token
	// reads the Patient resource.
	PatientLookupToken string `json:"patient_lookup_token,omitempty"`

	// CacheTTL bounds how long a token's validation (and a patient's PACS
	// keys) is reused; never beyond the token's exp. It is also how long a
	// token whose introspection carries no exp is taken to live. Unset:
	// 5m. Zero: every request introspects its token (concurrent requests
	// with one token still share one call), so a revoked token stops
	// working at once; patient keys are then cached for the default 5m.
	CacheTTL *caddy.Duration `json:"cache_ttl,omitempty"`
	// InactiveCacheTTL is how long a refusal (inactive, expired, foreign
	// token) is remembered. Default 10s.
	InactiveCacheTTL caddy.Duration `json:"inactive_cache_ttl,omitempty"`
	// CacheSize bounds the number of cached tokens (and patients). Default
	// 10000; the oldest entry is evicted first.
	CacheSize int `json:"cache_size,omitempty"`
	// Timeout bounds each call to the EHR. Default 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// BackendClients are the SMART Backend Services clients this route
	// serves, each with the patients it may see. A token with a system
	// ImagingStudy scope and no patient in context is served only when
	// its client_id is listed here; none listed: system scopes grant
	// nothing.
	BackendClients []BackendClient `json:"backend_clients,omitempty"`
}

// BackendClient is one SMART Backend Services client's pre-authorized
// access: introspection tells who the client is, not what it may see.
type BackendClient struct {
	// ClientID is the client's client_id at the EHR.
	ClientID string `json:"client_id"`
	// Patients are the FHIR Patient ids it may see.
	Patients []string `json:"patients,omitempty"`
	// AllPatients lets it see any patient (it must still name one on
	// every search).
	AllPatients bool `json:"all_patients,omitempty"`
}

// signingKey is the gateway's private key for client assertions.
type signingKey struct {
	key jwk.Key
	alg jwa.SignatureAlgorithm
}

// settings is a Config checked and with defaults applied.
type settings struct {
	fhirBase         string
	clientID         string
	clientSecret     string
	key              *signingKey
	scope            string
	introspectionURL string
	tokenURL         string
	jwksURL          string
	validation       string
	audience         []string
	issuer           string
	patientClaim     string
	acceptScopes     []string
	mrnSystems       []string
	lookupToken      string
	cacheTTL         time.Duration
	inactiveTTL      time.Duration
	cacheSize        int
	timeout          time.Duration
	backendClients   map[string]BackendClient
}

func checkURL(name, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("%s must be an absolute http(s) URL, got %q", name, s)
	}
	if u.User != nil {
		return "", fmt.Errorf("%s must not carry credentials", name)
	}
	return s, nil
}

func (c Config) settings() (*settings, error) {
	s := &settings{
		clientID:     c.ClientID,
		clientSecret: c.ClientSecret,
		scope:        strings.TrimSpace(c.Scope),
		issuer:       c.Issuer,
		acceptScopes: c.AcceptScopes,
		cacheTTL:     DefaultCacheTTL,
		inactiveTTL:  time.Duration(c.InactiveCacheTTL),
		cacheSize:    c.CacheSize,
		timeout:      time.Duration(c.Timeout),
	}
	var err error
	if c.FHIRBaseURL == "" {
		return nil, errors.New("fhir_base_url is required")
	}
	if s.fhirBase, err = checkURL("fhir_base_url", strings.TrimRight(c.FHIRBaseURL, "/")); err != nil {
		return nil, err
	}
	if s.introspectionURL, err = checkURL("introspection_endpoint", c.IntrospectionEndpoint); err != nil {
		return nil, err
	}
	if s.tokenURL, err = checkURL("token_endpoint", c.TokenEndpoint); err != nil {
		return nil, err
	}
	if s.jwksURL, err = checkURL("jwks_url", c.JWKSURL); err != nil {
		return nil, err
	}
	for _, a := range c.Audience {
		if a = strings.TrimSpace(a); a != "" {
			// "https://x/fhir" and "https://x/fhir/" name one server.
			s.audience = append(s.audience, a)
			if t := strings.TrimRight(a, "/"); t != a {
				s.audience = append(s.audience, t)
			}
		}
	}
	if s.scope == "" {
		s.scope = DefaultScope
	}
	if c.CacheTTL != nil {
		if *c.CacheTTL < 0 {
			return nil, errors.New("cache_ttl must not be negative")
		}
		s.cacheTTL = time.Duration(*c.CacheTTL)
	}
	if s.inactiveTTL <= 0 {
		s.inactiveTTL = DefaultInactiveCacheTTL
	}
	if s.cacheSize <= 0 {
		s.cacheSize = DefaultCacheSize
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}

	switch c.Validation {
	case "", ValidationAuto:
		s.validation = ValidationIntrospection
		if s.jwksURL != "" {
			s.validation = ValidationJWT
		}
	case ValidationIntrospection, ValidationJWT:
		s.validation = c.Validation
	default:
		return nil, fmt.Errorf("validation must be %q, %q or %q, got %q",
			ValidationIntrospection, ValidationJWT, ValidationAuto, c.Validation)
	}
	if s.validation == ValidationJWT && len(s.audience) == 0 {
		return nil, ErrNoAudience
	}

	switch c.PatientClaim {
	case "", "patient":
		s.patientClaim = "patient"
	case "fhirUser", "sub":
		s.patientClaim = c.PatientClaim
	default:
		return nil, fmt.Errorf(`patient_claim must be "patient", "fhirUser" or "sub", got %q`, c.PatientClaim)
	}

	switch c.PatientLookupToken {
	case "", LookupTokenBackend:
		s.lookupToken = LookupTokenBackend
	case LookupTokenCaller:
		s.lookupToken = LookupTokenCaller
	default:
		return nil, fmt.Errorf(`patient_lookup_token must be "backend" or "caller", got %q`, c.PatientLookupToken)
	}

	if s.backendClients, err = checkBackendClients(c.BackendClients); err != nil {
		return nil, err
	}

	for _, sys := range c.MRNSystem {
		if sys = strings.TrimSpace(sys); sys != "" {
			s.mrnSystems = append(s.mrnSystems, sys)
		}
	}

	if c.PrivateKey != "" {
		if s.key, err = loadPrivateKey(c.PrivateKey, c.PrivateKeyAlg, c.PrivateKeyID); err != nil {
			return nil, fmt.Errorf("private_key: %w", err)
		}
	} else if c.PrivateKeyAlg != "" || c.PrivateKeyID != "" {
		return nil, errors.New("private_key_alg and private_key_id need private_key")
	}
	hasCreds := s.key != nil || s.clientSecret != ""
	if hasCreds && s.clientID == "" {
		return nil, errors.New("client_id is required with private_key or client_secret")
	}
	if s.validation == ValidationIntrospection && !hasCreds {
		return nil, errors.New("introspection needs the gateway's credentials: private_key or client_secret (with client_id)")
	}
	if s.lookupToken == LookupTokenBackend && !hasCreds {
		return nil, errors.New(`reading Patient resources needs the gateway's credentials (private_key or client_secret), or patient_lookup_token "caller"`)
	}
	return s, nil
}

// loadPrivateKey reads the gateway's private key: an inline JWK or PEM, or
// a path to a file holding a JWK, a JWKS (its first private key) or a PEM.
func loadPrivateKey(src, algName, kid string) (*signingKey, error) {
	data := []byte(strings.TrimSpace(src))
	if !looksInline(data) {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("reading key file: %w", err)
		}
		data = []byte(strings.TrimSpace(string(b)))
	}
	key, err := parsePrivateKey(data)
	if err != nil {
		return nil, err
	}
	if priv, err := jwk.IsPrivateKey(key); err != nil || !priv {
		return nil, errors.New("the key is not an RSA or EC private key")
	}
	alg, err := chooseAlg(key, algName)
	if err != nil {
		return nil, err
	}
	if kid != "" {
		if err := key.Set(jwk.KeyIDKey, kid); err != nil {
			return nil, fmt.Errorf("setting kid: %w", err)
		}
	} else if key.KeyID() == "" {
		tp, err := key.Thumbprint(crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("key thumbprint: %w", err)
		}
		if err := key.Set(jwk.KeyIDKey, base64.RawURLEncoding.EncodeToString(tp)); err != nil {
			return nil, fmt.Errorf("setting kid: %w", err)
		}
	}
	// The alg header comes from the signing call; keep the key's own alg
	// consistent so jwx does not disagree with it.
	if err := key.Set(jwk.AlgorithmKey, alg); err != nil {
		return nil, fmt.Errorf("setting alg: %w", err)
	}
	return &signingKey{key: key, alg: alg}, nil
}

func looksInline(data []byte) bool {
	s := string(data)
	return strings.HasPrefix(s, "{") || strings.HasPrefix(s, "-----BEGIN")
}

func parsePrivateKey(data []byte) (jwk.Key, error) {
	if strings.HasPrefix(string(data), "-----BEGIN") {
		k, err := jwk.ParseKey(data, jwk.WithPEM(true))
		if err != nil {
			return nil, fmt.Errorf("parsing PEM key: %w", err)
		}
		return k, nil
	}
	set, err := jwk.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("parsing JWK: %w", err)
	}
	for i := 0; i < set.Len(); i++ {
		k, _ := set.Key(i)
		if priv, err := jwk.IsPrivateKey(k); err == nil && priv {
			return k, nil
		}
	}
	return nil, errors.New("no RSA or EC private key in the JWK")
}

var assertionAlgs = map[jwa.SignatureAlgorithm]bool{
	jwa.RS256: true, jwa.RS384: true, jwa.RS512: true,
	jwa.ES256: true, jwa.ES384: true, jwa.ES512: true,
}

func chooseAlg(key jwk.Key, name string) (jwa.SignatureAlgorithm, error) {
	var alg jwa.SignatureAlgorithm
	switch {
	case name != "":
		alg = jwa.SignatureAlgorithm(name)
	case key.Algorithm().String() != "":
		alg = jwa.SignatureAlgorithm(key.Algorithm().String())
	default:
		switch k := key.(type) {
		case jwk.RSAPrivateKey:
			alg = jwa.RS384
		case jwk.ECDSAPrivateKey:
			switch k.Crv() {
			case jwa.P256:
				alg = jwa.ES256
			case jwa.P384:
				alg = jwa.ES384
			case jwa.P521:
				alg = jwa.ES512
			}
		}
	}
	if !assertionAlgs[alg] {
		return "", fmt.Errorf("algorithm %q is not one of RS384, ES384, RS256, RS512, ES256, ES512", alg)
	}
	if !keyFitsAlg(key, alg) {
		return "", fmt.Errorf("algorithm %s does not fit a %s key", alg, key.KeyType())
	}
	return alg, nil
}

// keyFitsAlg reports whether key (public or private) can make or check a
// signature with alg: RSA for RS*/PS*, EC on the matching curve for ES*.
func keyFitsAlg(key jwk.Key, alg jwa.SignatureAlgorithm) bool {
	switch alg {
	case jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512:
		return key.KeyType() == jwa.RSA
	case jwa.ES256, jwa.ES384, jwa.ES512:
		var raw ecdsa.PublicKey
		pk, err := jwk.PublicKeyOf(key)
		if err != nil || pk.KeyType() != jwa.EC || pk.Raw(&raw) != nil {
			return false
		}
		want := map[jwa.SignatureAlgorithm]elliptic.Curve{
			jwa.ES256: elliptic.P256(), jwa.ES384: elliptic.P384(), jwa.ES512: elliptic.P521(),
		}[alg]
		return raw.Curve == want
	}
	return false
}

// patientTTL is how long a patient's PACS keys are cached: cache_ttl, or
// the default when cache_ttl 0 turns the token cache off (revocation
// concerns tokens, not a patient's identifiers).
func (s *settings) patientTTL() time.Duration {
	if s.cacheTTL <= 0 {
		return DefaultCacheTTL
	}
	return s.cacheTTL
}

// checkBackendClients indexes the backend clients by client_id: each
// named once, with patients (valid FHIR ids) or all_patients, not both.
func checkBackendClients(list []BackendClient) (map[string]BackendClient, error) {
	if len(list) == 0 {
		return nil, nil
	}
	m := make(map[string]BackendClient, len(list))
	for _, bc := range list {
		if bc.ClientID == "" {
			return nil, errors.New("backend_client: client_id is required")
		}
		if _, dup := m[bc.ClientID]; dup {
			return nil, fmt.Errorf("backend_client %q is configured twice", bc.ClientID)
		}
		if bc.AllPatients == (len(bc.Patients) > 0) {
			return nil, fmt.Errorf("backend_client %q needs either patients <id>... or all_patients", bc.ClientID)
		}
		for _, id := range bc.Patients {
			if !fhirid.Valid(id) {
				return nil, fmt.Errorf("backend_client %q: %q is not a FHIR Patient id", bc.ClientID, id)
			}
		}
		bc.Patients = slices.Clone(bc.Patients)
		m[bc.ClientID] = bc
	}
	return m, nil
}
