package smart

import (
	"context"
	"slices"
)

// Capability strings of the SMART Imaging Access IG.
const (
	CapabilityImagingAccess = "smart-imaging-access"
	CapabilityAppLaunch     = "http://fhir.org/argonaut/smart-imaging/capabilities/app-launch"
	CapabilityBackend       = "http://fhir.org/argonaut/smart-imaging/capabilities/backend-services"
)

// SMARTConfiguration is the imaging server's own
// .well-known/smart-configuration: the EHR's authorization server (the same
// one that issues the tokens this route accepts), with the imaging
// capabilities added, so a SMART client can discover the imaging server on
// its own. App Launch is always offered (authorization_code listed);
// Backend Services only where a backend_client is configured
// (client_credentials, private_key_jwt and system/ImagingStudy.rs listed,
// as the IG asks).
func (a *Authorizer) SMARTConfiguration(ctx context.Context) (map[string]any, error) {
	doc, fail := a.discover(ctx)
	if fail != nil {
		return nil, fail
	}
	backend := len(a.s.backendClients) > 0
	caps := []string{CapabilityImagingAccess, CapabilityAppLaunch}
	if backend {
		caps = append(caps, CapabilityBackend)
	}
	for _, c := range doc.Capabilities {
		if !slices.Contains(caps, c) {
			caps = append(caps, c)
		}
	}
	out := map[string]any{"capabilities": caps}
	set := func(k, v string) {
		if v != "" {
			out[k] = v
		}
	}
	setList := func(k string, v []string) {
		if len(v) > 0 {
			out[k] = v
		}
	}
	set("issuer", doc.Issuer)
	set("jwks_uri", doc.JWKSURI)
	set("authorization_endpoint", doc.AuthorizationEndpoint)
	set("token_endpoint", doc.TokenEndpoint)
	set("introspection_endpoint", doc.IntrospectionEndpoint)
	set("revocation_endpoint", doc.RevocationEndpoint)
	set("management_endpoint", doc.ManagementEndpoint)
	set("registration_endpoint", doc.RegistrationEndpoint)
	grants := withAll(doc.GrantTypesSupported, "authorization_code")
	scopes := doc.ScopesSupported
	authMethods := doc.TokenEndpointAuthMethodsSupported
	signingAlgs := doc.TokenEndpointAuthSigningAlgs
	if backend {
		grants = withAll(grants, "client_credentials")
		authMethods = withAll(authMethods, "private_key_jwt")
		signingAlgs = withAll(signingAlgs, "RS384", "ES384")
		scopes = withAll(scopes, "system/ImagingStudy.rs")
	}
	setList("grant_types_supported", grants)
	setList("scopes_supported", scopes)
	setList("response_types_supported", doc.ResponseTypesSupported)
	setList("code_challenge_methods_supported", doc.CodeChallengeMethodsSupported)
	setList("token_endpoint_auth_methods_supported", authMethods)
	setList("token_endpoint_auth_signing_alg_values_supported", signingAlgs)
	return out, nil
}

// withAll returns list with each of add appended unless present (a copy).
func withAll(list []string, add ...string) []string {
	out := slices.Clone(list)
	for _, v := range add {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// Check fetches the EHR's smart-configuration again, for readiness probes.
func (a *Authorizer) Check(ctx context.Context) error {
	a.invalidateDiscovery()
	if _, fail := a.discover(ctx); fail != nil {
		return fail
	}
	return nil
}
