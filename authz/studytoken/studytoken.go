// Package studytoken mints and opens the capability token embedded in
// WADO-RS Endpoint addresses ({base}/wado/{token}/studies/...).
//
// A token is a JWE in compact serialization, alg "dir", enc "A256GCM", with a
// "kid" protected header naming the key. Its payload binds one study to one
// patient, one route and the access token (or grant) that searched, until
// an expiry, and is confidential: nothing about the patient shows in the
// URL, and the access token is present only as a keyed hash. Keys rotate: the current key mints, previous
// keys still open.
package studytoken

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwe"
)

// KeySize is the length in bytes of a study token key (AES-256).
const KeySize = 32

// MaxTokenLen is the longest token Open considers; Mint refuses claims that
// would produce a longer one.
const MaxTokenLen = 2048

// Sizes of the fixed A256GCM parts.
const (
	ivSize  = 12
	tagSize = 16
)

var (
	// ErrInvalid is wrapped by every Open failure other than expiry: a
	// malformed, tampered, foreign or unreadable token.
	ErrInvalid = errors.New("invalid study token")
	// ErrExpired is wrapped when an authentic token's exp has passed.
	ErrExpired = errors.New("study token expired")
)

// Claims is what a study token binds.
type Claims struct {
	// StudyUID is the Study Instance UID the token grants.
	StudyUID string
	// Patient is the FHIR patient id the token was minted for; empty for
	// routes without patient binding (disable_authz_checks).
	Patient string
	// Route names the configured route that minted the token.
	Route string
	// Expiry is when the token stops opening (second precision).
	Expiry time.Time
	// IssuedAt is when the token was minted (second precision).
	IssuedAt time.Time
	// Binding is the keyed hash (Keyring.Bind) of what the token is bound
	// to: the access token, or the grant (BindingOf). Empty only for
	// routes without patient binding.
	Binding string
	// Modalities, when set, are the modalities of the study a
	// modality-restricted access token was allowed to see; nil when the
	// token that searched had no modality restriction.
	Modalities []string
}

// wireClaims is the JSON payload. Pointers tell a missing claim from an
// empty one; Mint always writes all five.
type wireClaims struct {
	StudyUID *string `json:"uid"`
	Patient  *string `json:"pat"`
	Route    *string `json:"rt"`
	Expiry   *int64  `json:"exp"`
	IssuedAt *int64  `json:"iat"`
	Binding  *string `json:"bnd"`
	// Modalities is left out when unrestricted.
	Modalities []string `json:"mod,omitempty"`
}

type key struct {
	id  string
	raw []byte
}

// Keyring holds the key that mints tokens and the older keys that still
// open them. It is safe for concurrent use; its keys are fixed once built.
type Keyring struct {
	keys   []key // keys[0] is current
	opened openedCache
}

// NewKeyring builds a keyring: current mints and opens, previous only open.
// Every key must be exactly KeySize bytes.
func NewKeyring(current []byte, previous ...[]byte) (*Keyring, error) {
	all := append([][]byte{current}, previous...)
	k := &Keyring{keys: make([]key, 0, len(all))}
	for i, raw := range all {
		if len(raw) != KeySize {
			which := "current study token key"
			if i > 0 {
				which = fmt.Sprintf("previous study token key #%d", i)
			}
			return nil, fmt.Errorf("%s must be %d bytes, got %d bytes", which, KeySize, len(raw))
		}
		k.keys = append(k.keys, key{id: KeyID(raw), raw: bytes.Clone(raw)})
	}
	return k, nil
}

// RandomKeyring returns a keyring with one fresh random key. Its tokens die
// with the process and differ between replicas.
func RandomKeyring() (*Keyring, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("generating study token key: %w", err)
	}
	return NewKeyring(raw)
}

// ParseKey decodes a configured study_token_key: standard or URL-safe
// base64, padded or not, of exactly KeySize bytes. Errors never echo the
// value.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimRight(s, "=")
	s = strings.NewReplacer("-", "+", "_", "/").Replace(s)
	raw, err := base64.RawStdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("study_token_key must be base64 of %d bytes: %w", KeySize, err)
	}
	if len(raw) != KeySize {
		return nil, fmt.Errorf("study_token_key must be base64 of %d bytes, got %d bytes", KeySize, len(raw))
	}
	return raw, nil
}

// KeyID names a key in the kid header: the first 8 hex digits of its
// SHA-256. It identifies the key without revealing it.
func KeyID(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:4])
}

// CurrentKeyID is the kid of the key that mints new tokens.
func (k *Keyring) CurrentKeyID() string { return k.keys[0].id }

// Mint encrypts c under the current key. StudyUID and Expiry are required;
// a zero IssuedAt means now. The token uses only base64url characters and
// dots, so it can sit in a URL path segment as is.
func (k *Keyring) Mint(c Claims) (string, error) {
	if c.StudyUID == "" {
		return "", errors.New("minting study token: study UID is empty")
	}
	if c.Expiry.IsZero() {
		return "", errors.New("minting study token: expiry is not set")
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	exp, iat := c.Expiry.Unix(), c.IssuedAt.Unix()
	if exp <= iat {
		return "", errors.New("minting study token: expiry is not after issue time")
	}
	payload, err := json.Marshal(wireClaims{
		StudyUID: &c.StudyUID, Patient: &c.Patient, Route: &c.Route,
		Expiry: &exp, IssuedAt: &iat, Binding: &c.Binding, Modalities: c.Modalities,
	})
	if err != nil {
		return "", fmt.Errorf("minting study token: encoding claims: %w", err)
	}
	cur := k.keys[0]
	hdr := jwe.NewHeaders()
	if err := hdr.Set(jwe.KeyIDKey, cur.id); err != nil {
		return "", fmt.Errorf("minting study token: setting kid: %w", err)
	}
	tok, err := jwe.Encrypt(payload,
		jwe.WithKey(jwa.DIRECT, cur.raw),
		jwe.WithContentEncryption(jwa.A256GCM),
		jwe.WithProtectedHeaders(hdr),
		jwe.WithCompact(),
	)
	if err != nil {
		return "", fmt.Errorf("minting study token: %w", err)
	}
	if len(tok) > MaxTokenLen {
		return "", fmt.Errorf("minting study token: token would be %d bytes, more than %d", len(tok), MaxTokenLen)
	}
	return string(tok), nil
}

// Open authenticates and decrypts token with the key its kid names (every
// key when it names none) and checks it has not expired at now. Every
// failure wraps ErrInvalid or ErrExpired; messages never echo the token.
func (k *Keyring) Open(token string, now time.Time) (Claims, error) {
	if c, ok := k.opened.get(token); ok {
		return checkExpiry(c, now)
	}
	kid, err := checkShape(token)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var payload []byte
	tried := false
	for _, key := range k.keys {
		if kid != "" && kid != key.id {
			continue
		}
		tried = true
		p, err := jwe.Decrypt([]byte(token), jwe.WithKey(jwa.DIRECT, key.raw))
		if err == nil {
			payload = p
			break
		}
	}
	if !tried {
		return Claims{}, fmt.Errorf("%w: unknown key", ErrInvalid)
	}
	if payload == nil {
		return Claims{}, fmt.Errorf("%w: decryption failed", ErrInvalid)
	}
	var w wireClaims
	if err := json.Unmarshal(payload, &w); err != nil {
		return Claims{}, fmt.Errorf("%w: claims are not JSON: %w", ErrInvalid, err)
	}
	if w.StudyUID == nil || *w.StudyUID == "" || w.Patient == nil || w.Route == nil || w.Expiry == nil || w.IssuedAt == nil || w.Binding == nil {
		return Claims{}, fmt.Errorf("%w: missing claims", ErrInvalid)
	}
	c := Claims{
		StudyUID:   *w.StudyUID,
		Patient:    *w.Patient,
		Route:      *w.Route,
		Expiry:     time.Unix(*w.Expiry, 0),
		IssuedAt:   time.Unix(*w.IssuedAt, 0),
		Binding:    *w.Binding,
		Modalities: w.Modalities,
	}
	if _, err := checkExpiry(c, now); err != nil {
		return Claims{}, err
	}
	k.opened.put(token, c, now)
	return c, nil
}

// checkExpiry returns c if it is still valid at now.
func checkExpiry(c Claims, now time.Time) (Claims, error) {
	if !now.Before(c.Expiry) {
		return Claims{}, fmt.Errorf("%w at %s", ErrExpired, c.Expiry.UTC().Format(time.RFC3339))
	}
	return c, nil
}

// b64 is the only encoding a token part may use: base64url, unpadded,
// canonical (so one token has exactly one spelling).
var b64 = base64.RawURLEncoding.Strict()

// checkShape refuses anything that is not a compact dir/A256GCM JWE as Mint
// writes it, before any cryptography runs, and returns its kid ("" if none).
func checkShape(token string) (string, error) {
	if token == "" {
		return "", errors.New("empty")
	}
	if len(token) > MaxTokenLen {
		return "", fmt.Errorf("longer than %d bytes", MaxTokenLen)
	}
	// The decoder below skips \r and \n, so the alphabet is checked first.
	for i := 0; i < len(token); i++ {
		if c := token[i]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "", errors.New("contains a character outside base64url")
		}
	}
	parts := strings.Split(token, ".")
	if len(parts) != 5 {
		return "", fmt.Errorf("has %d parts, not 5", len(parts))
	}
	if parts[1] != "" {
		return "", errors.New("encrypted key part must be empty for alg dir")
	}
	for i, p := range parts {
		if i != 1 && p == "" {
			return "", fmt.Errorf("part %d is empty", i+1)
		}
	}
	hdrJSON, err := b64.DecodeString(parts[0])
	if err != nil {
		return "", errors.New("header is not base64url")
	}
	iv, err := b64.DecodeString(parts[2])
	if err != nil || len(iv) != ivSize {
		return "", errors.New("bad initialization vector")
	}
	if _, err := b64.DecodeString(parts[3]); err != nil {
		return "", errors.New("ciphertext is not base64url")
	}
	tag, err := b64.DecodeString(parts[4])
	if err != nil || len(tag) != tagSize {
		return "", errors.New("bad authentication tag")
	}
	return checkHeader(hdrJSON)
}

// checkHeader accepts exactly the protected header Mint writes: alg "dir",
// enc "A256GCM" and an optional kid. zip, crit and anything else are
// refused.
func checkHeader(hdrJSON []byte) (string, error) {
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil || hdr == nil {
		return "", errors.New("header is not a JSON object")
	}
	str := func(name string) (string, bool) {
		raw, ok := hdr[name]
		if !ok {
			return "", false
		}
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	}
	if alg, _ := str("alg"); alg != "dir" {
		return "", errors.New(`alg must be "dir"`)
	}
	if enc, _ := str("enc"); enc != "A256GCM" {
		return "", errors.New(`enc must be "A256GCM"`)
	}
	if _, ok := hdr["zip"]; ok {
		return "", errors.New("compressed tokens are refused")
	}
	kid := ""
	if _, ok := hdr["kid"]; ok {
		var ok2 bool
		kid, ok2 = str("kid")
		if !ok2 || kid == "" {
			return "", errors.New("kid must be a non-empty string")
		}
	}
	for name := range hdr {
		switch name {
		case "alg", "enc", "kid":
		default:
			return "", errors.New("unexpected header parameter")
		}
	}
	return kid, nil
}
