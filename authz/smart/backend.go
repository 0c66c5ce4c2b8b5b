package smart

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/smart-imaging/smart_imaging/authz"
)

const (
	// assertionLifetime is the exp of a client assertion (SMART: at most
	// five minutes).
	assertionLifetime = 5 * time.Minute
	// backendTokenSkew: the gateway's own token is renewed this long before
	// it expires.
	backendTokenSkew = 30 * time.Second
	// defaultBackendTokenLife is assumed when the token response has no
	// expires_in.
	defaultBackendTokenLife = 5 * time.Minute
)

type backendToken struct {
	token   string
	renewAt time.Time
}

type backendCache struct {
	mu  sync.Mutex
	tok *backendToken
}

// backendToken returns the gateway's own access token (SMART Backend
// Services client_credentials), fetching a new one when the cached one is
// near expiry.
func (a *Authorizer) backendToken(ctx context.Context) (string, *authz.Error) {
	if t := a.cachedBackendToken(); t != "" {
		return t, nil
	}
	v, err := a.flight(ctx, "backend-token", func(ctx context.Context) (any, error) {
		if t := a.cachedBackendToken(); t != "" {
			return t, nil
		}
		bt, fail := a.fetchBackendToken(ctx)
		if fail != nil {
			a.logger.Warn("backend services token request failed", failFields(fail)...)
			return nil, fail
		}
		a.backend.mu.Lock()
		a.backend.tok = bt
		a.backend.mu.Unlock()
		return bt.token, nil
	})
	if err != nil {
		return "", asAuthzError(err)
	}
	return v.(string), nil
}

func (a *Authorizer) cachedBackendToken() string {
	a.backend.mu.Lock()
	defer a.backend.mu.Unlock()
	if t := a.backend.tok; t != nil && a.now().Before(t.renewAt) {
		return t.token
	}
	return ""
}

// dropBackendToken forgets tok (the EHR refused it), so the next call
// fetches a new one.
func (a *Authorizer) dropBackendToken(tok string) {
	a.backend.mu.Lock()
	if a.backend.tok != nil && a.backend.tok.token == tok {
		a.backend.tok = nil
	}
	a.backend.mu.Unlock()
}

type tokenResponse struct {
	AccessToken string          `json:"access_token"`
	TokenType   string          `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
	Error       string          `json:"error"`
}

func (a *Authorizer) fetchBackendToken(ctx context.Context) (*backendToken, *authz.Error) {
	const what = "token endpoint"
	tokenURL, discovered, fail := a.endpoint(ctx, epToken)
	if fail != nil {
		return nil, fail
	}
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {a.s.scope}}
	if a.s.key != nil {
		assertion, err := a.clientAssertion(tokenURL)
		if err != nil {
			return nil, &authz.Error{Status: http.StatusBadGateway, Code: "exception",
				Message: "the gateway could not sign its client assertion", Err: err}
		}
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", assertion)
	}
	req, err := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, badGateway(what, "URL is invalid", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if a.s.key == nil {
		a.setBasicAuth(req)
	}
	resp, fail := a.do(ctx, what, req)
	if fail != nil {
		if discovered {
			a.invalidateDiscovery()
		}
		return nil, fail
	}
	var tr tokenResponse
	jsonErr := json.Unmarshal(resp.body, &tr)
	switch {
	case resp.status == http.StatusBadRequest || resp.status == http.StatusUnauthorized || resp.status == http.StatusForbidden:
		code := ""
		if jsonErr == nil && tr.Error != "" && len(tr.Error) < 64 {
			code = " (" + tr.Error + ")"
		}
		return nil, badGateway(what, fmt.Sprintf("refused the gateway's client credentials: HTTP %d%s", resp.status, code), nil)
	case resp.status == http.StatusNotFound && discovered:
		a.invalidateDiscovery()
		return nil, statusError(what, resp.status, resp.header)
	case resp.status != http.StatusOK:
		return nil, statusError(what, resp.status, resp.header)
	case jsonErr != nil:
		return nil, badGateway(what, "answered with something that is not a token response", jsonErr)
	case tr.AccessToken == "":
		return nil, badGateway(what, "answered without an access_token", nil)
	case tr.TokenType != "" && !strings.EqualFold(tr.TokenType, "bearer"):
		return nil, badGateway(what, "issued a token that is not a bearer token", nil)
	}
	life := defaultBackendTokenLife
	if len(tr.ExpiresIn) > 0 && string(tr.ExpiresIn) != "null" {
		var secs float64
		if err := json.Unmarshal(tr.ExpiresIn, &secs); err != nil {
			// Some servers send a string.
			var s string
			if json.Unmarshal(tr.ExpiresIn, &s) != nil {
				return nil, badGateway(what, "sent an unreadable expires_in", err)
			}
			if _, err := fmt.Sscanf(s, "%g", &secs); err != nil {
				return nil, badGateway(what, "sent an unreadable expires_in", err)
			}
		}
		if secs > 0 && secs < 1e7 {
			life = time.Duration(secs * float64(time.Second))
		}
	}
	skew := backendTokenSkew
	if life <= 2*skew {
		skew = life / 2
	}
	return &backendToken{token: tr.AccessToken, renewAt: a.now().Add(life - skew)}, nil
}

// setBasicAuth sets client_secret_basic credentials: RFC 6749 §2.3.1 wants
// the id and secret form-urlencoded before they are joined and base64ed.
func (a *Authorizer) setBasicAuth(req *http.Request) {
	req.SetBasicAuth(url.QueryEscape(a.s.clientID), url.QueryEscape(a.s.clientSecret))
}

// clientAssertion signs a private_key_jwt client assertion for aud (the
// token endpoint): iss = sub = client_id, a random jti, exp in five
// minutes, kid and typ headers. It uses the wall clock, which is what the
// EHR checks it against.
func (a *Authorizer) clientAssertion(aud string) (string, error) {
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", fmt.Errorf("random jti: %w", err)
	}
	now := time.Now()
	tok, err := jwt.NewBuilder().
		Issuer(a.s.clientID).
		Subject(a.s.clientID).
		Audience([]string{aud}).
		IssuedAt(now).
		Expiration(now.Add(assertionLifetime)).
		JwtID(hex.EncodeToString(jti)).
		Build()
	if err != nil {
		return "", fmt.Errorf("building client assertion: %w", err)
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, "JWT"); err != nil {
		return "", fmt.Errorf("client assertion header: %w", err)
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(a.s.key.alg, a.s.key.key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("signing client assertion: %w", err)
	}
	return string(signed), nil
}
