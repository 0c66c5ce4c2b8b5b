// Package dual is the dual-launch authorizer ("smart-on-fhir-independent"):
// the gateway as its own SMART authorization server, chained to the EHR's.
//
// An app that has launched against the EHR does a second, separate SMART
// launch against the imaging route. The gateway validates the app (only
// registered clients, only their exact redirect URIs, PKCE S256 for public
// apps, private_key_jwt for confidential ones), then rides on the user's
// EHR session: it sends the browser to the EHR's authorization endpoint
// with prompt=none (its own client_id, PKCE and state), exchanges the code,
// verifies the id_token against the EHR's JWKS, reads the patient in
// context, and asks the user to approve imaging access on a consent page.
// Approval yields a single-use authorization code (60 s) and, at the token
// endpoint, an access token this route accepts for FHIR search and WADO-RS.
//
// The server keeps no shared state: the browser's flow state lives in a
// sealed cookie, codes and access tokens are sealed with keys derived from
// signing_key (see seal.go), so any replica holding the key validates
// them. What a stateless design cannot do is remember, across replicas,
// that a code was already redeemed: each replica refuses a code it has
// seen, but the same code presented to another replica within its 60 s
// life is honoured there once more (README, "Dual launch").
package dual

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Defaults.
const (
	// DefaultTokenTTL is the life of an issued access token.
	DefaultTokenTTL = time.Hour
	// MaxTokenTTL bounds token_ttl: the tokens cannot be revoked.
	MaxTokenTTL = 12 * time.Hour
	// CodeTTL is the life of an authorization code.
	CodeTTL = 60 * time.Second
	// SessionTTL is how long a browser may take from /oauth/authorize to
	// the decision.
	SessionTTL = 10 * time.Minute
	// DefaultTimeout bounds each call to the EHR.
	DefaultTimeout = 10 * time.Second
	// DefaultEHRScope is what the gateway asks of the EHR for itself: the
	// user's identity and a patient it may read.
	DefaultEHRScope = "openid fhirUser launch/patient patient/Patient.rs"
)

// App is a client allowed to launch against the imaging route.
type App struct {
	// ClientID identifies the app.
	ClientID string `json:"client_id"`
	// RedirectURIs are the exact redirect URIs the app may use.
	RedirectURIs []string `json:"redirect_uris"`
	// JWKSURL, when set, makes the app confidential: it authenticates at
	// the token endpoint with private_key_jwt signed by a key published
	// there. Empty: a public app, which must use PKCE S256.
	JWKSURL string `json:"jwks_url,omitempty"`
}

// Config configures the dual-launch authorizer.
type Config struct {
	// FHIRBaseURL is the EHR's FHIR base; its smart-configuration is
	// discovered on first use.
	FHIRBaseURL string `json:"fhir_base_url,omitempty"`
	// ClientID is the gateway's client at the EHR.
	ClientID string `json:"client_id,omitempty"`
	// ClientSecret authenticates the gateway at the EHR with
	// client_secret_basic.
	ClientSecret string `json:"client_secret,omitempty"`
	// PrivateKey authenticates the gateway with private_key_jwt (inline JWK
	// or PEM, or a file). Neither secret nor key: a public client (PKCE).
	PrivateKey string `json:"private_key,omitempty"`
	// PrivateKeyAlg and PrivateKeyID as for smart-on-fhir.
	PrivateKeyAlg string `json:"private_key_alg,omitempty"`
	PrivateKeyID  string `json:"private_key_id,omitempty"`
	// SigningKey is the base64 of at least 32 random bytes protecting the
	// session cookies, codes and access tokens; every replica shares it.
	SigningKey string `json:"signing_key,omitempty"`
	// TokenTTL is the life of issued access tokens. Default 1h, at most 12h.
	TokenTTL caddy.Duration `json:"token_ttl,omitempty"`
	// Apps are the apps allowed to launch.
	Apps []App `json:"apps,omitempty"`
	// MRNSystem lists the identifier systems used as PACS PatientID; empty:
	// identifiers of type MR.
	MRNSystem []string `json:"mrn_system,omitempty"`
	// EHRScope is the scope the gateway asks of the EHR.
	EHRScope string `json:"ehr_scope,omitempty"`
	// Timeout bounds each call to the EHR.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// settings is a checked Config.
type settings struct {
	fhirBase     string
	clientID     string
	clientSecret string
	privateKey   string
	keyAlg       string
	keyID        string
	secret       []byte
	tokenTTL     time.Duration
	apps         map[string]App
	mrnSystems   []string
	ehrScope     string
	timeout      time.Duration
}

func (c Config) settings() (*settings, error) {
	s := &settings{
		clientID: strings.TrimSpace(c.ClientID), clientSecret: c.ClientSecret, privateKey: c.PrivateKey,
		keyAlg: c.PrivateKeyAlg, keyID: c.PrivateKeyID, mrnSystems: c.MRNSystem,
		tokenTTL: time.Duration(c.TokenTTL), timeout: time.Duration(c.Timeout), apps: map[string]App{},
		ehrScope: strings.Join(strings.Fields(c.EHRScope), " "),
	}
	u, err := url.Parse(strings.TrimRight(c.FHIRBaseURL, "/"))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("fhir_base_url %q: want the EHR's absolute http(s) FHIR base", c.FHIRBaseURL)
	}
	s.fhirBase = u.String()
	if s.clientID == "" {
		return nil, errors.New("client_id: the gateway's client id at the EHR is required")
	}
	if c.ClientSecret != "" && c.PrivateKey != "" {
		return nil, errors.New("client_secret and private_key: choose one")
	}
	s.secret, err = base64.StdEncoding.DecodeString(strings.TrimSpace(c.SigningKey))
	if err != nil {
		if s.secret, err = base64.RawURLEncoding.DecodeString(strings.TrimSpace(c.SigningKey)); err != nil {
			return nil, errors.New("signing_key: not base64")
		}
	}
	if len(s.secret) < 32 {
		return nil, fmt.Errorf("signing_key: want base64 of at least 32 random bytes (openssl rand -base64 32), got %d bytes", len(s.secret))
	}
	if s.tokenTTL == 0 {
		s.tokenTTL = DefaultTokenTTL
	}
	if s.tokenTTL < time.Minute || s.tokenTTL > MaxTokenTTL {
		return nil, fmt.Errorf("token_ttl: want 1m to %s", MaxTokenTTL)
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.ehrScope == "" {
		s.ehrScope = DefaultEHRScope
	}
	if len(c.Apps) == 0 {
		return nil, errors.New("app: register at least one app (app <client_id> { redirect_uri … })")
	}
	for _, a := range c.Apps {
		if a.ClientID == "" {
			return nil, errors.New("app: client_id is empty")
		}
		if _, dup := s.apps[a.ClientID]; dup {
			return nil, fmt.Errorf("app %s: registered twice", a.ClientID)
		}
		if len(a.RedirectURIs) == 0 {
			return nil, fmt.Errorf("app %s: at least one redirect_uri is required", a.ClientID)
		}
		for _, r := range a.RedirectURIs {
			ru, err := url.Parse(r)
			if err != nil || (ru.Scheme != "https" && ru.Scheme != "http") || ru.Host == "" || ru.Fragment != "" {
				return nil, fmt.Errorf("app %s: redirect_uri %q: want an absolute http(s) URL without fragment", a.ClientID, r)
			}
		}
		if a.JWKSURL != "" {
			ju, err := url.Parse(a.JWKSURL)
			if err != nil || (ju.Scheme != "https" && ju.Scheme != "http") || ju.Host == "" {
				return nil, fmt.Errorf("app %s: jwks_url %q: want an absolute http(s) URL", a.ClientID, a.JWKSURL)
			}
		}
		a.RedirectURIs = slices.Clone(a.RedirectURIs)
		s.apps[a.ClientID] = a
	}
	return s, nil
}
