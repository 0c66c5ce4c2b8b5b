package smart

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
)

// claims are what the gateway reads from a token, by introspection or from
// a verified JWT.
type claims struct {
	active   bool
	scopes   []string
	patient  string
	fhirUser string
	clientID string
	sub      string
	iss      string
	exp      time.Time // zero: absent
	nbf      time.Time // zero: absent
	aud      []string
}

// parseIntrospection reads an RFC 7662 introspection response. It refuses
// anything that is not a JSON object with a boolean "active"; when active,
// the fields it reads must have their RFC 7662 / SMART types (strings,
// NumericDates, a string or array audience, a space-separated scope
// string, or an array of scope strings as some servers send).
func parseIntrospection(body []byte) (*claims, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("introspection response is not a JSON object: %w", err)
	}
	if raw == nil {
		return nil, errors.New("introspection response is not a JSON object")
	}
	if dec.More() {
		return nil, errors.New("introspection response has data after the JSON object")
	}
	activeRaw, ok := raw["active"]
	if !ok {
		return nil, errors.New(`introspection response has no "active"`)
	}
	c := &claims{}
	if err := json.Unmarshal(activeRaw, &c.active); err != nil || string(activeRaw) == "null" {
		return nil, errors.New(`introspection "active" is not a boolean`)
	}
	if !c.active {
		return c, nil
	}
	var err error
	if c.scopes, err = scopeField(raw["scope"]); err != nil {
		return nil, err
	}
	for name, dst := range map[string]*string{
		"patient": &c.patient, "fhirUser": &c.fhirUser, "client_id": &c.clientID, "sub": &c.sub, "iss": &c.iss,
	} {
		if *dst, err = stringField(name, raw[name]); err != nil {
			return nil, err
		}
	}
	if c.exp, err = numericDate("exp", raw["exp"]); err != nil {
		return nil, err
	}
	if c.nbf, err = numericDate("nbf", raw["nbf"]); err != nil {
		return nil, err
	}
	if c.aud, err = audienceField(raw["aud"]); err != nil {
		return nil, err
	}
	return c, nil
}

func isNull(v json.RawMessage) bool {
	return len(v) == 0 || string(v) == "null"
}

func stringField(name string, v json.RawMessage) (string, error) {
	if isNull(v) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", fmt.Errorf("introspection %q is not a string", name)
	}
	return s, nil
}

func scopeField(v json.RawMessage) ([]string, error) {
	if isNull(v) {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err == nil {
		return strings.Fields(s), nil
	}
	var list []string
	if err := json.Unmarshal(v, &list); err != nil {
		return nil, errors.New(`introspection "scope" is neither a string nor a list of strings`)
	}
	var out []string
	for _, s := range list {
		out = append(out, strings.Fields(s)...)
	}
	return out, nil
}

func audienceField(v json.RawMessage) ([]string, error) {
	if isNull(v) {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err == nil {
		return []string{s}, nil
	}
	var list []string
	if err := json.Unmarshal(v, &list); err != nil {
		return nil, errors.New(`introspection "aud" is neither a string nor a list of strings`)
	}
	return list, nil
}

// numericDate reads seconds since the epoch (RFC 7519 NumericDate).
func numericDate(name string, v json.RawMessage) (time.Time, error) {
	if isNull(v) {
		return time.Time{}, nil
	}
	var f float64
	if err := json.Unmarshal(v, &f); err != nil || math.IsNaN(f) || f < 0 || f > 1e11 {
		return time.Time{}, fmt.Errorf("introspection %q is not a NumericDate", name)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// introspect asks the EHR about token (RFC 7662), authenticated with the
// gateway's Backend Services token, or with HTTP Basic client_secret when
// no private key is configured. A refused backend token is renewed once.
func (a *Authorizer) introspect(ctx context.Context, token string) (*claims, *authz.Error) {
	const what = "introspection endpoint"
	endpoint, discovered, fail := a.endpoint(ctx, epIntrospection)
	if fail != nil {
		return nil, fail
	}
	body := url.Values{"token": {token}, "token_type_hint": {"access_token"}}.Encode()
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(body))
		if err != nil {
			return nil, badGateway(what, "URL is invalid", err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		// Introspection changes nothing at the EHR: let net/http replay it
		// on a fresh connection when a kept-alive one was closed under it
		// (a nil Idempotency-Key marks it idempotent and is not sent).
		req.Header["Idempotency-Key"] = nil
		var bt string
		if a.s.key != nil {
			if bt, fail = a.backendToken(ctx); fail != nil {
				return nil, fail
			}
			req.Header.Set("Authorization", "Bearer "+bt)
		} else {
			a.setBasicAuth(req)
		}
		resp, fail := a.do(ctx, what, req)
		if fail != nil {
			if discovered {
				a.invalidateDiscovery()
			}
			return nil, fail
		}
		switch resp.status {
		case http.StatusOK:
			c, err := parseIntrospection(resp.body)
			if err != nil {
				return nil, badGateway(what, "answered with something that is not an introspection response", err)
			}
			return c, nil
		case http.StatusUnauthorized, http.StatusForbidden:
			if bt != "" && attempt == 0 {
				// Our token may have been revoked or expired early.
				a.dropBackendToken(bt)
				continue
			}
			return nil, badGateway(what, fmt.Sprintf("refused the gateway's credentials: HTTP %d", resp.status), nil)
		case http.StatusNotFound:
			if discovered {
				a.invalidateDiscovery()
			}
		}
		return nil, statusError(what, resp.status, resp.header)
	}
}
