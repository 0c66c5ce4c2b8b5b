package smart

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/smart-imaging/smart_imaging/authz"
)

// leeway is the clock skew allowed on exp and nbf.
const leeway = 30 * time.Second

// jwksRefreshGap is the least time between two JWKS fetches that the
// gateway forces (unknown kid, failed fetch); the jwk.Cache also refreshes
// on its own schedule.
const jwksRefreshGap = 10 * time.Second

// jwtAlgs are the signature algorithms accepted on access tokens: only
// asymmetric ones. "none" and HMAC (which a public key could be abused to
// forge) are never accepted.
var jwtAlgs = map[jwa.SignatureAlgorithm]bool{
	jwa.RS256: true, jwa.RS384: true, jwa.RS512: true,
	jwa.PS256: true, jwa.PS384: true, jwa.PS512: true,
	jwa.ES256: true, jwa.ES384: true, jwa.ES512: true,
}

type jwksState struct {
	mu         sync.Mutex
	registered map[string]bool
	fetched    map[string]bool         // fetched successfully at least once
	last       map[string]time.Time    // last forced fetch
	lastFail   map[string]*authz.Error // its failure, if it failed
}

// checkJWT verifies a JWT access token against the EHR's JWKS. deny is a
// refusal of the token; fail is trouble reaching the EHR.
func (a *Authorizer) checkJWT(ctx context.Context, token string) (c *claims, deny, fail *authz.Error) {
	if strings.Count(token, ".") != 2 {
		return nil, authz.Unauthorized("the access token is not a JWT", nil), nil
	}
	msg, err := jws.Parse([]byte(token))
	if err != nil || len(msg.Signatures()) != 1 {
		return nil, authz.Unauthorized("the access token is not a signed JWT", err), nil
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	alg := hdr.Algorithm()
	if !jwtAlgs[alg] {
		return nil, authz.Unauthorized("the access token is signed with an algorithm this server does not accept", nil), nil
	}
	jwksURL, _, fail := a.endpoint(ctx, epJWKS)
	if fail != nil {
		return nil, nil, fail
	}
	issuer := a.s.issuer
	if issuer == "" {
		doc, fail := a.discover(ctx)
		if fail != nil {
			return nil, nil, fail
		}
		if issuer = doc.Issuer; issuer == "" {
			return nil, nil, badGateway("smart-configuration", "names no issuer (set issuer in the configuration)", nil)
		}
	}
	set, fail := a.keySet(ctx, jwksURL, false)
	if fail != nil {
		return nil, nil, fail
	}
	keys := candidateKeys(set, hdr.KeyID(), alg)
	if len(keys) == 0 {
		// Perhaps the EHR rotated its keys: fetch the JWKS again (rate
		// limited, so unknown kids cannot make us hammer the EHR).
		if set, fail = a.keySet(ctx, jwksURL, true); fail != nil {
			return nil, nil, fail
		}
		if keys = candidateKeys(set, hdr.KeyID(), alg); len(keys) == 0 {
			return nil, authz.Unauthorized("the access token is signed with a key the EHR does not publish", nil), nil
		}
	}
	provider := jws.KeyProviderFunc(func(_ context.Context, sink jws.KeySink, _ *jws.Signature, _ *jws.Message) error {
		for _, k := range keys {
			sink.Key(alg, k)
		}
		return nil
	})
	tok, err := jwt.Parse([]byte(token),
		jwt.WithKeyProvider(provider),
		jwt.WithValidate(true),
		jwt.WithClock(jwt.ClockFunc(a.now)),
		jwt.WithAcceptableSkew(leeway),
		jwt.WithIssuer(issuer),
		jwt.WithRequiredClaim("exp"))
	if err != nil {
		return nil, jwtRefusal(err), nil
	}
	if !audienceMatches(tok.Audience(), a.s.audience) {
		return nil, authz.Unauthorized("the access token was not issued for this server (aud)", nil), nil
	}
	c, err = jwtClaims(tok)
	if err != nil {
		return nil, authz.Unauthorized("the access token has malformed claims", err), nil
	}
	return c, nil, nil
}

func jwtRefusal(err error) *authz.Error {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired()):
		return authz.Unauthorized("the access token has expired", err)
	case errors.Is(err, jwt.ErrTokenNotYetValid()):
		return authz.Unauthorized("the access token is not valid yet", err)
	case errors.Is(err, jwt.ErrInvalidIssuer()):
		return authz.Unauthorized("the access token was issued by another authorization server", err)
	case errors.Is(err, jwt.ErrRequiredClaim()):
		return authz.Unauthorized("the access token has no expiry", err)
	case errors.Is(err, jwt.ErrInvalidIssuedAt()):
		return authz.Unauthorized("the access token was issued in the future", err)
	}
	return authz.Unauthorized("the access token's signature does not verify", err)
}

// candidateKeys are the keys of set that may have made a signature with alg
// and kid: matching kid (when the token names one), a signing key, of the
// algorithm's type and curve, and with that alg when the key names one.
func candidateKeys(set jwk.Set, kid string, alg jwa.SignatureAlgorithm) []jwk.Key {
	var out []jwk.Key
	for i := 0; i < set.Len(); i++ {
		k, ok := set.Key(i)
		if !ok {
			continue
		}
		if kid != "" && k.KeyID() != kid {
			continue
		}
		if u := k.KeyUsage(); u != "" && u != "sig" {
			continue
		}
		if ka := k.Algorithm().String(); ka != "" && ka != alg.String() {
			continue
		}
		if !keyFitsAlg(k, alg) {
			continue
		}
		if pk, err := jwk.PublicKeyOf(k); err == nil {
			out = append(out, pk)
		}
	}
	return out
}

func audienceMatches(got, want []string) bool {
	for _, g := range got {
		for _, w := range want {
			if g == w || strings.TrimRight(g, "/") == w {
				return true
			}
		}
	}
	return false
}

// jwtClaims reads SMART claims from a verified token: scope (a string, or
// an array as "scp"), patient, fhirUser, client_id (or azp), sub.
func jwtClaims(tok jwt.Token) (*claims, error) {
	c := &claims{active: true, sub: tok.Subject(), iss: tok.Issuer(), exp: tok.Expiration(),
		nbf: tok.NotBefore(), aud: tok.Audience()}
	pc := tok.PrivateClaims()
	for _, name := range []string{"scope", "scp"} {
		switch v := pc[name].(type) {
		case nil:
			continue
		case string:
			c.scopes = strings.Fields(v)
		case []any:
			for _, s := range v {
				str, ok := s.(string)
				if !ok {
					return nil, fmt.Errorf("%s holds a non-string", name)
				}
				c.scopes = append(c.scopes, strings.Fields(str)...)
			}
		default:
			return nil, fmt.Errorf("%s is neither a string nor a list", name)
		}
		break
	}
	for name, dst := range map[string]*string{"patient": &c.patient, "fhirUser": &c.fhirUser, "client_id": &c.clientID} {
		switch v := pc[name].(type) {
		case nil:
		case string:
			*dst = v
		default:
			return nil, fmt.Errorf("%s is not a string", name)
		}
	}
	if c.clientID == "" {
		if azp, ok := pc["azp"].(string); ok {
			c.clientID = azp
		}
	}
	return c, nil
}

func (a *Authorizer) registerJWKS(u string) error {
	a.jwksState.mu.Lock()
	defer a.jwksState.mu.Unlock()
	if a.jwksState.registered[u] {
		return nil
	}
	if err := a.jwks.Register(u, jwk.WithHTTPClient(a.jwksClient), jwk.WithMinRefreshInterval(15*time.Minute)); err != nil {
		return fmt.Errorf("registering JWKS URL: %w", err)
	}
	a.jwksState.registered[u] = true
	return nil
}

// keySet returns the EHR's JWKS from the jwk.Cache. With refresh set, or
// when it has never been fetched successfully, it fetches it now, at most
// once per jwksRefreshGap (concurrent callers share one fetch); within the
// gap a failed fetch is reported again without a new request.
func (a *Authorizer) keySet(ctx context.Context, u string, refresh bool) (jwk.Set, *authz.Error) {
	if err := a.registerJWKS(u); err != nil {
		return nil, badGateway("JWKS", "URL cannot be used", err)
	}
	a.jwksState.mu.Lock()
	fetched := a.jwksState.fetched[u]
	a.jwksState.mu.Unlock()
	if fetched && !refresh {
		set, err := a.jwks.Get(ctx, u)
		if err == nil {
			return set, nil
		}
	}
	v, err := a.flight(ctx, "jwks:"+u, func(ctx context.Context) (any, error) {
		now := a.now()
		a.jwksState.mu.Lock()
		last, lastFail := a.jwksState.last[u], a.jwksState.lastFail[u]
		fetched := a.jwksState.fetched[u]
		recent := !last.IsZero() && now.Sub(last) < jwksRefreshGap
		if !recent {
			a.jwksState.last[u] = now
		}
		a.jwksState.mu.Unlock()
		if recent {
			if lastFail != nil && !fetched {
				return nil, lastFail
			}
			set, err := a.jwks.Get(ctx, u)
			if err != nil {
				if lastFail != nil {
					return nil, lastFail
				}
				return nil, jwksError(err)
			}
			return set, nil
		}
		fctx, cancel := context.WithTimeout(ctx, a.s.timeout)
		defer cancel()
		set, err := a.jwks.Refresh(fctx, u)
		a.jwksState.mu.Lock()
		defer a.jwksState.mu.Unlock()
		if err != nil {
			fail := jwksError(err)
			a.jwksState.lastFail[u] = fail
			a.logger.Warn("JWKS fetch failed", failFields(fail)...)
			if fetched {
				// Keep serving the keys we have.
				if old, gerr := a.jwks.Get(ctx, u); gerr == nil {
					return old, nil
				}
			}
			return nil, fail
		}
		a.jwksState.fetched[u] = true
		a.jwksState.lastFail[u] = nil
		return set, nil
	})
	if err != nil {
		return nil, asAuthzError(err)
	}
	return v.(jwk.Set), nil
}

func jwksError(err error) *authz.Error {
	var ue *url.Error
	if errors.As(err, &ue) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return transportError("JWKS", err)
	}
	return badGateway("JWKS", "could not be read as a JWK set", err)
}
