package smart

import (
	"context"
	"slices"
)

// Capability strings of the SMART Imaging Access IG.
const (
	CapabilityImagingAccess = "smart-imaging-access"
	CapabilityAppLaunch     = "http://fhir.org/argonaut/smart-imaging/capabilities/app-launch"
)

// SMARTConfiguration is the imaging server's own
// .well-known/smart-configuration: the EHR's authorization server (the same
// one that issues the tokens this route accepts), with the imaging
// capabilities added, so a SMART client can discover the imaging server on
// its own.
func (a *Authorizer) SMARTConfiguration(ctx context.Context) (map[string]any, error) {
	doc, fail := a.discover(ctx)
	if fail != nil {
		return nil, fail
	}
	caps := []string{CapabilityImagingAccess, CapabilityAppLaunch}
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
	grants := doc.GrantTypesSupported
	if len(grants) == 0 {
		grants = []string{"authorization_code"}
	}
	setList("grant_types_supported", grants)
	setList("scopes_supported", doc.ScopesSupported)
	setList("response_types_supported", doc.ResponseTypesSupported)
	setList("code_challenge_methods_supported", doc.CodeChallengeMethodsSupported)
	setList("token_endpoint_auth_methods_supported", doc.TokenEndpointAuthMethodsSupported)
	return out, nil
}

// Check fetches the EHR's smart-configuration again, for readiness probes.
func (a *Authorizer) Check(ctx context.Context) error {
	a.invalidateDiscovery()
	if _, fail := a.discover(ctx); fail != nil {
		return fail
	}
	return nil
}
