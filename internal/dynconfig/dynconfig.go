// Package dynconfig reads the tenant configurations that /dyn URLs carry
// (/dyn/{base64url(JSON)}/…) and holds them to the operator's policy.
//
// The rule: a URL can never grant what the operator's configuration would
// not. A /dyn config chooses only where to go: the EHR (fhir_base_url), the
// PACS (images base_url), the lookup among those the operator allows
// (studies-by-mrn), its client id, and a study token lifetime no longer
// than the route's. Everything that decides who may see what (identifier
// systems, scopes, audiences, issuers, where the patient comes from, whose
// token reads the Patient, validation mode, endpoints, caches, timeouts)
// belongs to the operator and is refused when a URL sets it. Credentials
// come from the operator, per allowed host; a URL may carry its own only
// where the operator allows it (AllowURLCredentials), since URLs end up in
// logs and browser histories.
//
// The package knows no Caddy: the caddymodule wiring decodes the segment
// with Parse and builds the tenant's modules from the Tenant it returns.
package dynconfig

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/smart-imaging/smart_imaging/internal/delay"
	"github.com/smart-imaging/smart_imaging/internal/refconfig"
)

// Kinds a tenant may name.
const (
	// AuthzSMART is the smart-on-fhir authorizer.
	AuthzSMART = "smart-on-fhir"
	// AuthzMock is the mock authorizer (the URL names the patient): only
	// where the operator allows it.
	AuthzMock = "mock"
	// ImagesDICOMweb is the only image source a tenant may use (a folder
	// would expose the server's files).
	ImagesDICOMweb = "dicomweb"
	// LookupStudiesByMRN is the only lookup a tenant may use.
	LookupStudiesByMRN = "studies-by-mrn"
)

// Credential kinds.
const (
	// CredBasic is HTTP Basic at a PACS.
	CredBasic = "basic"
	// CredBearer is a bearer token at a PACS.
	CredBearer = "bearer"
	// CredClientSecret is client_secret_basic at an EHR's authorization
	// server.
	CredClientSecret = "client_secret"
	// CredPrivateKey is private_key_jwt (SMART Backend Services) at an
	// EHR's authorization server.
	CredPrivateKey = "private_key"
)

// MaxSegment bounds the encoded /dyn segment.
const MaxSegment = 8192

// maxValue bounds any single string value of a tenant config (a
// private_key, which may be an inline key, is bounded by MaxSegment).
const maxValue = 1024

// Sentinel errors; every *Error wraps one.
var (
	// ErrMalformed: the segment is not base64url JSON of the right shape.
	ErrMalformed = errors.New("malformed /dyn config")
	// ErrNotSettable: the field is the operator's (or unknown).
	ErrNotSettable = errors.New("not settable in a /dyn URL")
	// ErrURLCredentials: the URL carries credentials and the route does
	// not accept them there.
	ErrURLCredentials = errors.New("credentials are not accepted in /dyn URLs on this route")
	// ErrOffAllowList: a URL names a host that is not on the allow list.
	ErrOffAllowList = errors.New("host not on the allow list")
	// ErrBadValue: a value is not allowed (a placeholder, a file path, a
	// scheme, a lookup, a lifetime past the route's…).
	ErrBadValue = errors.New("value not allowed")
)

// Error is a refused /dyn config: which field and why. Its message is
// meant for the caller (it never holds a credential).
type Error struct {
	// Field is the JSON path of the offending field ("authz.mrn_system"),
	// empty for the document as a whole.
	Field string
	// Err is one of the sentinel errors.
	Err error
	// Reason says what is wrong, for the caller.
	Reason string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return "dynamic config: " + e.Reason
	}
	return "dynamic config: " + e.Field + ": " + e.Reason
}

// Unwrap returns the sentinel.
func (e *Error) Unwrap() error { return e.Err }

func fail(field string, sentinel error, format string, args ...any) *Error {
	return &Error{Field: field, Err: sentinel, Reason: fmt.Sprintf(format, args...)}
}

// Credential is the operator's credential for one allowed host: Basic or
// a bearer token for a PACS, a client secret or a private key (with the
// client id they belong to) for an EHR.
type Credential struct {
	// Host is the host (host or host:port) the credential is for; it must
	// be on the allow list. Without a port it applies to every port.
	Host string `json:"host"`
	// Kind is basic, bearer, client_secret or private_key.
	Kind string `json:"kind"`
	// Username and Password are HTTP Basic credentials at a PACS.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Token is a bearer token at a PACS.
	Token string `json:"token,omitempty"`
	// ClientID is the gateway's client id at the EHR.
	ClientID string `json:"client_id,omitempty"`
	// ClientSecret authenticates ClientID (client_secret_basic).
	ClientSecret string `json:"client_secret,omitempty"`
	// PrivateKey is ClientID's key (a file, a JWK or a PEM).
	PrivateKey string `json:"private_key,omitempty"`
}

func (c Credential) forPACS() bool { return c.Kind == CredBasic || c.Kind == CredBearer }

// Role is what a tenant uses a host for.
type Role int

// Roles of hosts.
const (
	// RoleEHR: the EHR's FHIR base and the endpoints its discovery names
	// (token, introspection, JWKS): what decides whose tokens are good and
	// which patient they are for.
	RoleEHR Role = iota + 1
	// RolePACS: the PACS's DICOMweb root.
	RolePACS
)

func (r Role) String() string {
	if r == RolePACS {
		return "PACS"
	}
	return "EHR"
}

// Policy is the operator's side of /dyn configs on one route.
type Policy struct {
	// AllowHosts are the hosts (host or host:port) tenants may send
	// requests to, as their EHR or their PACS. An entry without a port
	// allows every port of the host.
	AllowHosts []string
	// AllowEHRHosts may serve only as a tenant's EHR, AllowPACSHosts only
	// as its PACS. A PACS that can be made to serve arbitrary bytes (a
	// stored object's content) must never be taken for an EHR, whose
	// discovery, keys and Patient resources decide who is who.
	AllowEHRHosts  []string
	AllowPACSHosts []string
	// AllowMock lets tenants use authz mock, i.e. name their own patient:
	// demos only.
	AllowMock bool
	// AllowURLCredentials lets tenants carry credentials in the URL.
	AllowURLCredentials bool
	// Credentials are the operator's credentials per allowed host.
	Credentials []Credential
	// MaxStudyTokenTTL is the route's study token lifetime: a tenant may
	// shorten it, never extend it.
	MaxStudyTokenTTL time.Duration
}

// Check validates the policy itself (the operator's configuration).
func (p *Policy) Check() error {
	if len(p.AllowHosts)+len(p.AllowEHRHosts)+len(p.AllowPACSHosts) == 0 {
		return errors.New("allow_hosts (or allow_ehr_hosts and allow_pacs_hosts) is required: the EHR and PACS hosts dynamic configs may use")
	}
	for _, list := range [][]string{p.AllowHosts, p.AllowEHRHosts, p.AllowPACSHosts} {
		for _, h := range list {
			if h == "" || strings.ContainsAny(h, "/*?#@ {}") {
				return fmt.Errorf("allow_hosts entry %q must be a host or host:port", h)
			}
		}
	}
	if p.MaxStudyTokenTTL <= 0 {
		return errors.New("the route's study token lifetime is not set")
	}
	seen := map[string]bool{}
	for _, c := range p.Credentials {
		role := RoleEHR
		if c.forPACS() {
			role = RolePACS
		}
		if c.Host == "" || !p.Allowed(c.Host, role) {
			return fmt.Errorf("credentials for %q: the host must be allowed in the %s role (allow_hosts or allow_%s_hosts)", c.Host, role, strings.ToLower(role.String()))
		}
		var ok bool
		switch c.Kind {
		case CredBasic:
			ok = c.Username != "" && c.Password != ""
		case CredBearer:
			ok = c.Token != ""
		case CredClientSecret:
			ok = c.ClientID != "" && c.ClientSecret != ""
		case CredPrivateKey:
			ok = c.ClientID != "" && c.PrivateKey != ""
		default:
			return fmt.Errorf("credentials for %s: kind %q is not basic, bearer, client_secret or private_key", c.Host, c.Kind)
		}
		if !ok {
			return fmt.Errorf("credentials for %s: %s needs all its values", c.Host, c.Kind)
		}
		k := strings.ToLower(c.Host) + "\x00" + role.String()
		if seen[k] {
			return fmt.Errorf("credentials for %s: a second %s credential", c.Host, role)
		}
		seen[k] = true
	}
	return nil
}

// Allowed reports whether host (host or host:port, as in a URL) is on the
// allow list for role.
func (p *Policy) Allowed(host string, role Role) bool {
	match := func(entry string) bool { return hostMatches(entry, host) }
	if slices.ContainsFunc(p.AllowHosts, match) {
		return true
	}
	if role == RolePACS {
		return slices.ContainsFunc(p.AllowPACSHosts, match)
	}
	return slices.ContainsFunc(p.AllowEHRHosts, match)
}

// hostMatches reports whether host (as in a URL: "h", "h:p", "[v6]:p")
// falls under entry ("h" for every port, or "h:p").
func hostMatches(entry, host string) bool {
	h := strings.ToLower(host)
	name := h
	if hn, _, err := net.SplitHostPort(h); err == nil {
		name = hn
	}
	e := strings.ToLower(entry)
	return e == h || e == name || "["+e+"]" == name
}

// CheckEndpoint checks a URL the gateway is about to call on a tenant's
// behalf that the tenant did not write (an endpoint the EHR's discovery
// names): absolute http(s), no credentials, a host allowed for role.
func (p *Policy) CheckEndpoint(raw string, role Role) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || !p.Allowed(u.Host, role) {
		return fmt.Errorf("%q is not on this route's allow list: %w", raw, ErrOffAllowList)
	}
	return nil
}

// Tenant is a checked /dyn config, with the operator's credentials for
// its hosts filled in.
type Tenant struct {
	Authz  Authz
	Images Images
	// StudyTokenTTL is the tenant's study token lifetime; 0: the route's.
	StudyTokenTTL time.Duration
	// Delay holds the tenant's searches and retrieves back with 503s
	// until the instants it names (a test knob: it only refuses).
	Delay *delay.Config
}

// Authz is the tenant's authorizer.
type Authz struct {
	// Kind is AuthzSMART or AuthzMock.
	Kind string
	// FHIRBaseURL is the EHR's FHIR base (an allowed host).
	FHIRBaseURL string
	// ClientID is the gateway's client id at the EHR.
	ClientID string
	// ClientSecret, PrivateKey (inline), PrivateKeyAlg and PrivateKeyID
	// are the gateway's credentials at the EHR: the operator's for the
	// EHR's host, or the URL's where the route accepts them.
	ClientSecret  string
	PrivateKey    string
	PrivateKeyAlg string
	PrivateKeyID  string
	// Patient and MRN are the mock authorizer's fixed patient.
	Patient string
	MRN     []string
}

// Images is the tenant's PACS.
type Images struct {
	// BaseURL is the PACS's DICOMweb root (an allowed host).
	BaseURL string
	// Lookup is empty or LookupStudiesByMRN.
	Lookup string
	// Username, Password or Bearer are the gateway's credentials at the
	// PACS: the operator's for its host, or the URL's where accepted.
	Username string
	Password string
	Bearer   string
}

// DecodeSegment decodes a /dyn path segment (base64url, padding optional)
// to the config's JSON.
func DecodeSegment(seg string) ([]byte, error) {
	if seg == "" || len(seg) > MaxSegment {
		return nil, fail("", ErrMalformed, "the /dyn segment must be 1 to %d characters of base64url JSON", MaxSegment)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(seg, "="))
	if err != nil {
		return nil, fail("", ErrMalformed, "the /dyn segment is not base64url (RFC 4648 §5)")
	}
	return raw, nil
}

// The fields a URL may set, by object; credentialFields may be set only
// where the route accepts credentials in URLs.
var (
	topFields         = []string{"authz", "images", "study_token_ttl", "delay"}
	smartFields       = []string{"kind", "fhir_base_url", "client_id"}
	smartCredFields   = []string{"client_secret", "private_key", "private_key_alg", "private_key_id"}
	mockFields        = []string{"kind", "patient", "mrn", "fhir_base_url"}
	dicomwebFields    = []string{"kind", "base_url", "lookup"}
	dicomwebCredField = []string{"username", "password", "bearer"}
)

// Parse checks the JSON of a /dyn config against the policy and returns
// the tenant, with the operator's credentials for its hosts. Every refusal
// is an *Error naming the field. The reference server's JSON
// ({"authorization": …, "images": …}) is accepted too, under the same
// checks (see FromReference).
func (p *Policy) Parse(raw []byte) (*Tenant, error) {
	top, err := object("", raw)
	if err != nil {
		return nil, err
	}
	if refconfig.IsReference(top) {
		return p.parseReference(raw)
	}
	return p.parseOurs(raw)
}

func (p *Policy) parseOurs(raw []byte) (*Tenant, error) {
	top, err := object("", raw)
	if err != nil {
		return nil, err
	}
	if err := onlyFields("", top, topFields, nil, "only authz, images, study_token_ttl and delay may be set in a /dyn URL"); err != nil {
		return nil, err
	}
	if top["authz"] == nil || top["images"] == nil {
		return nil, fail("", ErrMalformed, "authz and images are required")
	}
	t := &Tenant{}
	if err := p.parseAuthz(top["authz"], &t.Authz); err != nil {
		return nil, err
	}
	if err := p.parseImages(top["images"], &t.Images); err != nil {
		return nil, err
	}
	if v, ok := top["study_token_ttl"]; ok {
		if t.StudyTokenTTL, err = duration("study_token_ttl", v); err != nil {
			return nil, err
		}
		if t.StudyTokenTTL <= 0 || t.StudyTokenTTL > p.MaxStudyTokenTTL {
			return nil, fail("study_token_ttl", ErrBadValue, "must be positive and at most the route's study token lifetime (%s)", p.MaxStudyTokenTTL)
		}
	}
	if v, ok := top["delay"]; ok {
		if t.Delay, err = parseDelay(v); err != nil {
			return nil, err
		}
	}
	if err := p.addCredentials(t); err != nil {
		return nil, err
	}
	return t, nil
}

// parseDelay decodes {"lookup_until": …, "retrieve_until": …}: instants
// (RFC 3339) or durations after the tenant starts.
func parseDelay(raw json.RawMessage) (*delay.Config, error) {
	m, err := object("delay", raw)
	if err != nil {
		return nil, err
	}
	if err := onlyFields("delay", m, []string{"lookup_until", "retrieve_until"}, nil, "delay sets only lookup_until and retrieve_until"); err != nil {
		return nil, err
	}
	var c delay.Config
	for _, f := range []struct {
		name string
		dst  *string
	}{{"lookup_until", &c.LookupUntil}, {"retrieve_until", &c.RetrieveUntil}} {
		if *f.dst, err = str("delay."+f.name, m[f.name], false); err != nil {
			return nil, err
		}
		if _, err := delay.ParseUntil(*f.dst, time.Now()); err != nil {
			return nil, fail("delay."+f.name, ErrBadValue, "%v", err)
		}
	}
	return &c, nil
}

func (p *Policy) parseAuthz(raw json.RawMessage, a *Authz) error {
	m, err := object("authz", raw)
	if err != nil {
		return err
	}
	if a.Kind, err = str("authz.kind", m["kind"], true); err != nil {
		return err
	}
	switch a.Kind {
	case AuthzSMART:
		if err := onlyFields("authz", m, smartFields, p.credFields(smartCredFields),
			"the operator sets it in dynamic_config; a /dyn smart-on-fhir config sets only kind, fhir_base_url and client_id"); err != nil {
			return err
		}
		if a.FHIRBaseURL, err = p.urlField("authz.fhir_base_url", m["fhir_base_url"], true, RoleEHR); err != nil {
			return err
		}
		if a.ClientID, err = str("authz.client_id", m["client_id"], false); err != nil {
			return err
		}
		for _, f := range []struct {
			name string
			dst  *string
		}{{"client_secret", &a.ClientSecret}, {"private_key_alg", &a.PrivateKeyAlg}, {"private_key_id", &a.PrivateKeyID}} {
			if *f.dst, err = str("authz."+f.name, m[f.name], false); err != nil {
				return err
			}
		}
		if a.PrivateKey, err = inlineKey("authz.private_key", m["private_key"]); err != nil {
			return err
		}
	case AuthzMock:
		if !p.AllowMock {
			return fail("authz.kind", ErrBadValue, "authz mock is not allowed on this route (dynamic_config allow_mock)")
		}
		if err := onlyFields("authz", m, mockFields, nil, "a /dyn mock config sets only kind, patient, mrn and fhir_base_url"); err != nil {
			return err
		}
		if a.Patient, err = str("authz.patient", m["patient"], false); err != nil {
			return err
		}
		if a.MRN, err = strs("authz.mrn", m["mrn"]); err != nil {
			return err
		}
		if a.FHIRBaseURL, err = p.urlField("authz.fhir_base_url", m["fhir_base_url"], false, RoleEHR); err != nil {
			return err
		}
	default:
		allowed := AuthzSMART
		if p.AllowMock {
			allowed += " or " + AuthzMock
		}
		return fail("authz.kind", ErrBadValue, "%q is not allowed (%s)", a.Kind, allowed)
	}
	return nil
}

func (p *Policy) parseImages(raw json.RawMessage, im *Images) error {
	m, err := object("images", raw)
	if err != nil {
		return err
	}
	kind, err := str("images.kind", m["kind"], true)
	if err != nil {
		return err
	}
	if kind != ImagesDICOMweb {
		return fail("images.kind", ErrBadValue, "%q is not allowed: only dicomweb (a folder would expose this server's files)", kind)
	}
	if err := onlyFields("images", m, dicomwebFields, p.credFields(dicomwebCredField),
		"the operator sets it; a /dyn dicomweb config sets only kind, base_url and lookup"); err != nil {
		return err
	}
	if im.BaseURL, err = p.urlField("images.base_url", m["base_url"], true, RolePACS); err != nil {
		return err
	}
	if im.Lookup, err = str("images.lookup", m["lookup"], false); err != nil {
		return err
	}
	if im.Lookup != "" && im.Lookup != LookupStudiesByMRN {
		return fail("images.lookup", ErrBadValue, "only studies-by-mrn in /dyn configs")
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"username", &im.Username}, {"password", &im.Password}, {"bearer", &im.Bearer}} {
		if *f.dst, err = str("images."+f.name, m[f.name], false); err != nil {
			return err
		}
	}
	return nil
}

// credFields are the credential fields a URL may set: all of them where
// the route accepts URL credentials, none otherwise.
func (p *Policy) credFields(fields []string) []string {
	if p.AllowURLCredentials {
		return fields
	}
	return nil
}

// addCredentials fills in the operator's credentials for the tenant's
// hosts where the URL carries none.
func (p *Policy) addCredentials(t *Tenant) error {
	a := &t.Authz
	if a.Kind == AuthzSMART && a.ClientSecret == "" && a.PrivateKey == "" {
		if c, ok := p.credential(hostOf(a.FHIRBaseURL), false); ok {
			if a.ClientID != "" && a.ClientID != c.ClientID {
				return fail("authz.client_id", ErrBadValue, "this route's credentials for %s belong to client id %q", c.Host, c.ClientID)
			}
			a.ClientID, a.ClientSecret, a.PrivateKey = c.ClientID, c.ClientSecret, c.PrivateKey
		}
	}
	im := &t.Images
	if im.Username == "" && im.Password == "" && im.Bearer == "" {
		if c, ok := p.credential(hostOf(im.BaseURL), true); ok {
			im.Username, im.Password, im.Bearer = c.Username, c.Password, c.Token
		}
	}
	return nil
}

// credential finds the operator's PACS or EHR credential for host: an
// entry naming host:port exactly wins over one naming the host alone.
func (p *Policy) credential(host string, pacs bool) (Credential, bool) {
	var best Credential
	found := false
	for _, c := range p.Credentials {
		if c.forPACS() != pacs || !hostMatches(c.Host, host) {
			continue
		}
		if !found || strings.EqualFold(c.Host, host) {
			best, found = c, true
		}
	}
	return best, found
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}

// object decodes one JSON object (and nothing after it) into its fields.
func object(field string, raw []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	var m map[string]json.RawMessage
	if err := dec.Decode(&m); err != nil || m == nil {
		what := "the config"
		if field != "" {
			what = field
		}
		return nil, fail(field, ErrMalformed, "%s must be a JSON object", what)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fail(field, ErrMalformed, "trailing data after the JSON object")
	}
	return m, nil
}

// onlyFields refuses any field of m outside allowed; a field in
// credential is refused with ErrURLCredentials, any other with why.
func onlyFields(path string, m map[string]json.RawMessage, allowed, credential []string, why string) error {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if slices.Contains(allowed, k) || slices.Contains(credential, k) {
			continue
		}
		field := k
		if path != "" {
			field = path + "." + k
		}
		if slices.Contains(smartCredFields, k) || slices.Contains(dicomwebCredField, k) {
			return fail(field, ErrURLCredentials, "credentials are not accepted in /dyn URLs on this route: the operator sets them per host (dynamic_config credentials)")
		}
		return fail(field, ErrNotSettable, "not settable in a /dyn URL: %s", why)
	}
	return nil
}

// str decodes a string field (absent: ""), refusing placeholders and
// control characters.
func str(field string, raw json.RawMessage, required bool) (string, error) {
	if raw == nil {
		if required {
			return "", fail(field, ErrMalformed, "required")
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fail(field, ErrMalformed, "must be a string")
	}
	if required && s == "" {
		return "", fail(field, ErrMalformed, "required")
	}
	return s, plain(field, s)
}

// strs decodes a string or an array of strings.
func strs(field string, raw json.RawMessage) ([]string, error) {
	if raw == nil {
		return nil, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		var one string
		if json.Unmarshal(raw, &one) != nil {
			return nil, fail(field, ErrMalformed, "must be a string or an array of strings")
		}
		list = []string{one}
	}
	for i, s := range list {
		if err := plain(fmt.Sprintf("%s[%d]", field, i), s); err != nil {
			return nil, err
		}
	}
	return list, nil
}

// plain refuses what a tenant's plain value may not hold: placeholders
// (the modules resolve {env.…}, {file.…}), control characters, and
// unbounded lengths.
func plain(field, s string) error {
	if len(s) > maxValue {
		return fail(field, ErrBadValue, "longer than %d bytes", maxValue)
	}
	if strings.ContainsAny(s, "{}") {
		return fail(field, ErrBadValue, "placeholders are not allowed in /dyn configs")
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return fail(field, ErrBadValue, "control characters are not allowed")
	}
	return nil
}

// urlField decodes a URL field: absolute http(s), no credentials, a host
// allowed for role.
func (p *Policy) urlField(field string, raw json.RawMessage, required bool, role Role) (string, error) {
	s, err := str(field, raw, required)
	if err != nil || s == "" {
		return s, err
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fail(field, ErrBadValue, "not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		if u.Scheme == "" {
			return "", fail(field, ErrBadValue, "must be an absolute http(s) URL")
		}
		return "", fail(field, ErrBadValue, "URL scheme %q is not allowed (http or https only)", u.Scheme)
	}
	if u.User != nil {
		return "", fail(field, ErrBadValue, "credentials in URLs are not allowed")
	}
	if u.Host == "" || u.Opaque != "" {
		return "", fail(field, ErrBadValue, "must be an absolute http(s) URL")
	}
	if !p.Allowed(u.Host, role) {
		return "", fail(field, ErrOffAllowList, "host %q is not on this route's allow list for the %s", u.Host, role)
	}
	return s, nil
}

// inlineKey decodes a private_key given in the URL: the key itself (a JWK
// or PEM), never a file name, which would make the server open (or probe
// for) its own files.
func inlineKey(field string, raw json.RawMessage) (string, error) {
	if raw == nil {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fail(field, ErrMalformed, "must be a string")
	}
	t := strings.TrimSpace(s)
	switch {
	case strings.HasPrefix(t, "{"):
		// A JWK: a JSON object whose strings hold no placeholders.
		var v any
		if err := json.Unmarshal([]byte(t), &v); err != nil {
			return "", fail(field, ErrMalformed, "not a JWK (JSON)")
		}
		if err := noBraces(field, v); err != nil {
			return "", err
		}
	case strings.HasPrefix(t, "-----BEGIN "):
		if strings.ContainsAny(t, "{}") {
			return "", fail(field, ErrBadValue, "placeholders are not allowed in /dyn configs")
		}
	default:
		return "", fail(field, ErrBadValue, "must be the key itself (a JWK or PEM): file paths are not allowed in /dyn configs")
	}
	return s, nil
}

func noBraces(field string, v any) error {
	switch x := v.(type) {
	case map[string]any:
		for k, sub := range x {
			if strings.ContainsAny(k, "{}") {
				return fail(field, ErrBadValue, "placeholders are not allowed in /dyn configs")
			}
			if err := noBraces(field, sub); err != nil {
				return err
			}
		}
	case []any:
		for _, sub := range x {
			if err := noBraces(field, sub); err != nil {
				return err
			}
		}
	case string:
		if strings.ContainsAny(x, "{}") {
			return fail(field, ErrBadValue, "placeholders are not allowed in /dyn configs")
		}
	}
	return nil
}

// duration decodes a duration: a Go duration string ("10m") or a number
// of nanoseconds (as Caddy's JSON writes durations).
func duration(field string, raw json.RawMessage) (time.Duration, error) {
	var n int64
	if err := json.Unmarshal(raw, &n); err == nil {
		return time.Duration(n), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, fail(field, ErrMalformed, "must be a duration such as \"10m\"")
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fail(field, ErrMalformed, "must be a duration such as \"10m\"")
	}
	return d, nil
}
