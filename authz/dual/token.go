package dual

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"
)

const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// maxAssertionLife bounds how far in the future a client assertion's exp
// may be (SMART: at most five minutes).
const maxAssertionLife = 5*time.Minute + 30*time.Second

// tokenError is an OAuth token endpoint error (RFC 6749 §5.2).
type tokenError struct {
	status     int
	code, desc string
	cause      error
}

func (e *tokenError) Error() string { return e.code + ": " + e.desc }

func invalidGrant(desc string) *tokenError {
	return &tokenError{status: http.StatusBadRequest, code: "invalid_grant", desc: desc}
}

// token answers POST /oauth/token (authorization_code only).
func (srv *Server) token(w http.ResponseWriter, r *http.Request, base string) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	resp, terr := srv.redeem(r, base)
	if terr != nil {
		fields := []zap.Field{zap.String("error", terr.code), zap.String("reason", terr.desc), zap.String("client_id", clip(r.PostForm.Get("client_id")))}
		if terr.cause != nil {
			fields = append(fields, zap.Error(terr.cause))
		}
		srv.logger.Info("dual-launch token request refused", fields...)
		if terr.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="smart_imaging"`)
		}
		writeJSON(w, terr.status, map[string]string{"error": terr.code, "error_description": terr.desc})
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (srv *Server) redeem(r *http.Request, base string) (map[string]any, *tokenError) {
	if err := r.ParseForm(); err != nil {
		return nil, &tokenError{status: http.StatusBadRequest, code: "invalid_request", desc: "the body must be an application/x-www-form-urlencoded form"}
	}
	f := r.PostForm
	for _, k := range []string{"grant_type", "code", "redirect_uri", "client_id", "code_verifier", "client_assertion", "client_assertion_type"} {
		if len(f[k]) > 1 {
			return nil, &tokenError{status: http.StatusBadRequest, code: "invalid_request", desc: k + " is repeated"}
		}
	}
	if f.Get("grant_type") != "authorization_code" {
		return nil, &tokenError{status: http.StatusBadRequest, code: "unsupported_grant_type", desc: "only authorization_code"}
	}
	now := srv.now()
	// Who is asking.
	var clientID string
	if at := f.Get("client_assertion_type"); at != "" || f.Get("client_assertion") != "" {
		if at != assertionType {
			return nil, &tokenError{status: http.StatusUnauthorized, code: "invalid_client", desc: "unsupported client_assertion_type"}
		}
		id, err := srv.verifyAssertion(r.Context(), f.Get("client_assertion"), base+"/oauth/token", now)
		if err != nil {
			return nil, &tokenError{status: http.StatusUnauthorized, code: "invalid_client", desc: "client authentication failed", cause: err}
		}
		if cid := f.Get("client_id"); cid != "" && cid != id {
			return nil, &tokenError{status: http.StatusUnauthorized, code: "invalid_client", desc: "client_id does not match the client assertion"}
		}
		clientID = id
	} else {
		app, ok := srv.s.apps[f.Get("client_id")]
		if !ok {
			return nil, &tokenError{status: http.StatusUnauthorized, code: "invalid_client", desc: "unknown client"}
		}
		if app.JWKSURL != "" {
			return nil, &tokenError{status: http.StatusUnauthorized, code: "invalid_client", desc: "this client must authenticate with private_key_jwt"}
		}
		clientID = app.ClientID
	}
	// What it presents.
	var g grant
	exp, err := srv.seal.open(purposeCode, f.Get("code"), now, &g)
	if err != nil {
		if errors.Is(err, ErrExpired) {
			return nil, invalidGrant("the authorization code has expired")
		}
		return nil, invalidGrant("the authorization code is not valid")
	}
	if g.Audience != base+"/fhir" {
		return nil, invalidGrant("the authorization code was issued by another imaging route")
	}
	if g.ClientID != clientID {
		return nil, invalidGrant("the authorization code was issued to another client")
	}
	if f.Get("redirect_uri") != g.RedirectURI {
		return nil, invalidGrant("redirect_uri does not match the authorization request")
	}
	if g.Challenge != "" {
		v := f.Get("code_verifier")
		if len(v) < 43 || len(v) > 128 || subtle.ConstantTimeCompare([]byte(s256(v)), []byte(g.Challenge)) != 1 {
			return nil, invalidGrant("code_verifier does not match the code_challenge")
		}
	}
	if !srv.used.claim("code:"+g.ID, exp, now) {
		return nil, invalidGrant("the authorization code was already used")
	}
	tokExp := now.Add(srv.s.tokenTTL)
	at := grant{ID: random(), ClientID: g.ClientID, Audience: g.Audience, Scope: g.Scope, Patient: g.Patient,
		User: g.User, Identifiers: g.Identifiers, IssuedAt: now.Unix()}
	access, err := srv.seal.seal(purposeAccess, tokExp, at)
	if err != nil {
		return nil, &tokenError{status: http.StatusInternalServerError, code: "server_error", desc: "cannot issue a token", cause: err}
	}
	srv.logger.Info("dual-launch access token issued", zap.String("client_id", g.ClientID), zap.String("patient", g.Patient),
		zap.String("token_hash", hashToken(access)), zap.Time("expires", tokExp))
	return map[string]any{
		"access_token": access,
		"token_type":   "Bearer",
		"expires_in":   int(srv.s.tokenTTL / time.Second),
		"scope":        g.Scope,
		"patient":      g.Patient,
	}, nil
}

// verifyAssertion checks a private_key_jwt client assertion of a
// confidential app (RFC 7523, SMART asymmetric client authentication):
// signed by a key at the app's jwks_url, iss = sub = client_id, aud this
// token endpoint, exp at most five minutes away, jti never seen before.
func (srv *Server) verifyAssertion(ctx context.Context, raw, aud string, now time.Time) (string, error) {
	unverified, err := jwt.ParseString(raw, jwt.WithVerify(false), jwt.WithValidate(false))
	if err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	app, ok := srv.s.apps[unverified.Issuer()]
	if !ok || app.JWKSURL == "" {
		return "", errors.New("client assertion: issuer is not a registered confidential app")
	}
	var tok jwt.Token
	for attempt := 0; attempt < 2; attempt++ {
		var set jwk.Set
		set, err = srv.appKey.get(ctx, app.JWKSURL, attempt > 0)
		if err != nil {
			return "", err
		}
		tok, err = jwt.ParseString(raw, jwt.WithKeySet(set, jws.WithInferAlgorithmFromKey(true)),
			jwt.WithValidate(true), jwt.WithClock(jwt.ClockFunc(func() time.Time { return now })),
			jwt.WithIssuer(app.ClientID), jwt.WithSubject(app.ClientID), jwt.WithAudience(aud),
			jwt.WithRequiredClaim("exp"), jwt.WithRequiredClaim("jti"), jwt.WithAcceptableSkew(30*time.Second))
		if err == nil {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	if tok.Expiration().After(now.Add(maxAssertionLife)) {
		return "", errors.New("client assertion: exp is more than five minutes away")
	}
	if !srv.used.claim("jti:"+app.ClientID+"|"+tok.JwtID(), tok.Expiration().Add(time.Minute), now) {
		return "", errors.New("client assertion: jti already used")
	}
	return app.ClientID, nil
}

// appKeys caches the apps' JWKS.
type appKeys struct {
	client *http.Client
	mu     sync.Mutex
	sets   map[string]appKeySet
}

type appKeySet struct {
	set jwk.Set
	at  time.Time
}

const appKeysTTL = 5 * time.Minute

func newAppKeys(c *http.Client) *appKeys { return &appKeys{client: c, sets: map[string]appKeySet{}} }

func (a *appKeys) get(ctx context.Context, u string, refresh bool) (jwk.Set, error) {
	a.mu.Lock()
	e, ok := a.sets[u]
	a.mu.Unlock()
	if ok && time.Since(e.at) < appKeysTTL && (!refresh || time.Since(e.at) < 10*time.Second) {
		return e.set, nil
	}
	set, err := jwk.Fetch(ctx, u, jwk.WithHTTPClient(a.client))
	if err != nil {
		return nil, fmt.Errorf("fetching the app's JWKS: %w", err)
	}
	a.mu.Lock()
	a.sets[u] = appKeySet{set: set, at: time.Now()}
	a.mu.Unlock()
	return set, nil
}

// assertionSigner signs the gateway's own client assertions at the EHR.
type assertionSigner struct {
	clientID string
	key      jwk.Key
	alg      jwa.SignatureAlgorithm
}

func (a *assertionSigner) sign(aud string) (string, error) {
	now := time.Now()
	tok, err := jwt.NewBuilder().Issuer(a.clientID).Subject(a.clientID).Audience([]string{aud}).
		IssuedAt(now).Expiration(now.Add(4 * time.Minute)).JwtID(random()).Build()
	if err != nil {
		return "", fmt.Errorf("building client assertion: %w", err)
	}
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.TypeKey, "JWT")
	b, err := jwt.Sign(tok, jwt.WithKey(a.alg, a.key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("signing client assertion: %w", err)
	}
	return string(b), nil
}
