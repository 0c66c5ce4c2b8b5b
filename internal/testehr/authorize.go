package testehr

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// The EHR's authorization code flow (SMART App Launch): an authorization
// endpoint with a login-and-approve page, prompt=none answered from the
// browser's EHR session, PKCE S256, and the authorization_code grant at
// the token endpoint returning the patient in context and an OpenID
// Connect id_token signed with the EHR's RS256 key (published at the
// JWKS endpoint).

// sessionCookie is the name of the EHR's login session cookie.
const sessionCookie = "testehr_session"

// codeTTL is the life of the EHR's authorization codes.
const codeTTL = time.Minute

type session struct {
	user    string // fhirUser ("Practitioner/dr-1")
	patient string // patient picked at login
}

type authCode struct {
	clientID, redirectURI, scope, nonce, challenge string
	session
	exp time.Time
}

type codeFlow struct {
	sessions map[string]session
	codes    map[string]*authCode
	// resources holds other FHIR resources served by type/id
	// ("Practitioner/dr-1").
	resources map[string][]byte
	lastAuth  url.Values
	idTokenFn func(map[string]any)
	cors      bool
}

func (e *EHR) routeCodeFlow(mux *http.ServeMux) {
	mux.HandleFunc("GET /auth/authorize", e.wrap(Authorize, e.serveAuthorize))
	mux.HandleFunc("POST /auth/authorize", e.wrap(Authorize, e.serveLogin))
	mux.HandleFunc("GET /fhir/Practitioner/{id}", e.wrap(Patient, e.serveResource("Practitioner")))
}

// AllowBrowsers makes the EHR answer cross-origin requests from any page
// (CORS), as an EHR does for browser apps: a SMART app in a browser reads
// discovery, redeems its code and reads Patient with fetch.
func (e *EHR) AllowBrowsers() {
	e.mu.Lock()
	e.codeFlow.cors = true
	e.mu.Unlock()
}

func (e *EHR) browserCORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		cors := e.codeFlow.cors
		e.mu.Unlock()
		if cors && r.Header.Get("Origin") != "" {
			w.Header().Set("Access-Control-Allow-Origin", "*")
			if r.Method == http.MethodOptions {
				w.Header().Set("Access-Control-Allow-Methods", "GET, POST")
				w.Header().Set("Access-Control-Allow-Headers", "Authorization, Accept, Content-Type")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// AuthorizeEndpoint is the OAuth authorization endpoint.
func (e *EHR) AuthorizeEndpoint() string { return e.srv.URL + "/auth/authorize" }

// NewSession logs user (a fhirUser reference such as "Practitioner/dr-1")
// in with patient in context, as the login page does, and returns the
// session cookie a browser would hold: authorization requests carrying it
// are approved at once, prompt=none included.
func (e *EHR) NewSession(user, patient string) *http.Cookie {
	id := randomString(24)
	e.mu.Lock()
	if e.codeFlow.sessions == nil {
		e.codeFlow.sessions = map[string]session{}
	}
	e.codeFlow.sessions[id] = session{user: user, patient: patient}
	e.mu.Unlock()
	return &http.Cookie{Name: sessionCookie, Value: id, Path: "/"}
}

// SetResourceJSON stores a raw FHIR resource served at
// /fhir/{resourceType}/{id} to any valid app token (Practitioner only).
func (e *EHR) SetResourceJSON(resourceType, id string, body []byte) {
	e.mu.Lock()
	if e.codeFlow.resources == nil {
		e.codeFlow.resources = map[string][]byte{}
	}
	e.codeFlow.resources[resourceType+"/"+id] = body
	e.mu.Unlock()
}

// LastAuthorizeRequest returns the query of the last authorization
// request the EHR received (nil if none).
func (e *EHR) LastAuthorizeRequest() url.Values {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.codeFlow.lastAuth
}

// TamperIDTokens lets a test change the claims of the id_tokens the token
// endpoint issues (nil restores honest ones). The token is still signed
// with the EHR's key unless the function sets "_unsigned" to true, in
// which case it is signed with a key the EHR does not publish.
func (e *EHR) TamperIDTokens(fn func(claims map[string]any)) {
	e.mu.Lock()
	e.codeFlow.idTokenFn = fn
	e.mu.Unlock()
}

func (e *EHR) session(r *http.Request) (session, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return session{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.codeFlow.sessions[c.Value]
	return s, ok
}

// checkAuthRequest validates client and redirect URI. It reports false
// after answering with an error page (never a redirect).
func (e *EHR) checkAuthRequest(w http.ResponseWriter, q url.Values) bool {
	e.mu.Lock()
	c, ok := e.clients[q.Get("client_id")]
	e.mu.Unlock()
	if !ok || !slices.Contains(c.RedirectURIs, q.Get("redirect_uri")) {
		http.Error(w, "unknown client or redirect_uri", http.StatusBadRequest)
		return false
	}
	return true
}

func redirectWith(w http.ResponseWriter, r *http.Request, redirectURI string, params url.Values) {
	u, _ := url.Parse(redirectURI)
	q := u.Query()
	for k, v := range params {
		q[k] = v
	}
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func (e *EHR) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	e.mu.Lock()
	e.codeFlow.lastAuth = q
	e.mu.Unlock()
	if !e.checkAuthRequest(w, q) {
		return
	}
	state := q.Get("state")
	if q.Get("response_type") != "code" {
		redirectWith(w, r, q.Get("redirect_uri"), url.Values{"error": {"unsupported_response_type"}, "state": {state}})
		return
	}
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		redirectWith(w, r, q.Get("redirect_uri"), url.Values{"error": {"invalid_request"}, "error_description": {"PKCE S256 required"}, "state": {state}})
		return
	}
	if s, ok := e.session(r); ok {
		e.issueCode(w, r, q, s)
		return
	}
	if q.Get("prompt") == "none" {
		redirectWith(w, r, q.Get("redirect_uri"), url.Values{"error": {"login_required"}, "state": {state}})
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = loginPage.Execute(w, q)
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html><head><title>Test EHR login</title></head><body>
<h1>Test EHR: sign in and approve</h1>
<form method="post" action="authorize">
{{range $k, $v := .}}{{range $v}}<input type="hidden" name="{{$k}}" value="{{.}}">{{end}}{{end}}
<label>User <input name="login_user" value="Practitioner/dr-1"></label>
<label>Patient <input name="login_patient" value=""></label>
<button type="submit" name="approve" value="yes">Sign in and approve</button>
</form></body></html>`))

func (e *EHR) serveLogin(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	q := url.Values{}
	for k, v := range r.PostForm {
		if k != "login_user" && k != "login_patient" && k != "approve" {
			q[k] = v
		}
	}
	if !e.checkAuthRequest(w, q) {
		return
	}
	if r.PostForm.Get("approve") != "yes" {
		redirectWith(w, r, q.Get("redirect_uri"), url.Values{"error": {"access_denied"}, "state": {q.Get("state")}})
		return
	}
	c := e.NewSession(r.PostForm.Get("login_user"), r.PostForm.Get("login_patient"))
	http.SetCookie(w, c)
	s, _ := e.sessionByID(c.Value)
	e.issueCode(w, r, q, s)
}

func (e *EHR) sessionByID(id string) (session, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.codeFlow.sessions[id]
	return s, ok
}

func (e *EHR) issueCode(w http.ResponseWriter, r *http.Request, q url.Values, s session) {
	code := randomString(24)
	e.mu.Lock()
	if e.codeFlow.codes == nil {
		e.codeFlow.codes = map[string]*authCode{}
	}
	e.codeFlow.codes[code] = &authCode{
		clientID: q.Get("client_id"), redirectURI: q.Get("redirect_uri"), scope: q.Get("scope"),
		nonce: q.Get("nonce"), challenge: q.Get("code_challenge"), session: s, exp: time.Now().Add(codeTTL),
	}
	e.mu.Unlock()
	redirectWith(w, r, q.Get("redirect_uri"), url.Values{"code": {code}, "state": {q.Get("state")}})
}

// serveCodeGrant answers grant_type=authorization_code: the client
// authenticates (client_secret_basic, private_key_jwt, or a public client
// with client_id), the code is single use, PKCE S256 is verified.
func (e *EHR) serveCodeGrant(w http.ResponseWriter, r *http.Request) {
	f := r.PostForm
	var clientID string
	switch {
	case f.Get("client_assertion_type") != "":
		id, err := e.verifyAssertion(f.Get("client_assertion"))
		if err != nil {
			oauthError(w, http.StatusUnauthorized, "invalid_client", err.Error())
			return
		}
		clientID = id
	default:
		if id, secret, ok := basicAuth(r); ok {
			if !e.checkSecret(id, secret) {
				oauthError(w, http.StatusUnauthorized, "invalid_client", "bad client credentials")
				return
			}
			clientID = id
		} else {
			clientID = f.Get("client_id")
			e.mu.Lock()
			c, ok := e.clients[clientID]
			e.mu.Unlock()
			if !ok || c.Secret != "" || c.Keys != nil {
				oauthError(w, http.StatusUnauthorized, "invalid_client", "client authentication required")
				return
			}
		}
	}
	e.mu.Lock()
	ac, ok := e.codeFlow.codes[f.Get("code")]
	delete(e.codeFlow.codes, f.Get("code"))
	tamper := e.codeFlow.idTokenFn
	e.mu.Unlock()
	if !ok || time.Now().After(ac.exp) || ac.clientID != clientID || ac.redirectURI != f.Get("redirect_uri") {
		oauthError(w, http.StatusBadRequest, "invalid_grant", "unknown, used or expired code")
		return
	}
	sum := sha256.Sum256([]byte(f.Get("code_verifier")))
	if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(ac.challenge)) != 1 {
		oauthError(w, http.StatusBadRequest, "invalid_grant", "code_verifier does not match")
		return
	}
	ttl := time.Hour
	tok := e.IssueToken(TokenSpec{Patient: ac.patient, Scope: ac.scope, ClientID: clientID, FHIRUser: ac.user, Exp: time.Now().Add(ttl)})
	resp := map[string]any{
		"access_token": tok, "token_type": "Bearer", "expires_in": int(ttl / time.Second),
		"scope": ac.scope, "patient": ac.patient,
	}
	if slices.Contains(strings.Fields(ac.scope), "openid") {
		resp["id_token"] = e.idToken(ac, clientID, tamper)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (e *EHR) idToken(ac *authCode, clientID string, tamper func(map[string]any)) string {
	claims := map[string]any{
		"iss": e.issuer, "sub": ac.user, "aud": clientID, "fhirUser": e.FHIRBase() + "/" + ac.user,
		"exp": time.Now().Add(5 * time.Minute).Unix(), "iat": time.Now().Unix(),
	}
	if ac.nonce != "" {
		claims["nonce"] = ac.nonce
	}
	if tamper != nil {
		tamper(claims)
	}
	b := jwt.NewBuilder()
	for k, v := range claims {
		if k != "_unsigned" {
			b = b.Claim(k, v)
		}
	}
	tok, err := b.Build()
	if err != nil {
		panic(err)
	}
	e.mu.Lock()
	var key = e.signingKeys[0]
	e.mu.Unlock()
	if claims["_unsigned"] == true {
		// Same kid, a key the EHR never published.
		raw, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		forged, err := jwk.FromRaw(raw)
		if err != nil {
			panic(err)
		}
		_ = forged.Set(jwk.KeyIDKey, key.KeyID())
		key = forged
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.RS256, key))
	if err != nil {
		panic(err)
	}
	return string(signed)
}

func (e *EHR) serveResource(typ string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, ok := e.lookup(bearer(r)); !ok {
			operationOutcome(w, http.StatusUnauthorized, "login", "a valid access token is required")
			return
		}
		e.mu.Lock()
		body, ok := e.codeFlow.resources[typ+"/"+r.PathValue("id")]
		e.mu.Unlock()
		if !ok {
			operationOutcome(w, http.StatusNotFound, "not-found", "no such resource")
			return
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = w.Write(body)
	}
}
