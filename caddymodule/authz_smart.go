package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/smart"
	"github.com/smart-imaging/smart_imaging/internal/upstream"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

func init() {
	caddy.RegisterModule(SmartAuthz{})
}

// SmartAuthz is the "smart-on-fhir" authorizer: it accepts the access
// tokens an EHR's SMART authorization server issued for a patient (checked
// by RFC 7662 introspection or locally as JWTs against the EHR's JWKS),
// and maps the patient to PACS keys through the EHR's FHIR Patient
// resource. Endpoints are discovered at
// {fhir_base_url}/.well-known/smart-configuration on first use. String
// options may hold global placeholders such as {env.SMART_CLIENT_SECRET},
// resolved when the configuration loads.
type SmartAuthz struct {
	smart.Config

	// ctx and resolved (the Config with placeholders resolved) are kept
	// from Provision for bindRoute.
	ctx      caddy.Context
	resolved smart.Config
	impl     *smart.Authorizer
}

// CaddyModule returns the Caddy module information.
func (SmartAuthz) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.smart_imaging.authz.smart-on-fhir",
		New: func() caddy.Module { return new(SmartAuthz) },
	}
}

// Provision resolves placeholders. It does no network I/O (caddy validate
// runs it): discovery, tokens and keys are fetched on first use. The
// authorizer is built by bindRoute, which the smart_imaging handler calls
// next with the route's public FHIR base.
func (m *SmartAuthz) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	// ReplaceKnown leaves anything that is not a placeholder alone (an
	// inline JWK is a JSON object, braces and all).
	r := func(s string) string { return repl.ReplaceKnown(s, "") }
	rs := func(in []string) []string {
		out := make([]string, 0, len(in))
		for _, s := range in {
			if s = r(s); s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	cfg := m.Config
	for _, sec := range []struct{ name, value string }{
		{"private_key", cfg.PrivateKey}, {"client_secret", cfg.ClientSecret}, {"fhir_base_url", cfg.FHIRBaseURL}, {"client_id", cfg.ClientID},
	} {
		if strings.Contains(sec.value, "{env.") && strings.TrimSpace(r(sec.value)) == "" {
			return fmt.Errorf("authz smart-on-fhir: %s %s is empty: set the environment variable", sec.name, sec.value)
		}
	}
	cfg.FHIRBaseURL = r(cfg.FHIRBaseURL)
	cfg.ClientID = r(cfg.ClientID)
	cfg.ClientSecret = r(cfg.ClientSecret)
	cfg.PrivateKey = r(cfg.PrivateKey)
	cfg.PrivateKeyAlg = r(cfg.PrivateKeyAlg)
	cfg.PrivateKeyID = r(cfg.PrivateKeyID)
	cfg.Scope = r(cfg.Scope)
	cfg.IntrospectionEndpoint = r(cfg.IntrospectionEndpoint)
	cfg.TokenEndpoint = r(cfg.TokenEndpoint)
	cfg.JWKSURL = r(cfg.JWKSURL)
	cfg.Issuer = r(cfg.Issuer)
	cfg.Audience = rs(cfg.Audience)
	cfg.AcceptScopes = rs(cfg.AcceptScopes)
	cfg.MRNSystem = rs(cfg.MRNSystem)
	m.ctx, m.resolved = ctx, cfg
	return nil
}

// bindRoute builds the authorizer for the route whose public FHIR base
// (base_url + "/fhir") is routeFHIRBase, or "" when the route has no
// base_url. With no audience configured, routeFHIRBase is the expected
// token audience; without either, an introspected aud must name the
// route's FHIR base derived from each request (the handler passes it in
// the request's context).
func (m *SmartAuthz) bindRoute(routeFHIRBase string) error {
	cfg := m.resolved
	if len(cfg.Audience) == 0 && routeFHIRBase != "" {
		cfg.Audience = []string{routeFHIRBase}
	}
	client := &http.Client{Timeout: smart.DefaultTimeout, Transport: upstream.NewTransport(), CheckRedirect: upstream.NoRedirects}
	if cfg.Timeout > 0 {
		client.Timeout = time.Duration(cfg.Timeout)
	}
	impl, err := smart.New(m.ctx, cfg, client, m.ctx.Logger())
	if errors.Is(err, smart.ErrNoAudience) {
		err = fmt.Errorf("%w: set audience, or base_url on the smart_imaging route", err)
	}
	if err != nil {
		return fmt.Errorf("authz smart-on-fhir: %w", err)
	}
	impl.SetCacheObserver(func(result string) { AuthzCacheLookups.WithLabelValues(result).Inc() })
	m.impl = impl
	return nil
}

// Authorize implements authz.Authorizer.
func (m *SmartAuthz) Authorize(r *http.Request) (*authz.Principal, error) {
	return m.impl.Authorize(r)
}

// PatientKeys implements authz.Authorizer.
func (m *SmartAuthz) PatientKeys(ctx context.Context, p *authz.Principal) ([]pacskey.PatientKey, error) {
	return m.impl.PatientKeys(ctx, p)
}

// PatientIdentifiers implements authz.Authorizer.
func (m *SmartAuthz) PatientIdentifiers(ctx context.Context, p *authz.Principal) ([]authz.Identifier, error) {
	return m.impl.PatientIdentifiers(ctx, p)
}

// EHRBaseURL is the EHR FHIR base, for matching absolute patient
// references.
func (m *SmartAuthz) EHRBaseURL() string { return m.impl.FHIRBaseURL() }

// UnmarshalCaddyfile reads:
//
//	authz smart-on-fhir {
//		fhir_base_url          <url>
//		client_id              <id>
//		private_key            <path to JWK/JWKS/PEM file | inline JWK | {env.VAR}>
//		private_key_alg        RS384|ES384|RS256|RS512|ES256|ES512
//		private_key_id         <kid>
//		client_secret          <secret, e.g. {env.SMART_CLIENT_SECRET}>
//		scope                  <scope>...
//		validation             introspection|jwt|auto
//		introspection_endpoint <url>
//		token_endpoint         <url>
//		jwks_url               <url>
//		audience               <aud>...
//		issuer                 <iss>
//		patient_claim          patient|fhirUser|sub
//		accept_scopes          <scope>...
//		mrn_system             <system>...
//		patient_lookup_token   backend|caller
//		cache_ttl              <duration>   (0: introspect every request)
//		inactive_cache_ttl     <duration>
//		cache_size             <n>
//		timeout                <duration>
//		backend_client <client_id> {
//			patients <FHIR Patient id>...   # or: all_patients
//		}
//	}
//
// fhir_base_url may also be given inline: authz smart-on-fhir <url> { … }.
func (m *SmartAuthz) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "smart-on-fhir"
	if d.NextArg() {
		m.FHIRBaseURL = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return m.subdirectives().parseBlock(d, "authz smart-on-fhir")
}

// subdirectives is the table of the block's options.
func (m *SmartAuthz) subdirectives() subdirectives {
	c := &m.Config
	return subdirectives{
		{"fhir_base_url", oneArg(&c.FHIRBaseURL)},
		{"client_id", oneArg(&c.ClientID)},
		{"private_key", oneArg(&c.PrivateKey)},
		{"private_key_alg", oneArg(&c.PrivateKeyAlg)},
		{"private_key_id", oneArg(&c.PrivateKeyID)},
		{"client_secret", oneArg(&c.ClientSecret)},
		{"scope", joinedArgs(&c.Scope)},
		{"validation", oneOf(&c.Validation, smart.ValidationIntrospection, smart.ValidationJWT, smart.ValidationAuto)},
		{"introspection_endpoint", oneArg(&c.IntrospectionEndpoint)},
		{"token_endpoint", oneArg(&c.TokenEndpoint)},
		{"jwks_url", oneArg(&c.JWKSURL)},
		{"audience", someArgs(&c.Audience)},
		{"issuer", oneArg(&c.Issuer)},
		{"patient_claim", oneOf(&c.PatientClaim, "patient", "fhirUser", "sub")},
		{"accept_scopes", someArgs(&c.AcceptScopes)},
		{"mrn_system", someArgs(&c.MRNSystem)},
		{"patient_lookup_token", oneOf(&c.PatientLookupToken, smart.LookupTokenBackend, smart.LookupTokenCaller)},
		{"cache_ttl", func(d *caddyfile.Dispenser) error { return parseCacheTTL(d, c) }},
		{"inactive_cache_ttl", positiveDuration(&c.InactiveCacheTTL)},
		{"cache_size", positiveInt(&c.CacheSize)},
		{"timeout", positiveDuration(&c.Timeout)},
		{"backend_client", func(d *caddyfile.Dispenser) error { return parseBackendClient(d, c) }},
	}
}

// parseCacheTTL reads cache_ttl <duration>: zero is allowed (no token
// cache: every request is checked at the EHR, for immediate revocation).
func parseCacheTTL(d *caddyfile.Dispenser, c *smart.Config) error {
	args := d.RemainingArgs()
	if len(args) != 1 {
		return d.ArgErr()
	}
	v, err := caddy.ParseDuration(args[0])
	if err != nil || v < 0 {
		return d.Errf("cache_ttl: %q is not a duration of zero or more", args[0])
	}
	ttl := caddy.Duration(v)
	c.CacheTTL = &ttl
	return nil
}

// parseBackendClient reads one SMART Backend Services client and whom it
// may see:
//
//	backend_client <client_id> {
//		patients <FHIR Patient id>...
//		all_patients
//	}
func parseBackendClient(d *caddyfile.Dispenser, c *smart.Config) error {
	args := d.RemainingArgs()
	if len(args) != 1 {
		return d.ArgErr()
	}
	bc := smart.BackendClient{ClientID: args[0]}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "patients":
			ids := d.RemainingArgs()
			if len(ids) == 0 {
				return d.ArgErr()
			}
			bc.Patients = append(bc.Patients, ids...)
		case "all_patients":
			if d.NextArg() {
				return d.ArgErr()
			}
			bc.AllPatients = true
		default:
			return d.Errf("unrecognized backend_client option '%s' (known: patients, all_patients)", opt)
		}
	}
	if bc.AllPatients == (len(bc.Patients) > 0) {
		return d.Errf("backend_client %s: give either patients <id>... or all_patients", bc.ClientID)
	}
	c.BackendClients = append(c.BackendClients, bc)
	return nil
}

// SMARTConfiguration is the route's own smart-configuration document.
func (m *SmartAuthz) SMARTConfiguration(ctx context.Context) (map[string]any, error) {
	return m.impl.SMARTConfiguration(ctx)
}

// Check tests the EHR's discovery document (readiness).
func (m *SmartAuthz) Check(ctx context.Context) error { return m.impl.Check(ctx) }

// restrictURLs makes every discovered EHR endpoint pass check.
func (m *SmartAuthz) restrictURLs(check func(u string) error) { m.impl.SetURLCheck(check) }

// Interface guards
var (
	_ caddy.Module          = (*SmartAuthz)(nil)
	_ caddy.Provisioner     = (*SmartAuthz)(nil)
	_ caddyfile.Unmarshaler = (*SmartAuthz)(nil)
	_ AuthzModule           = (*SmartAuthz)(nil)
	_ fhirBaser             = (*SmartAuthz)(nil)
	_ smartConfigurer       = (*SmartAuthz)(nil)
	_ checker               = (*SmartAuthz)(nil)
	_ urlRestricter         = (*SmartAuthz)(nil)
	_ routeBinder           = (*SmartAuthz)(nil)
)
