package smart

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
)

// discoveryTTL is how long a fetched smart-configuration is reused. A
// failed call to a discovered endpoint drops it sooner.
const discoveryTTL = time.Hour

// smartConfiguration is the part of {fhir_base}/.well-known/smart-configuration
// the gateway reads.
type smartConfiguration struct {
	Issuer                string   `json:"issuer"`
	JWKSURI               string   `json:"jwks_uri"`
	AuthorizationEndpoint string   `json:"authorization_endpoint"`
	TokenEndpoint         string   `json:"token_endpoint"`
	IntrospectionEndpoint string   `json:"introspection_endpoint"`
	Capabilities          []string `json:"capabilities"`

	// Republished in the imaging server's own smart-configuration.
	RevocationEndpoint                string   `json:"revocation_endpoint"`
	ManagementEndpoint                string   `json:"management_endpoint"`
	RegistrationEndpoint              string   `json:"registration_endpoint"`
	GrantTypesSupported               []string `json:"grant_types_supported"`
	ScopesSupported                   []string `json:"scopes_supported"`
	ResponseTypesSupported            []string `json:"response_types_supported"`
	CodeChallengeMethodsSupported     []string `json:"code_challenge_methods_supported"`
	TokenEndpointAuthMethodsSupported []string `json:"token_endpoint_auth_methods_supported"`
	TokenEndpointAuthSigningAlgs      []string `json:"token_endpoint_auth_signing_alg_values_supported"`
}

type discoveryCache struct {
	mu      sync.Mutex
	doc     *smartConfiguration
	expires time.Time
}

// endpoint names, as in the smart-configuration and the Caddyfile.
const (
	epIntrospection = "introspection_endpoint"
	epToken         = "token_endpoint"
	epJWKS          = "jwks_uri"
)

// endpoint returns the URL of an EHR endpoint: the configured one, else the
// discovered one. discovered reports the latter, so that callers can drop
// the discovery document when the endpoint fails.
func (a *Authorizer) endpoint(ctx context.Context, which string) (u string, discovered bool, fail *authz.Error) {
	switch which {
	case epIntrospection:
		u = a.s.introspectionURL
	case epToken:
		u = a.s.tokenURL
	case epJWKS:
		u = a.s.jwksURL
	}
	if u != "" {
		return u, false, nil
	}
	doc, fail := a.discover(ctx)
	if fail != nil {
		return "", false, fail
	}
	switch which {
	case epIntrospection:
		u = doc.IntrospectionEndpoint
	case epToken:
		u = doc.TokenEndpoint
	case epJWKS:
		u = doc.JWKSURI
	}
	if u == "" {
		return "", false, badGateway("smart-configuration", fmt.Sprintf("lists no %s (set %s in the configuration)", which, configName(which)), nil)
	}
	if _, err := checkURL(which, u); err != nil {
		return "", false, badGateway("smart-configuration", "lists an unusable "+which, err)
	}
	if a.urlCheck != nil {
		if err := a.urlCheck(u); err != nil {
			return "", false, badGateway("smart-configuration", "lists a "+which+" this route may not call", err)
		}
	}
	return u, true, nil
}

func configName(which string) string {
	if which == epJWKS {
		return "jwks_url"
	}
	return which
}

// discover returns the smart-configuration, fetching it when it is not
// cached. Failures are not cached: the next request tries again.
func (a *Authorizer) discover(ctx context.Context) (*smartConfiguration, *authz.Error) {
	if doc := a.cachedDiscovery(); doc != nil {
		return doc, nil
	}
	v, err := a.flight(ctx, "discovery", func(ctx context.Context) (any, error) {
		if doc := a.cachedDiscovery(); doc != nil {
			return doc, nil
		}
		doc, fail := a.fetchDiscovery(ctx)
		if fail != nil {
			a.logger.Warn("smart-configuration fetch failed", failFields(fail)...)
			return nil, fail
		}
		a.disc.mu.Lock()
		a.disc.doc, a.disc.expires = doc, a.now().Add(discoveryTTL)
		a.disc.mu.Unlock()
		return doc, nil
	})
	if err != nil {
		return nil, asAuthzError(err)
	}
	return v.(*smartConfiguration), nil
}

func (a *Authorizer) cachedDiscovery() *smartConfiguration {
	a.disc.mu.Lock()
	defer a.disc.mu.Unlock()
	if a.disc.doc != nil && a.now().Before(a.disc.expires) {
		return a.disc.doc
	}
	return nil
}

// invalidateDiscovery drops the cached smart-configuration, so the next
// request fetches it again (endpoints may have moved).
func (a *Authorizer) invalidateDiscovery() {
	a.disc.mu.Lock()
	a.disc.doc = nil
	a.disc.mu.Unlock()
}

func (a *Authorizer) fetchDiscovery(ctx context.Context) (*smartConfiguration, *authz.Error) {
	const what = "smart-configuration"
	req, err := http.NewRequest(http.MethodGet, a.s.fhirBase+"/.well-known/smart-configuration", nil)
	if err != nil {
		return nil, badGateway(what, "URL is invalid", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, fail := a.do(ctx, what, req)
	if fail != nil {
		return nil, fail
	}
	if resp.status != http.StatusOK {
		return nil, statusError(what, resp.status, resp.header)
	}
	var doc smartConfiguration
	if err := json.Unmarshal(resp.body, &doc); err != nil {
		return nil, badGateway(what, "is not a JSON smart-configuration", err)
	}
	return &doc, nil
}
