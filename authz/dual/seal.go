package dual

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwe"
)

// Everything the dual-launch server hands out is sealed: a JWE in compact
// form, alg "dir", enc "A256GCM" (authenticated encryption, so a sealed
// value is both confidential and tamper-evident), under a key derived from
// signing_key for one purpose only. An authorization code can therefore
// never be presented as an access token or a session cookie, and the
// reverse, even though one key protects all three.

// purpose names what a sealed value is; it selects the derived key and is
// also checked inside the payload.
type purpose string

const (
	purposeSession purpose = "session"      // the browser's flow cookie
	purposeCode    purpose = "code"         // authorization code
	purposeAccess  purpose = "access-token" // issued access token
)

// maxSealedLen bounds what open considers (cookies and headers are small).
const maxSealedLen = 8192

var (
	// ErrInvalid is wrapped by every failure to open a sealed value that is
	// not an expiry: malformed, tampered, foreign key or wrong purpose.
	ErrInvalid = errors.New("invalid or foreign value")
	// ErrExpired is wrapped when an authentic value's expiry has passed.
	ErrExpired = errors.New("expired")
)

// sealer seals and opens values for each purpose.
type sealer struct {
	keys map[purpose][]byte
}

func newSealer(secret []byte) (*sealer, error) {
	if len(secret) < 32 {
		return nil, fmt.Errorf("signing_key: want at least 32 bytes, got %d", len(secret))
	}
	s := &sealer{keys: map[purpose][]byte{}}
	for _, p := range []purpose{purposeSession, purposeCode, purposeAccess} {
		k, err := hkdf.Key(sha256.New, secret, nil, "smart_imaging dual-launch "+string(p), 32)
		if err != nil {
			return nil, fmt.Errorf("deriving the %s key: %w", p, err)
		}
		s.keys[p] = k
	}
	return s, nil
}

// envelope is what every sealed payload carries besides its body.
type envelope struct {
	Purpose purpose         `json:"typ"`
	Expiry  int64           `json:"exp"`
	Body    json.RawMessage `json:"body"`
}

func (s *sealer) seal(p purpose, exp time.Time, body any) (string, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return "", fmt.Errorf("sealing %s: %w", p, err)
	}
	payload, err := json.Marshal(envelope{Purpose: p, Expiry: exp.Unix(), Body: b})
	if err != nil {
		return "", fmt.Errorf("sealing %s: %w", p, err)
	}
	out, err := jwe.Encrypt(payload, jwe.WithKey(jwa.DIRECT, s.keys[p]), jwe.WithContentEncryption(jwa.A256GCM), jwe.WithCompact())
	if err != nil {
		return "", fmt.Errorf("sealing %s: %w", p, err)
	}
	return string(out), nil
}

// open decrypts v as a value of purpose p into body and returns its
// expiry. Failures wrap ErrInvalid or ErrExpired.
func (s *sealer) open(p purpose, v string, now time.Time, body any) (time.Time, error) {
	if v == "" || len(v) > maxSealedLen {
		return time.Time{}, ErrInvalid
	}
	payload, err := jwe.Decrypt([]byte(v), jwe.WithKey(jwa.DIRECT, s.keys[p]))
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %s does not open", ErrInvalid, p)
	}
	var env envelope
	if err := json.Unmarshal(payload, &env); err != nil || env.Purpose != p || env.Expiry == 0 {
		return time.Time{}, fmt.Errorf("%w: not a %s", ErrInvalid, p)
	}
	exp := time.Unix(env.Expiry, 0)
	if !now.Before(exp) {
		return exp, fmt.Errorf("%s %w", p, ErrExpired)
	}
	if err := json.Unmarshal(env.Body, body); err != nil {
		return time.Time{}, fmt.Errorf("%w: %s body", ErrInvalid, p)
	}
	return exp, nil
}
