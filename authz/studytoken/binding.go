package studytoken

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"

	"github.com/smart-imaging/smart_imaging/authz"
)

// Binding is what a study token is bound to besides study, patient and
// route (the study_token_binding option).
type Binding string

const (
	// BindToken binds a study token to the access token that searched:
	// another token, even of the same patient, app and user, does not open
	// it, and a refreshed token needs a new search. The default.
	BindToken Binding = "token"
	// BindGrant binds it to the grant: client_id, user (sub or fhirUser)
	// and patient. Addresses survive a token refresh; another app or user
	// of the same patient still cannot use them.
	BindGrant Binding = "grant"
)

// ParseBinding reads a study_token_binding value ("" is BindToken).
func ParseBinding(s string) (Binding, error) {
	switch Binding(s) {
	case "", BindToken:
		return BindToken, nil
	case BindGrant:
		return BindGrant, nil
	}
	return "", fmt.Errorf("study_token_binding: %q is not token or grant", s)
}

// bindingLabel separates the binding key from the encryption key.
const bindingLabel = "smart-imaging study token binding v1"

// BindingOf is the material a study token is bound to under mode: the
// bearer token, or the principal's grant. It is empty for an unrestricted
// principal (an open route needs no token). It holds the token: hash it (Keyring.Bind), never
// store or log it.
func BindingOf(mode Binding, bearer string, p *authz.Principal) string {
	if p == nil || p.Unrestricted {
		return ""
	}
	if mode == BindGrant {
		patient := p.Patient
		if p.Backend {
			// A backend grant has no patient; the study token's own
			// patient claim binds the patient.
			patient = ""
		}
		return "grant\x00" + p.ClientID + "\x00" + p.User + "\x00" + patient
	}
	// Without a bearer (authz mock) the token is bound to presenting
	// none: a request with a bearer does not match it.
	return "token\x00" + bearer
}

// Bind returns the keyed hash of material under the current key: what
// Claims.Binding holds. Empty material binds nothing ("").
func (k *Keyring) Bind(material string) string {
	if material == "" {
		return ""
	}
	return bindWith(k.keys[0].raw, material)
}

func bindWith(raw []byte, material string) string {
	kdf := hmac.New(sha256.New, raw)
	kdf.Write([]byte(bindingLabel))
	mac := hmac.New(sha256.New, kdf.Sum(nil))
	mac.Write([]byte(material))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:16])
}

// bound reports whether binding is the hash of material under one of the
// keyring's keys (a token minted before a rotation stays bound).
func (k *Keyring) bound(binding, material string) bool {
	if binding == "" || material == "" {
		return false
	}
	ok := false
	for _, key := range k.keys {
		if hmac.Equal([]byte(bindWith(key.raw, material)), []byte(binding)) {
			ok = true
		}
	}
	return ok
}
