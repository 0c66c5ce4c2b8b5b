package dual

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/oauth2"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/smart"
)

// sessionCookie names the browser's flow cookie.
const sessionCookie = "sia_dual_flow"

// Server is the dual-launch authorization server and authorizer of one
// route. It is safe for concurrent use.
type Server struct {
	s      *settings
	seal   *sealer
	ehr    *ehr
	logger *zap.Logger
	used   *replaySet
	appKey *appKeys
	signer *assertionSigner
	// patients remembers the PACS identifiers carried by access tokens,
	// by patient id, for PatientKeys.
	patients *identCache
	now      func() time.Time
}

// New checks cfg and builds the server. It does no network I/O.
func New(cfg Config, client *http.Client, logger *zap.Logger) (*Server, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	sl, err := newSealer(s.secret)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	srv := &Server{s: s, seal: sl, ehr: &ehr{s: s, client: client}, logger: logger,
		used: newReplaySet(), appKey: newAppKeys(client), patients: newIdentCache(), now: time.Now}
	if s.privateKey != "" {
		k, alg, err := smart.LoadPrivateKey(s.privateKey, s.keyAlg, s.keyID)
		if err != nil {
			return nil, fmt.Errorf("private_key: %w", err)
		}
		srv.signer = &assertionSigner{clientID: s.clientID, key: k, alg: alg}
	}
	return srv, nil
}

// FHIRBaseURL is the EHR's FHIR base.
func (srv *Server) FHIRBaseURL() string { return srv.s.fhirBase }

// flow is the sealed state of one browser's launch, kept in its cookie.
type flow struct {
	// The app's request.
	ClientID    string `json:"cid"`
	RedirectURI string `json:"ruri"`
	State       string `json:"st"`
	Challenge   string `json:"cc,omitempty"`
	Scope       string `json:"sc"`
	// The gateway's leg to the EHR.
	EHRState    string `json:"es,omitempty"`
	Verifier    string `json:"ev,omitempty"`
	Nonce       string `json:"en,omitempty"`
	Interactive bool   `json:"ei,omitempty"`
	LoginHint   string `json:"lh,omitempty"`
	// After the EHR answered: what the user is asked to approve.
	Consent     bool               `json:"ok,omitempty"`
	CSRF        string             `json:"csrf,omitempty"`
	Patient     string             `json:"pat,omitempty"`
	PatientName string             `json:"pn,omitempty"`
	User        string             `json:"usr,omitempty"`
	UserName    string             `json:"un,omitempty"`
	Identifiers []authz.Identifier `json:"ids,omitempty"`
}

// grant is what an authorization code and an access token carry.
type grant struct {
	ID          string             `json:"jti"`
	ClientID    string             `json:"cid"`
	RedirectURI string             `json:"ruri,omitempty"`
	Challenge   string             `json:"cc,omitempty"`
	Audience    string             `json:"aud"`
	Scope       string             `json:"sc"`
	Patient     string             `json:"pat"`
	User        string             `json:"usr,omitempty"`
	Identifiers []authz.Identifier `json:"ids"`
	IssuedAt    int64              `json:"iat"`
}

// ServeOAuth answers the OAuth endpoints under the route: rest is the path
// after the route prefix ("/oauth/authorize"), base the route's public URL
// ("https://imaging.example.org/dual"). It reports false for any other
// path.
func (srv *Server) ServeOAuth(w http.ResponseWriter, r *http.Request, rest, base string) bool {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	switch rest {
	case "/oauth/authorize":
		if !method(w, r, http.MethodGet) {
			return true
		}
		srv.authorize(w, r, base)
	case "/oauth/ehr-callback":
		if !method(w, r, http.MethodGet) {
			return true
		}
		srv.ehrCallback(w, r, base)
	case "/oauth/decision":
		if !method(w, r, http.MethodPost) {
			return true
		}
		srv.decision(w, r, base)
	case "/oauth/token":
		if !method(w, r, http.MethodPost) {
			return true
		}
		srv.token(w, r, base)
	default:
		return false
	}
	return true
}

func method(w http.ResponseWriter, r *http.Request, m string) bool {
	if r.Method == m {
		return true
	}
	w.Header().Set("Allow", m)
	errorPage(w, http.StatusMethodNotAllowed, "This address accepts "+m+" only.")
	return false
}

var challengeRE = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// authorize validates the app's request, then sends the browser to the
// EHR (prompt=none) for the gateway's own authorization.
func (srv *Server) authorize(w http.ResponseWriter, r *http.Request, base string) {
	q := r.URL.Query()
	app, ok := srv.s.apps[q.Get("client_id")]
	if !ok || !slices.Contains(app.RedirectURIs, q.Get("redirect_uri")) || len(q["redirect_uri"]) != 1 || len(q["client_id"]) != 1 {
		// Never redirect to an address that is not registered for the
		// client: an error page instead.
		srv.logger.Info("dual-launch authorize refused: unknown client or redirect_uri", zap.String("client_id", clip(q.Get("client_id"))))
		errorPage(w, http.StatusBadRequest, "Unknown application or redirect address. The application must be registered with this imaging server, and use one of its registered redirect URIs exactly.")
		return
	}
	f := flow{ClientID: app.ClientID, RedirectURI: q.Get("redirect_uri"), State: q.Get("state")}
	fail := func(code, desc string) {
		srv.logger.Info("dual-launch authorize refused", zap.String("client_id", app.ClientID), zap.String("error", code), zap.String("reason", desc))
		redirectError(w, r, f, code, desc)
	}
	switch {
	case q.Get("response_type") != "code":
		fail("unsupported_response_type", "response_type must be code")
		return
	case f.State == "" || len(f.State) > 512:
		fail("invalid_request", "state is required (at most 512 characters)")
		return
	case q.Get("aud") != base+"/fhir":
		fail("invalid_request", "aud must be this imaging server's FHIR base, "+base+"/fhir")
		return
	}
	if cc := q.Get("code_challenge"); cc != "" || app.JWKSURL == "" {
		if q.Get("code_challenge_method") != "S256" || !challengeRE.MatchString(cc) {
			fail("invalid_request", "PKCE is required: code_challenge (S256, 43 characters) with code_challenge_method=S256")
			return
		}
		f.Challenge = cc
	}
	var granted []string
	for _, sc := range strings.Fields(q.Get("scope")) {
		if sc == "launch/patient" || authz.HasPatientReadScope([]string{sc}, "ImagingStudy") {
			if !slices.Contains(granted, sc) {
				granted = append(granted, sc)
			}
		}
	}
	if !authz.HasPatientReadScope(granted, "ImagingStudy") {
		fail("invalid_scope", "scope must include patient/ImagingStudy.rs (or .read)")
		return
	}
	f.Scope = strings.Join(granted, " ")
	if h := q.Get("login_hint"); strings.Count(h, ".") == 2 && len(h) < 4096 {
		f.LoginHint = h
	}
	srv.toEHR(w, r, base, f, false)
}

// toEHR starts (or restarts, interactively) the gateway's own trip to the
// EHR: a fresh state, nonce and PKCE verifier, sealed into the cookie.
func (srv *Server) toEHR(w http.ResponseWriter, r *http.Request, base string, f flow, interactive bool) {
	conf, err := srv.ehr.discover(r.Context())
	if err != nil {
		srv.logger.Warn("dual-launch: EHR discovery failed", zap.Error(err))
		redirectError(w, r, f, "temporarily_unavailable", "the EHR cannot be reached")
		return
	}
	f.EHRState, f.Nonce, f.Verifier, f.Interactive = random(), random(), oauth2.GenerateVerifier(), interactive
	if err := srv.setFlow(w, base, f); err != nil {
		srv.logger.Error("dual-launch: sealing the flow", zap.Error(err))
		redirectError(w, r, f, "server_error", "")
		return
	}
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(f.Verifier),
		oauth2.SetAuthURLParam("aud", srv.s.fhirBase), oauth2.SetAuthURLParam("nonce", f.Nonce)}
	if !interactive {
		opts = append(opts, oauth2.SetAuthURLParam("prompt", "none"))
		if f.LoginHint != "" {
			opts = append(opts, oauth2.SetAuthURLParam("id_token_hint", f.LoginHint))
		}
	}
	http.Redirect(w, r, srv.ehr.oauth(conf, base).AuthCodeURL(f.EHRState, opts...), http.StatusFound)
}

// ehrCallback receives the EHR's answer, exchanges the code, verifies the
// id_token, reads the patient and user, and shows the consent page.
func (srv *Server) ehrCallback(w http.ResponseWriter, r *http.Request, base string) {
	f, ok := srv.readFlow(r)
	if !ok || f.Consent || f.EHRState == "" {
		errorPage(w, http.StatusBadRequest, "This sign-in is not in progress in this browser (or took longer than 10 minutes). Start again from the application.")
		return
	}
	q := r.URL.Query()
	if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(f.EHRState)) != 1 {
		srv.logger.Warn("dual-launch: EHR callback with a state that does not match this browser's flow")
		errorPage(w, http.StatusBadRequest, "The answer from the EHR does not belong to this sign-in. Start again from the application.")
		return
	}
	if e := q.Get("error"); e != "" {
		if !f.Interactive && (e == "login_required" || e == "interaction_required" || e == "consent_required" || e == "account_selection_required") {
			// No usable EHR session: let the user sign in at the EHR.
			srv.toEHR(w, r, base, f, true)
			return
		}
		srv.logger.Info("dual-launch: the EHR refused", zap.String("client_id", f.ClientID), zap.String("ehr_error", clip(e)))
		srv.clearFlow(w, base)
		redirectError(w, r, f, "access_denied", "the EHR did not authorize the request")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 3*srv.s.timeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, srv.ehr.client)
	conf, err := srv.ehr.discover(ctx)
	if err != nil {
		srv.failUpstream(w, r, base, f, "EHR discovery", err)
		return
	}
	opts := []oauth2.AuthCodeOption{oauth2.VerifierOption(f.Verifier)}
	if srv.signer != nil {
		a, err := srv.signer.sign(conf.TokenEndpoint)
		if err != nil {
			srv.failUpstream(w, r, base, f, "client assertion", err)
			return
		}
		opts = append(opts, oauth2.SetAuthURLParam("client_assertion_type", assertionType), oauth2.SetAuthURLParam("client_assertion", a))
	}
	tok, err := srv.ehr.oauth(conf, base).Exchange(ctx, q.Get("code"), opts...)
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			// Only the error code: the body may echo credentials.
			err = fmt.Errorf("%w: token endpoint answered HTTP %d %s", errEHR, re.Response.StatusCode, clip(re.ErrorCode))
		}
		srv.failUpstream(w, r, base, f, "code exchange", err)
		return
	}
	patient, _ := tok.Extra("patient").(string)
	if !isFHIRID(patient) {
		srv.failUpstream(w, r, base, f, "code exchange", fmt.Errorf("%w: no patient in context in its token response", errEHR))
		return
	}
	f.Patient = patient
	if raw, _ := tok.Extra("id_token").(string); raw != "" {
		ic, err := srv.ehr.verifyIDToken(ctx, conf, raw, f.Nonce)
		if err != nil {
			srv.failUpstream(w, r, base, f, "id_token", err)
			return
		}
		f.User = ic.FHIRUser
		if f.User == "" {
			f.User = ic.Subject
		}
	}
	p, err := srv.ehr.readPerson(ctx, "Patient/"+patient, tok.AccessToken, "Patient")
	if err != nil {
		srv.failUpstream(w, r, base, f, "Patient read", err)
		return
	}
	f.PatientName = p.displayName()
	f.Identifiers = srv.ehr.patientKeys(p)
	if len(f.Identifiers) == 0 {
		srv.logger.Info("dual-launch: the patient has no identifier usable as a PACS key", zap.String("client_id", f.ClientID))
		srv.clearFlow(w, base)
		redirectError(w, r, f, "access_denied", "the patient has no identifier the imaging server can use")
		return
	}
	if f.User != "" {
		if u, err := srv.ehr.readPerson(ctx, f.User, tok.AccessToken, ""); err == nil {
			f.UserName = u.displayName()
		}
	}
	f.Consent, f.CSRF, f.Verifier, f.EHRState, f.Nonce, f.LoginHint = true, random(), "", "", "", ""
	if err := srv.setFlow(w, base, f); err != nil {
		srv.failUpstream(w, r, base, f, "sealing the flow", err)
		return
	}
	consentPage(w, f)
}

// decision takes the user's answer on the consent page.
func (srv *Server) decision(w http.ResponseWriter, r *http.Request, base string) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	f, ok := srv.readFlow(r)
	if !ok || !f.Consent || r.ParseForm() != nil ||
		subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(f.CSRF)) != 1 {
		srv.logger.Warn("dual-launch: decision refused: no consent in progress in this browser, or a bad CSRF token")
		errorPage(w, http.StatusForbidden, "This approval does not belong to a sign-in in progress in this browser. Start again from the application.")
		return
	}
	srv.clearFlow(w, base)
	if r.PostForm.Get("decision") != "approve" {
		srv.logger.Info("dual-launch: the user denied imaging access", zap.String("client_id", f.ClientID))
		redirectError(w, r, f, "access_denied", "the user denied access")
		return
	}
	now := srv.now()
	code, err := srv.seal.seal(purposeCode, now.Add(CodeTTL), grant{
		ID: random(), ClientID: f.ClientID, RedirectURI: f.RedirectURI, Challenge: f.Challenge,
		Audience: base + "/fhir", Scope: f.Scope, Patient: f.Patient, User: f.User,
		Identifiers: f.Identifiers, IssuedAt: now.Unix(),
	})
	if err != nil {
		srv.logger.Error("dual-launch: sealing a code", zap.Error(err))
		redirectError(w, r, f, "server_error", "")
		return
	}
	srv.logger.Info("dual-launch: user approved; code issued", zap.String("client_id", f.ClientID), zap.String("patient", f.Patient), zap.String("user", f.User))
	redirectTo(w, r, f.RedirectURI, url.Values{"code": {code}, "state": {f.State}})
}

func (srv *Server) failUpstream(w http.ResponseWriter, r *http.Request, base string, f flow, step string, err error) {
	srv.logger.Warn("dual-launch: EHR leg failed", zap.String("step", step), zap.String("client_id", f.ClientID), zap.Error(err))
	srv.clearFlow(w, base)
	redirectError(w, r, f, "server_error", "the EHR leg of the launch failed")
}

func (srv *Server) setFlow(w http.ResponseWriter, base string, f flow) error {
	v, err := srv.seal.seal(purposeSession, srv.now().Add(SessionTTL), f)
	if err != nil {
		return err
	}
	http.SetCookie(w, srv.cookie(base, v, int(SessionTTL/time.Second)))
	return nil
}

func (srv *Server) clearFlow(w http.ResponseWriter, base string) {
	http.SetCookie(w, srv.cookie(base, "", -1))
}

func (srv *Server) cookie(base, value string, maxAge int) *http.Cookie {
	u, _ := url.Parse(base)
	return &http.Cookie{Name: sessionCookie, Value: value, Path: u.Path + "/oauth/", MaxAge: maxAge,
		HttpOnly: true, Secure: u.Scheme == "https", SameSite: http.SameSiteLaxMode}
}

func (srv *Server) readFlow(r *http.Request) (flow, bool) {
	var f flow
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return f, false
	}
	if _, err := srv.seal.open(purposeSession, c.Value, srv.now(), &f); err != nil {
		return f, false
	}
	return f, true
}

// redirectError sends the browser back to the app (whose redirect URI was
// validated) with an OAuth error.
func redirectError(w http.ResponseWriter, r *http.Request, f flow, code, desc string) {
	v := url.Values{"error": {code}}
	if desc != "" {
		v.Set("error_description", desc)
	}
	if f.State != "" {
		v.Set("state", f.State)
	}
	redirectTo(w, r, f.RedirectURI, v)
}

// redirectTo adds params to the redirect URI's own query (which it keeps).
func redirectTo(w http.ResponseWriter, r *http.Request, redirectURI string, params url.Values) {
	u, err := url.Parse(redirectURI)
	if err != nil {
		errorPage(w, http.StatusInternalServerError, "The application's redirect address is invalid.")
		return
	}
	q := u.Query()
	for k, v := range params {
		q[k] = v
	}
	u.RawQuery = q.Encode()
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func random() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// clip bounds a value from the request before it is logged.
func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// replaySet remembers, until they expire, the ids of codes and client
// assertions this replica has accepted.
type replaySet struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

// maxReplayEntries bounds the set; past it, new codes are refused.
const maxReplayEntries = 200000

func newReplaySet() *replaySet { return &replaySet{seen: map[string]time.Time{}} }

// claim records id until exp; false when it was already there (or the set
// is full).
func (s *replaySet) claim(id string, exp, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.seen[id]; dup {
		return false
	}
	if len(s.seen) >= maxReplayEntries/2 {
		for k, e := range s.seen {
			if !now.Before(e) {
				delete(s.seen, k)
			}
		}
		if len(s.seen) >= maxReplayEntries {
			return false
		}
	}
	s.seen[id] = exp
	return true
}
