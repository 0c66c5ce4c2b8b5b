package studytoken

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
)

// Presented is what a WADO-RS request presents alongside its study token:
// the route it arrived on, the caller's principal and the study its path
// names.
type Presented struct {
	Route     string
	Principal *authz.Principal
	StudyUID  string
	// Binding is BindingOf the route's mode, the request's bearer token
	// and Principal.
	Binding string
}

// Check opens token and checks that its claims grant the request: minted
// by this route, for the caller's patient (unless the principal is
// unrestricted), for the study in the path. Refusals are 403 *authz.Error
// whose message tells the client what to do; a token that does not open or
// has expired asks for a fresh search. The claims are returned whenever the
// token opened, refused or not, so the caller can audit the study.
func (k *Keyring) Check(token string, now time.Time, req Presented) (Claims, error) {
	c, err := k.Open(token, now)
	if err != nil {
		msg := "the study token is not valid; search ImagingStudy again for a fresh Endpoint"
		if errors.Is(err, ErrExpired) {
			msg = "the study token has expired; search ImagingStudy again for a fresh Endpoint"
		}
		return Claims{}, &authz.Error{Status: http.StatusForbidden, Code: "forbidden", Message: msg, Err: err}
	}
	if err := c.grants(req); err != nil {
		return c, err
	}
	if !req.Principal.Unrestricted && !k.bound(c.Binding, req.Binding) {
		return c, authz.Forbidden("this WADO-RS address was issued to another access token; search ImagingStudy again with the token you present for a fresh Endpoint")
	}
	return c, nil
}

// grants checks opened claims against the request.
func (c Claims) grants(req Presented) error {
	if c.Route != req.Route {
		return authz.Forbidden("the study token was issued for another route")
	}
	p := req.Principal
	switch {
	case p.Unrestricted:
	case p.Backend:
		if c.Patient == "" || !p.MaySee(c.Patient) {
			return authz.Forbidden("the study token was issued for a patient this backend client may not see")
		}
	case c.Patient == "" || c.Patient != p.Patient:
		return authz.Forbidden("the study token was issued for another patient than this access token's")
	}
	if req.StudyUID != c.StudyUID {
		return authz.Forbidden("the study in the path is not the study this address was issued for")
	}
	if !p.AllowsModalities(c.Modalities) {
		msg := "the access token's scopes do not allow this study's modalities (" + strings.Join(c.Modalities, ", ") + ")"
		if len(p.IgnoredScopes) > 0 {
			msg += "; ignored for a query this server does not understand: " + strings.Join(p.IgnoredScopes, " ")
		}
		return authz.Forbidden(msg)
	}
	return nil
}

// ExpiryFor is when a study token minted at now for principal p expires:
// ttl from now, never after the access token's own expiry. An access token
// with less than a whole second left (study tokens count seconds) is
// refused as expired: 401, so the client refreshes it rather than getting
// a server error.
func ExpiryFor(now time.Time, ttl time.Duration, p *authz.Principal) (time.Time, error) {
	exp := now.Add(ttl)
	if !p.Expires.IsZero() && p.Expires.Before(exp) {
		exp = p.Expires
	}
	if exp.Unix() <= now.Unix() {
		return time.Time{}, authz.Unauthorized("the access token has expired", authz.ErrExpired)
	}
	return exp, nil
}
