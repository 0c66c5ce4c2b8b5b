package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/smart-imaging/smart_imaging/internal/upstream"
	"github.com/smart-imaging/smart_imaging/pacskey"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/dual"
)

func init() {
	caddy.RegisterModule(DualAuthz{})
}

// DualAuthz is the "smart-on-fhir-independent" authorizer (dual launch):
// the route is its own SMART authorization server, chained to the EHR's.
// It serves /oauth/authorize, /oauth/ehr-callback, /oauth/decision and
// /oauth/token under the route, publishes them in the route's
// smart-configuration, and accepts only the access tokens it issued, for
// this route. The protocol lives in authz/dual; this is the wiring.
type DualAuthz struct {
	dual.Config

	impl *dual.Server
}

// CaddyModule returns the Caddy module information.
func (DualAuthz) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.smart_imaging.authz.smart-on-fhir-independent",
		New: func() caddy.Module { return new(DualAuthz) },
	}
}

// Provision resolves placeholders ({env.…}) and builds the server. It does
// no network I/O.
func (m *DualAuthz) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	r := func(s string) string { return repl.ReplaceKnown(s, "") }
	cfg := m.Config
	for _, sec := range []struct{ name, value string }{
		{"signing_key", cfg.SigningKey}, {"private_key", cfg.PrivateKey}, {"client_secret", cfg.ClientSecret},
		{"fhir_base_url", cfg.FHIRBaseURL}, {"client_id", cfg.ClientID},
	} {
		if strings.Contains(sec.value, "{env.") && strings.TrimSpace(r(sec.value)) == "" {
			return fmt.Errorf("authz smart-on-fhir-independent: %s %s is empty: set the environment variable", sec.name, sec.value)
		}
	}
	cfg.FHIRBaseURL, cfg.ClientID, cfg.ClientSecret = r(cfg.FHIRBaseURL), r(cfg.ClientID), r(cfg.ClientSecret)
	cfg.PrivateKey, cfg.PrivateKeyAlg, cfg.PrivateKeyID = r(cfg.PrivateKey), r(cfg.PrivateKeyAlg), r(cfg.PrivateKeyID)
	cfg.SigningKey, cfg.EHRScope = r(cfg.SigningKey), r(cfg.EHRScope)
	apps := make([]dual.App, 0, len(cfg.Apps))
	for _, a := range cfg.Apps {
		a.ClientID, a.JWKSURL = r(a.ClientID), r(a.JWKSURL)
		uris := make([]string, 0, len(a.RedirectURIs))
		for _, u := range a.RedirectURIs {
			uris = append(uris, r(u))
		}
		a.RedirectURIs = uris
		apps = append(apps, a)
	}
	cfg.Apps = apps
	timeout := dual.DefaultTimeout
	if cfg.Timeout > 0 {
		timeout = time.Duration(cfg.Timeout)
	}
	client := &http.Client{Timeout: timeout, Transport: upstream.NewTransport(), CheckRedirect: upstream.NoRedirects}
	impl, err := dual.New(cfg, client, ctx.Logger())
	if err != nil {
		return fmt.Errorf("authz smart-on-fhir-independent: %w", err)
	}
	m.impl = impl
	return nil
}

// Authorize implements authz.Authorizer.
func (m *DualAuthz) Authorize(r *http.Request) (*authz.Principal, error) { return m.impl.Authorize(r) }

// PatientKeys implements authz.Authorizer.
func (m *DualAuthz) PatientKeys(ctx context.Context, p *authz.Principal) ([]pacskey.PatientKey, error) {
	return m.impl.PatientKeys(ctx, p)
}

// PatientIdentifiers implements authz.Authorizer.
func (m *DualAuthz) PatientIdentifiers(ctx context.Context, p *authz.Principal) ([]authz.Identifier, error) {
	return m.impl.PatientIdentifiers(ctx, p)
}

// EHRBaseURL is the EHR FHIR base, for matching absolute patient
// references.
func (m *DualAuthz) EHRBaseURL() string { return m.impl.FHIRBaseURL() }

// Check tests the EHR's discovery document (readiness).
func (m *DualAuthz) Check(ctx context.Context) error { return m.impl.Check(ctx) }

// routeAuthServer is implemented by authorizers that are the route's own
// SMART authorization server (dual launch): they answer the /oauth/*
// endpoints under the route and describe them for the route's public base.
type routeAuthServer interface {
	ServeOAuth(w http.ResponseWriter, r *http.Request, path, base string) bool
	RouteSMARTConfiguration(base string) map[string]any
}

// RouteSMARTConfiguration is the route's smart-configuration: its own
// /oauth/* endpoints under base, the route's public URL.
func (m *DualAuthz) RouteSMARTConfiguration(base string) map[string]any {
	return m.impl.SMARTConfiguration(base)
}

// ServeOAuth answers the route's /oauth/* endpoints.
func (m *DualAuthz) ServeOAuth(w http.ResponseWriter, r *http.Request, path, base string) bool {
	return m.impl.ServeOAuth(w, r, path, base)
}

// oauthActions are the audit actions (and metrics labels) of the /oauth/*
// endpoints a route authorization server answers.
var oauthActions = map[string]string{
	"/oauth/authorize":    "oauth_authorize",
	"/oauth/ehr-callback": "oauth_ehr_callback",
	"/oauth/decision":     "oauth_decision",
	"/oauth/token":        "oauth_token",
}

// serveDual answers the endpoints of a route whose authorizer is its own
// authorization server (smart-on-fhir-independent): /oauth/* (audited and
// counted like search and retrieve) and the route's smart-configuration.
// It reports false for every other request.
func (h *Handler) serveDual(w http.ResponseWriter, r *http.Request, path string) bool {
	as, ok := h.authorizer.(routeAuthServer)
	if !ok {
		return false
	}
	base := h.publicBase(r)
	if action, ok := oauthActions[path]; ok {
		_ = h.withAudit(w, r, action, func(w http.ResponseWriter, r *http.Request) error {
			as.ServeOAuth(&oauthOutcomeWriter{ResponseWriter: w, rec: auditFrom(r)}, r, path, base)
			return nil
		})
		return true
	}
	if path == "/fhir/.well-known/smart-configuration" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_ = json.NewEncoder(w).Encode(as.RouteSMARTConfiguration(base))
		return true
	}
	return false
}

// oauthOutcomeWriter records in the audit record whether an OAuth endpoint
// refused, before the status is committed (and counted): an error status,
// or a redirect carrying an OAuth error back to the app. The reason is the
// OAuth error code only; never the URL (it holds codes and state).
type oauthOutcomeWriter struct {
	http.ResponseWriter
	rec *auditRecord
}

var oauthErrorCode = regexp.MustCompile(`^[a-z_]{1,40}$`)

func (o *oauthOutcomeWriter) WriteHeader(code int) {
	reason := ""
	switch {
	case code >= 400:
		reason = http.StatusText(code)
	case code >= 300 && code < 400:
		if u, err := url.Parse(o.Header().Get("Location")); err == nil {
			if e := u.Query().Get("error"); e != "" {
				if !oauthErrorCode.MatchString(e) {
					e = "error"
				}
				reason = "redirected to the app with " + e
			}
		}
	}
	if reason != "" {
		o.rec.allowed = false
		o.rec.reason = reason
	}
	o.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (o *oauthOutcomeWriter) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// UnmarshalCaddyfile reads:
//
//	authz smart-on-fhir-independent {
//		fhir_base_url   <EHR FHIR base>
//		client_id       <the gateway's client id at the EHR>
//		client_secret   <secret> | private_key <JWK/PEM file or inline>  (neither: public client, PKCE)
//		private_key_alg <alg>
//		private_key_id  <kid>
//		signing_key     <base64 of ≥ 32 random bytes, shared by every replica>
//		token_ttl       <duration, default 1h, at most 12h>
//		ehr_scope       <scope>...
//		mrn_system      <system>...
//		timeout         <duration>
//		app <client_id> {
//			redirect_uri <exact uri>...
//			jwks_url     <url>   # confidential (private_key_jwt); absent: public + PKCE
//		}
//	}
func (m *DualAuthz) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "smart-on-fhir-independent"
	if d.NextArg() {
		return d.ArgErr()
	}
	return m.subdirectives().parseBlock(d, "authz smart-on-fhir-independent")
}

// subdirectives is the table of the block's options.
func (m *DualAuthz) subdirectives() subdirectives {
	c := &m.Config
	return subdirectives{
		{"fhir_base_url", oneArg(&c.FHIRBaseURL)},
		{"client_id", oneArg(&c.ClientID)},
		{"client_secret", oneArg(&c.ClientSecret)},
		{"private_key", oneArg(&c.PrivateKey)},
		{"private_key_alg", oneArg(&c.PrivateKeyAlg)},
		{"private_key_id", oneArg(&c.PrivateKeyID)},
		{"signing_key", oneArg(&c.SigningKey)},
		{"token_ttl", positiveDuration(&c.TokenTTL)},
		{"ehr_scope", joinedArgs(&c.EHRScope)},
		{"mrn_system", someArgs(&c.MRNSystem)},
		{"timeout", positiveDuration(&c.Timeout)},
		{"app", func(d *caddyfile.Dispenser) error {
			var app dual.App
			if err := oneArg(&app.ClientID)(d); err != nil {
				return err
			}
			if err := appSubdirectives(&app).parseBlock(d, "app"); err != nil {
				return err
			}
			c.Apps = append(c.Apps, app)
			return nil
		}},
	}
}

// appSubdirectives is the table of an app block's options.
func appSubdirectives(app *dual.App) subdirectives {
	return subdirectives{
		{"redirect_uri", someArgs(&app.RedirectURIs)},
		{"jwks_url", oneArg(&app.JWKSURL)},
	}
}

// Interface guards.
var (
	_ AuthzModule           = (*DualAuthz)(nil)
	_ caddy.Provisioner     = (*DualAuthz)(nil)
	_ caddyfile.Unmarshaler = (*DualAuthz)(nil)
	_ fhirBaser             = (*DualAuthz)(nil)
	_ routeAuthServer       = (*DualAuthz)(nil)
)
