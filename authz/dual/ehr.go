package dual

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"golang.org/x/oauth2"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// maxBody bounds what the gateway reads from the EHR.
const maxBody = 1 << 20

// discoveryTTL is how long the EHR's smart-configuration is reused.
const discoveryTTL = 10 * time.Minute

// ehrConfig is the part of the EHR's smart-configuration the gateway uses.
type ehrConfig struct {
	Issuer                string `json:"issuer"`
	JWKSURI               string `json:"jwks_uri"`
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	TokenEndpoint         string `json:"token_endpoint"`
}

// ehr is the gateway's client side at the EHR.
type ehr struct {
	s      *settings
	client *http.Client

	mu      sync.Mutex
	conf    *ehrConfig
	confExp time.Time
	jwks    jwk.Set
	jwksAt  time.Time
}

var errEHR = errors.New("the EHR failed")

func (e *ehr) get(ctx context.Context, u, bearer string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("%w: %v", errEHR, err)
	}
	req.Header.Set("Accept", "application/json, application/fhir+json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errEHR, redactURL(u), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("%w: reading %s: %v", errEHR, redactURL(u), err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s: HTTP %d", errEHR, redactURL(u), resp.StatusCode)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%w: %s: not JSON: %v", errEHR, redactURL(u), err)
	}
	return nil
}

func redactURL(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i]
	}
	return u
}

// discover returns the EHR's endpoints, cached for discoveryTTL.
func (e *ehr) discover(ctx context.Context) (*ehrConfig, error) {
	e.mu.Lock()
	if e.conf != nil && time.Now().Before(e.confExp) {
		c := e.conf
		e.mu.Unlock()
		return c, nil
	}
	e.mu.Unlock()
	var c ehrConfig
	if err := e.get(ctx, e.s.fhirBase+"/.well-known/smart-configuration", "", &c); err != nil {
		return nil, err
	}
	for _, u := range []string{c.AuthorizationEndpoint, c.TokenEndpoint} {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			return nil, fmt.Errorf("%w: its smart-configuration lacks authorization_endpoint or token_endpoint", errEHR)
		}
	}
	e.mu.Lock()
	e.conf, e.confExp = &c, time.Now().Add(discoveryTTL)
	e.mu.Unlock()
	return &c, nil
}

func (e *ehr) oauth(c *ehrConfig, base string) *oauth2.Config {
	style := oauth2.AuthStyleInParams
	if e.s.clientSecret != "" {
		style = oauth2.AuthStyleInHeader
	}
	return &oauth2.Config{
		ClientID:     e.s.clientID,
		ClientSecret: e.s.clientSecret,
		Endpoint:     oauth2.Endpoint{AuthURL: c.AuthorizationEndpoint, TokenURL: c.TokenEndpoint, AuthStyle: style},
		RedirectURL:  base + "/oauth/ehr-callback",
		Scopes:       strings.Fields(e.s.ehrScope),
	}
}

// idClaims is what the gateway takes from a verified id_token.
type idClaims struct {
	Subject  string
	FHIRUser string
}

// verifyIDToken checks the id_token's signature against the EHR's JWKS
// (fetched again once when the kid is unknown), its issuer, audience
// (the gateway's client id), expiry and nonce.
func (e *ehr) verifyIDToken(ctx context.Context, c *ehrConfig, raw, nonce string) (*idClaims, error) {
	if c.JWKSURI == "" {
		return nil, fmt.Errorf("%w: an id_token came but the smart-configuration has no jwks_uri to verify it", errEHR)
	}
	var tok jwt.Token
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var set jwk.Set
		set, err = e.keySet(ctx, c.JWKSURI, attempt > 0)
		if err != nil {
			return nil, err
		}
		opts := []jwt.ParseOption{jwt.WithKeySet(set, jws.WithInferAlgorithmFromKey(true)), jwt.WithValidate(true),
			jwt.WithAudience(e.s.clientID), jwt.WithAcceptableSkew(30 * time.Second), jwt.WithRequiredClaim("exp")}
		if c.Issuer != "" {
			opts = append(opts, jwt.WithIssuer(c.Issuer))
		}
		tok, err = jwt.ParseString(raw, opts...)
		if err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("id_token refused: %w", err)
	}
	got, _ := tok.Get("nonce")
	if s, _ := got.(string); s == "" || s != nonce {
		return nil, errors.New("id_token refused: nonce does not match this flow")
	}
	out := &idClaims{Subject: tok.Subject()}
	if v, ok := tok.Get("fhirUser"); ok {
		out.FHIRUser, _ = v.(string)
	}
	return out, nil
}

// keySet returns the EHR's JWKS, fetching it when unknown or when refresh
// is asked and the last fetch is more than 10 s old.
func (e *ehr) keySet(ctx context.Context, u string, refresh bool) (jwk.Set, error) {
	e.mu.Lock()
	set, at := e.jwks, e.jwksAt
	e.mu.Unlock()
	if set != nil && (!refresh || time.Since(at) < 10*time.Second) {
		return set, nil
	}
	set, err := jwk.Fetch(ctx, u, jwk.WithHTTPClient(e.client))
	if err != nil {
		return nil, fmt.Errorf("%w: fetching its JWKS: %v", errEHR, err)
	}
	e.mu.Lock()
	e.jwks, e.jwksAt = set, time.Now()
	e.mu.Unlock()
	return set, nil
}

// fhirPatient is the part of a Patient or Practitioner the gateway reads.
type fhirPerson struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Name         []struct {
		Text   string   `json:"text"`
		Family string   `json:"family"`
		Given  []string `json:"given"`
	} `json:"name"`
	Identifier []struct {
		Use    string `json:"use"`
		System string `json:"system"`
		Value  string `json:"value"`
		Type   *struct {
			Coding []struct {
				System string `json:"system"`
				Code   string `json:"code"`
			} `json:"coding"`
		} `json:"type"`
	} `json:"identifier"`
}

func (p *fhirPerson) displayName() string {
	for _, n := range p.Name {
		if n.Text != "" {
			return n.Text
		}
		if s := strings.TrimSpace(strings.Join(append(slices.Clone(n.Given), n.Family), " ")); s != "" {
			return s
		}
	}
	return ""
}

// patientKeys picks the identifiers usable as PACS keys, as smart-on-fhir
// does: mrn_system when set, else type MR; never use "old"; each one a
// safe exact PACS key.
func (e *ehr) patientKeys(p *fhirPerson) []authz.Identifier {
	var out []authz.Identifier
	for _, id := range p.Identifier {
		if id.Use == "old" || pacskey.Check(id.Value) != nil {
			continue
		}
		ok := false
		if len(e.s.mrnSystems) > 0 {
			ok = slices.Contains(e.s.mrnSystems, id.System)
		} else if id.Type != nil {
			for _, c := range id.Type.Coding {
				ok = ok || c.Code == "MR" && (c.System == "" || c.System == "http://terminology.hl7.org/CodeSystem/v2-0203")
			}
		}
		x := authz.Identifier{System: id.System, Value: id.Value}
		if ok && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// readPerson reads {fhirBase}/{ref} (ref relative, or absolute under the
// EHR's FHIR base; anything else is refused) with the EHR access token.
func (e *ehr) readPerson(ctx context.Context, ref, token, wantType string) (*fhirPerson, error) {
	rel := ref
	if strings.Contains(ref, "://") {
		if !strings.HasPrefix(ref, e.s.fhirBase+"/") {
			return nil, fmt.Errorf("%s is not on the EHR's FHIR server", wantType)
		}
		rel = strings.TrimPrefix(ref, e.s.fhirBase+"/")
	}
	typ, id, ok := strings.Cut(rel, "/")
	if !ok || typ != wantType && wantType != "" || !isFHIRID(id) {
		return nil, fmt.Errorf("%q is not a %s reference", rel, wantType)
	}
	var p fhirPerson
	if err := e.get(ctx, e.s.fhirBase+"/"+typ+"/"+url.PathEscape(id), token, &p); err != nil {
		return nil, err
	}
	if p.ResourceType != typ || (p.ID != "" && p.ID != id) {
		return nil, fmt.Errorf("%w: answered a %s read with something else", errEHR, typ)
	}
	return &p, nil
}

func isFHIRID(s string) bool {
	_, ok := authz.PatientIDFromReference(s, "")
	return ok && !strings.Contains(s, "/")
}
