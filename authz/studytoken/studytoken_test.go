package studytoken

import (
	"bytes"
	"compress/flate"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
)

var (
	keyA = bytes.Repeat([]byte{0xA1}, KeySize)
	keyB = bytes.Repeat([]byte{0xB2}, KeySize)
	keyC = bytes.Repeat([]byte{0xC3}, KeySize)

	// now is a fixed clock for every test.
	now = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
)

func sampleClaims() Claims {
	return Claims{
		StudyUID: "1.2.840.113619.2.55.3.604688119.969.1268071029.320",
		Patient:  "87a339d0-8cae-418e-89c7-8651e6aab3c6",
		Route:    "smart-sandbox",
		IssuedAt: now,
		Expiry:   now.Add(time.Hour),
		Binding:  mustKeyringNoT(keyA).Bind(BindingOf(BindToken, "access-token-1", &authz.Principal{Patient: "87a339d0-8cae-418e-89c7-8651e6aab3c6"})),
	}
}

func mustKeyringNoT(key []byte) *Keyring {
	k, err := NewKeyring(key)
	if err != nil {
		panic(err)
	}
	return k
}

func mustKeyring(t testing.TB, current []byte, previous ...[]byte) *Keyring {
	t.Helper()
	k, err := NewKeyring(current, previous...)
	if err != nil {
		t.Fatalf("NewKeyring: %v", err)
	}
	return k
}

func mustMint(t testing.TB, k *Keyring, c Claims) string {
	t.Helper()
	tok, err := k.Mint(c)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	return tok
}

// checkOpenErr asserts err is an Open failure of the wanted kind and that
// it is exactly one of the two sentinels.
func checkOpenErr(t *testing.T, err error, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("Open succeeded, want %v", want)
	}
	if !errors.Is(err, want) {
		t.Fatalf("Open error = %v, want it to wrap %v", err, want)
	}
	if errors.Is(err, ErrInvalid) == errors.Is(err, ErrExpired) {
		t.Fatalf("Open error %v must wrap exactly one of ErrInvalid, ErrExpired", err)
	}
}

var urlSafe = regexp.MustCompile(`^[A-Za-z0-9_-]+\.\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)

func TestRoundTrip(t *testing.T) {
	k := mustKeyring(t, keyA)
	for _, c := range []Claims{
		sampleClaims(),
		{StudyUID: "1.2.3", Route: "open", IssuedAt: now, Expiry: now.Add(time.Second)}, // unrestricted: no patient
	} {
		tok := mustMint(t, k, c)
		got, err := k.Open(tok, now)
		if err != nil {
			t.Fatalf("Open(minted token): %v", err)
		}
		if got.StudyUID != c.StudyUID || got.Patient != c.Patient || got.Route != c.Route ||
			!got.Expiry.Equal(c.Expiry) || !got.IssuedAt.Equal(c.IssuedAt) {
			t.Errorf("Open = %+v, want %+v", got, c)
		}
	}
}

func TestTokenIsURLPathSafeAndOpaque(t *testing.T) {
	k := mustKeyring(t, keyA)
	c := sampleClaims()
	tok := mustMint(t, k, c)
	if !urlSafe.MatchString(tok) {
		t.Fatalf("token %q is not five base64url parts with an empty key part", tok)
	}
	if url.PathEscape(tok) != tok {
		t.Errorf("url.PathEscape changes the token: %q", url.PathEscape(tok))
	}
	// Nothing about the patient or study is readable from the token, even
	// after base64url-decoding each part.
	var clear strings.Builder
	clear.WriteString(tok)
	for _, p := range strings.Split(tok, ".") {
		b, _ := base64.RawURLEncoding.DecodeString(p)
		clear.Write(b)
	}
	for _, secret := range []string{c.Patient, c.StudyUID, c.Route} {
		if strings.Contains(clear.String(), secret) {
			t.Errorf("token reveals %q", secret)
		}
	}
	hdr := decodeHeader(t, tok)
	want := map[string]string{"alg": "dir", "enc": "A256GCM", "kid": KeyID(keyA)}
	if len(hdr) != len(want) {
		t.Errorf("header = %v, want %v", hdr, want)
	}
	for name, v := range want {
		if hdr[name] != v {
			t.Errorf("header %s = %q, want %q", name, hdr[name], v)
		}
	}
	if len(KeyID(keyA)) != 8 || KeyID(keyA) == KeyID(keyB) {
		t.Errorf("KeyID(keyA) = %q, KeyID(keyB) = %q: want 8 distinct hex digits", KeyID(keyA), KeyID(keyB))
	}
	if k.CurrentKeyID() != KeyID(keyA) {
		t.Errorf("CurrentKeyID = %q, want %q", k.CurrentKeyID(), KeyID(keyA))
	}
}

func decodeHeader(t *testing.T, tok string) map[string]string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]string
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestFreshIVPerToken(t *testing.T) {
	k := mustKeyring(t, keyA)
	a := mustMint(t, k, sampleClaims())
	b := mustMint(t, k, sampleClaims())
	if strings.Split(a, ".")[2] == strings.Split(b, ".")[2] {
		t.Fatal("two tokens share an IV: AES-GCM nonce reuse")
	}
}

func TestRotation(t *testing.T) {
	old := mustKeyring(t, keyA)
	tok := mustMint(t, old, sampleClaims())

	rotated := mustKeyring(t, keyB, keyA)
	if _, err := rotated.Open(tok, now); err != nil {
		t.Fatalf("token of the previous key does not open after rotation: %v", err)
	}
	fresh := mustMint(t, rotated, sampleClaims())
	if got := decodeHeader(t, fresh)["kid"]; got != KeyID(keyB) {
		t.Errorf("after rotation new tokens use kid %q, want the new key's %q", got, KeyID(keyB))
	}
	if _, err := old.Open(fresh, now); !errors.Is(err, ErrInvalid) {
		t.Errorf("a keyring without the new key opened its token: err = %v", err)
	}

	retired := mustKeyring(t, keyB, keyC)
	_, err := retired.Open(tok, now)
	checkOpenErr(t, err, ErrInvalid)
	if !strings.Contains(err.Error(), "unknown key") {
		t.Errorf("error %q does not say the key is unknown", err)
	}
}

func TestWrongKey(t *testing.T) {
	tok := mustMint(t, mustKeyring(t, keyA), sampleClaims())
	_, err := mustKeyring(t, keyB).Open(tok, now)
	checkOpenErr(t, err, ErrInvalid)

	// A token whose kid names a key we hold but which was encrypted under
	// another key fails authentication.
	forged := craft(t, keyB, fmt.Sprintf(`{"alg":"dir","enc":"A256GCM","kid":%q}`, KeyID(keyA)), claimsJSON(sampleClaims()))
	_, err = mustKeyring(t, keyA).Open(forged, now)
	checkOpenErr(t, err, ErrInvalid)
}

func TestExpiry(t *testing.T) {
	k := mustKeyring(t, keyA)
	c := sampleClaims()
	tok := mustMint(t, k, c)
	if _, err := k.Open(tok, c.Expiry.Add(-time.Second)); err != nil {
		t.Fatalf("one second before exp: %v", err)
	}
	for _, at := range []time.Time{c.Expiry, c.Expiry.Add(time.Nanosecond), c.Expiry.Add(24 * time.Hour)} {
		_, err := k.Open(tok, at)
		checkOpenErr(t, err, ErrExpired)
	}
}

// flip returns tok with one bit changed in the decoded bytes of part i at
// byte offset off (from the end when negative), re-encoded canonically.
func flip(t testing.TB, tok string, i, off int) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += len(b)
	}
	b[off] ^= 0x01
	parts[i] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

func TestTamperEveryPart(t *testing.T) {
	k := mustKeyring(t, keyA)
	tok := mustMint(t, k, sampleClaims())
	names := map[int]string{0: "header", 2: "iv", 3: "ciphertext", 4: "tag"}
	for part, name := range names {
		for _, off := range []int{0, 1, -2, -1} {
			t.Run(fmt.Sprintf("%s[%d]", name, off), func(t *testing.T) {
				bad := flip(t, tok, part, off)
				if bad == tok {
					t.Fatal("tampering left the token unchanged")
				}
				_, err := k.Open(bad, now)
				checkOpenErr(t, err, ErrInvalid)
			})
		}
	}
	// Every single-character substitution anywhere in the string fails too.
	for i := 0; i < len(tok); i++ {
		if tok[i] == '.' {
			continue
		}
		c := byte('A')
		if tok[i] == 'A' {
			c = 'B'
		}
		bad := tok[:i] + string(c) + tok[i+1:]
		if _, err := k.Open(bad, now); err == nil {
			t.Fatalf("token with byte %d changed opened", i)
		}
	}
	// An encrypted key where dir has none.
	parts := strings.Split(tok, ".")
	parts[1] = "AAAA"
	_, err := k.Open(strings.Join(parts, "."), now)
	checkOpenErr(t, err, ErrInvalid)
}

// craft builds a compact JWE by hand: AES-256-GCM under key with the given
// protected header, authenticated as the JWE spec says, so only header
// checks can reject it.
func craft(t testing.TB, key []byte, header string, payload []byte) string {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	iv := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(iv); err != nil {
		t.Fatal(err)
	}
	h := base64.RawURLEncoding.EncodeToString([]byte(header))
	sealed := gcm.Seal(nil, iv, payload, []byte(h))
	ct, tag := sealed[:len(sealed)-gcm.Overhead()], sealed[len(sealed)-gcm.Overhead():]
	enc := base64.RawURLEncoding.EncodeToString
	return h + ".." + enc(iv) + "." + enc(ct) + "." + enc(tag)
}

func claimsJSON(c Claims) []byte {
	b, _ := json.Marshal(map[string]any{
		"uid": c.StudyUID, "pat": c.Patient, "rt": c.Route,
		"exp": c.Expiry.Unix(), "iat": c.IssuedAt.Unix(), "bnd": c.Binding,
	})
	return b
}

func TestCraftedHeaders(t *testing.T) {
	k := mustKeyring(t, keyA)
	kid := KeyID(keyA)
	payload := claimsJSON(sampleClaims())

	// The crafting helper produces tokens Open accepts when the header is
	// right, so the refusals below are the header checks at work.
	for _, good := range []string{
		fmt.Sprintf(`{"alg":"dir","enc":"A256GCM","kid":%q}`, kid),
		`{"alg":"dir","enc":"A256GCM"}`, // no kid: every key is tried
		fmt.Sprintf(`{"kid":%q,"enc":"A256GCM","alg":"dir"}`, kid),
	} {
		if _, err := k.Open(craft(t, keyA, good, payload), now); err != nil {
			t.Fatalf("hand-made token with header %s: %v", good, err)
		}
	}

	// A compressed payload that would inflate to valid claims is refused all
	// the same: no decompression of attacker input.
	var deflated bytes.Buffer
	fw, _ := flate.NewWriter(&deflated, flate.BestCompression)
	fw.Write(payload)
	fw.Close()
	_, err := k.Open(craft(t, keyA, fmt.Sprintf(`{"alg":"dir","enc":"A256GCM","zip":"DEF","kid":%q}`, kid), deflated.Bytes()), now)
	checkOpenErr(t, err, ErrInvalid)

	for name, hdr := range map[string]string{
		"alg none":        fmt.Sprintf(`{"alg":"none","enc":"A256GCM","kid":%q}`, kid),
		"alg A256KW":      fmt.Sprintf(`{"alg":"A256KW","enc":"A256GCM","kid":%q}`, kid),
		"alg HS256":       fmt.Sprintf(`{"alg":"HS256","enc":"A256GCM","kid":%q}`, kid),
		"alg DIR":         fmt.Sprintf(`{"alg":"DIR","enc":"A256GCM","kid":%q}`, kid),
		"alg missing":     fmt.Sprintf(`{"enc":"A256GCM","kid":%q}`, kid),
		"alg not string":  fmt.Sprintf(`{"alg":["dir"],"enc":"A256GCM","kid":%q}`, kid),
		"enc A128GCM":     fmt.Sprintf(`{"alg":"dir","enc":"A128GCM","kid":%q}`, kid),
		"enc A256CBC":     fmt.Sprintf(`{"alg":"dir","enc":"A256CBC-HS512","kid":%q}`, kid),
		"enc missing":     fmt.Sprintf(`{"alg":"dir","kid":%q}`, kid),
		"zip":             fmt.Sprintf(`{"alg":"dir","enc":"A256GCM","zip":"DEF","kid":%q}`, kid),
		"crit":            fmt.Sprintf(`{"alg":"dir","enc":"A256GCM","crit":["exp"],"exp":1,"kid":%q}`, kid),
		"extra param":     fmt.Sprintf(`{"alg":"dir","enc":"A256GCM","jku":"https://evil","kid":%q}`, kid),
		"Alg case":        fmt.Sprintf(`{"Alg":"dir","enc":"A256GCM","kid":%q}`, kid),
		"kid number":      `{"alg":"dir","enc":"A256GCM","kid":1}`,
		"kid empty":       `{"alg":"dir","enc":"A256GCM","kid":""}`,
		"kid unknown":     `{"alg":"dir","enc":"A256GCM","kid":"00000000"}`,
		"header array":    `["dir"]`,
		"header null":     `null`,
		"header not json": `alg=dir`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := k.Open(craft(t, keyA, hdr, payload), now)
			checkOpenErr(t, err, ErrInvalid)
		})
	}
}

func TestMissingClaims(t *testing.T) {
	k := mustKeyring(t, keyA)
	hdr := fmt.Sprintf(`{"alg":"dir","enc":"A256GCM","kid":%q}`, KeyID(keyA))
	exp, iat := now.Add(time.Hour).Unix(), now.Unix()
	for name, payload := range map[string]string{
		"no uid":       fmt.Sprintf(`{"pat":"p","rt":"r","exp":%d,"iat":%d}`, exp, iat),
		"empty uid":    fmt.Sprintf(`{"uid":"","pat":"p","rt":"r","exp":%d,"iat":%d}`, exp, iat),
		"no pat":       fmt.Sprintf(`{"uid":"1.2","rt":"r","exp":%d,"iat":%d}`, exp, iat),
		"no rt":        fmt.Sprintf(`{"uid":"1.2","pat":"p","exp":%d,"iat":%d}`, exp, iat),
		"no exp":       fmt.Sprintf(`{"uid":"1.2","pat":"p","rt":"r","iat":%d}`, iat),
		"no iat":       fmt.Sprintf(`{"uid":"1.2","pat":"p","rt":"r","exp":%d}`, exp),
		"exp string":   fmt.Sprintf(`{"uid":"1.2","pat":"p","rt":"r","exp":"%d","iat":%d}`, exp, iat),
		"exp fraction": fmt.Sprintf(`{"uid":"1.2","pat":"p","rt":"r","exp":%d.5,"iat":%d}`, exp, iat),
		"null uid":     fmt.Sprintf(`{"uid":null,"pat":"p","rt":"r","exp":%d,"iat":%d}`, exp, iat),
		"not json":     "hello",
		"array":        "[]",
		"empty":        "",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := k.Open(craft(t, keyA, hdr, []byte(payload)), now)
			checkOpenErr(t, err, ErrInvalid)
		})
	}
}

func TestGarbage(t *testing.T) {
	k := mustKeyring(t, keyA)
	tok := mustMint(t, k, sampleClaims())
	parts := strings.Split(tok, ".")
	std := strings.NewReplacer("-", "+", "_", "/")
	for name, in := range map[string]string{
		"empty":           "",
		"dot":             ".",
		"four dots":       "....",
		"letters":         "a.b.c.d.e",
		"three parts":     parts[0] + "." + parts[2] + "." + parts[3],
		"six parts":       tok + ".AAAA",
		"trailing dot":    tok + ".",
		"too long":        tok + strings.Repeat("A", MaxTokenLen),
		"padded":          tok + "==",
		"padded part":     parts[0] + ".." + parts[2] + "=." + parts[3] + "." + parts[4],
		"spaces":          " " + tok + " ",
		"newline":         tok + "\n",
		"std alphabet":    std.Replace(tok),
		"percent encoded": strings.ReplaceAll(tok, ".", "%2E"),
		"json form":       `{"protected":"` + parts[0] + `","iv":"` + parts[2] + `","ciphertext":"` + parts[3] + `","tag":"` + parts[4] + `"}`,
		"short iv":        parts[0] + "..AAAA." + parts[3] + "." + parts[4],
		"short tag":       parts[0] + ".." + parts[2] + "." + parts[3] + ".AAAA",
		"empty ct":        parts[0] + ".." + parts[2] + ".." + parts[4],
		"nul":             "\x00\x00\x00\x00",
		"utf8":            "é.é.é.é.é",
		"jws":             "eyJhbGciOiJIUzI1NiJ9.eyJ1aWQiOiIxIn0.c2ln",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := k.Open(in, now)
			// Strings that are only the real token in a different spelling
			// (std alphabet when it has no - or _) may not differ at all.
			if in == tok {
				return
			}
			checkOpenErr(t, err, ErrInvalid)
		})
	}
}

func TestNonCanonicalBase64Refused(t *testing.T) {
	k := mustKeyring(t, keyA)
	tok := mustMint(t, k, sampleClaims())
	parts := strings.Split(tok, ".")
	// The 16-byte tag's last base64 character carries 4 unused bits; setting
	// them decodes leniently to the same tag, but is another spelling.
	last := parts[4][len(parts[4])-1]
	i := strings.IndexByte(alphabet, last)
	if i%16 != 0 {
		t.Fatalf("tag does not end in a character with zero padding bits: %q", last)
	}
	parts[4] = parts[4][:len(parts[4])-1] + string(alphabet[i+1])
	_, err := k.Open(strings.Join(parts, "."), now)
	checkOpenErr(t, err, ErrInvalid)
}

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func TestMintRefuses(t *testing.T) {
	k := mustKeyring(t, keyA)
	for name, c := range map[string]Claims{
		"no uid":            {Patient: "p", Expiry: now.Add(time.Hour)},
		"no expiry":         {StudyUID: "1.2"},
		"expiry before iat": {StudyUID: "1.2", IssuedAt: now, Expiry: now.Add(-time.Second)},
		"expiry at iat":     {StudyUID: "1.2", IssuedAt: now, Expiry: now},
		"too long":          {StudyUID: strings.Repeat("1.", 800), IssuedAt: now, Expiry: now.Add(time.Hour)},
	} {
		if tok, err := k.Mint(c); err == nil {
			t.Errorf("%s: Mint = %q, want an error", name, tok)
		}
	}
	// A zero IssuedAt is the current time.
	tok := mustMint(t, k, Claims{StudyUID: "1.2", Expiry: time.Now().Add(time.Hour)})
	c, err := k.Open(tok, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(c.IssuedAt); d < 0 || d > time.Minute {
		t.Errorf("IssuedAt = %v, want about now", c.IssuedAt)
	}
}

func TestNewKeyring(t *testing.T) {
	if _, err := NewKeyring(make([]byte, 16)); err == nil || !strings.Contains(err.Error(), "got 16 bytes") {
		t.Errorf("16-byte current key: err = %v, want one naming the length", err)
	}
	if _, err := NewKeyring(keyA, keyB, make([]byte, 33)); err == nil ||
		!strings.Contains(err.Error(), "got 33 bytes") || !strings.Contains(err.Error(), "#2") {
		t.Errorf("33-byte second previous key: err = %v, want one naming the key and its length", err)
	}
	if _, err := NewKeyring(nil); err == nil {
		t.Error("nil key accepted")
	}
	// The keyring keeps its own copy of the key.
	raw := bytes.Clone(keyA)
	k := mustKeyring(t, raw)
	tok := mustMint(t, k, sampleClaims())
	raw[0] ^= 0xff
	if _, err := k.Open(tok, now); err != nil {
		t.Errorf("changing the caller's slice broke the keyring: %v", err)
	}
}

func TestRandomKeyring(t *testing.T) {
	a, err := RandomKeyring()
	if err != nil {
		t.Fatal(err)
	}
	b, err := RandomKeyring()
	if err != nil {
		t.Fatal(err)
	}
	tok := mustMint(t, a, sampleClaims())
	if _, err := a.Open(tok, now); err != nil {
		t.Fatalf("random keyring cannot open its own token: %v", err)
	}
	if _, err := b.Open(tok, now); err == nil {
		t.Fatal("two random keyrings share a key")
	}
}

func TestParseKey(t *testing.T) {
	// Bytes chosen so that the encodings contain + / (std) and - _ (url).
	raw := make([]byte, KeySize)
	for i := range raw {
		raw[i] = byte(0xF8 + i%8)
	}
	for _, s := range []string{
		base64.StdEncoding.EncodeToString(raw),
		base64.RawStdEncoding.EncodeToString(raw),
		base64.URLEncoding.EncodeToString(raw),
		base64.RawURLEncoding.EncodeToString(raw),
		" " + base64.StdEncoding.EncodeToString(raw) + "\n",
	} {
		got, err := ParseKey(s)
		if err != nil {
			t.Errorf("ParseKey(%q): %v", s, err)
			continue
		}
		if !bytes.Equal(got, raw) {
			t.Errorf("ParseKey(%q) = %x, want %x", s, got, raw)
		}
	}
	if !strings.ContainsAny(base64.StdEncoding.EncodeToString(raw), "+/") {
		t.Fatal("test key does not exercise the standard alphabet")
	}

	_, err := ParseKey(base64.StdEncoding.EncodeToString(raw[:31]))
	if err == nil || err.Error() != "study_token_key must be base64 of 32 bytes, got 31 bytes" {
		t.Errorf("31-byte key: err = %v", err)
	}
	_, err = ParseKey(base64.StdEncoding.EncodeToString(append(raw, 1)))
	if err == nil || !strings.Contains(err.Error(), "got 33 bytes") {
		t.Errorf("33-byte key: err = %v", err)
	}
	for _, bad := range []string{"", "not base64 at all!", "c2VjcmV0*c2VjcmV0"} {
		_, err := ParseKey(bad)
		if err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
			continue
		}
		if bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("ParseKey error %q echoes the key", err)
		}
	}
}

// mintedFile lists tokens that Mint produced under keyA and keyB for the
// claims in mintedClaims. Mint picks a random IV, so a token minted inside
// FuzzOpen would differ between the fuzzing coordinator and its workers;
// fixed tokens let every process know exactly which strings may open.
// Regenerate with: go test ./authz/studytoken/ -run TestMintedFile -update
const mintedFile = "testdata/minted-tokens.txt"

var update = flag.Bool("update", false, "rewrite "+mintedFile)

func mintedClaims() []Claims {
	return []Claims{
		sampleClaims(),
		{StudyUID: "1.2.3", Route: "open", IssuedAt: now, Expiry: now.Add(time.Minute)},
	}
}

func readMinted(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile(mintedFile)
	if err != nil {
		t.Fatal(err)
	}
	var toks []string
	for _, line := range strings.Split(string(b), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			toks = append(toks, line)
		}
	}
	return toks
}

// TestMintedFile checks the fixed fuzz tokens are genuine: each opens under
// its key to the claims it was minted for.
func TestMintedFile(t *testing.T) {
	keys := [][]byte{keyA, keyB}
	if *update {
		var out strings.Builder
		out.WriteString("# Tokens minted by Mint for FuzzOpen; see TestMintedFile.\n")
		for _, key := range keys {
			for _, c := range mintedClaims() {
				out.WriteString(mustMint(t, mustKeyring(t, key), c) + "\n")
			}
		}
		if err := os.WriteFile(mintedFile, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	toks := readMinted(t)
	if len(toks) != len(keys)*len(mintedClaims()) {
		t.Fatalf("%s has %d tokens, want %d", mintedFile, len(toks), len(keys)*len(mintedClaims()))
	}
	for i, tok := range toks {
		key, want := keys[i/len(mintedClaims())], mintedClaims()[i%len(mintedClaims())]
		got, err := mustKeyring(t, key).Open(tok, now)
		if err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
		if got.StudyUID != want.StudyUID || got.Patient != want.Patient || got.Route != want.Route || !got.Expiry.Equal(want.Expiry) {
			t.Errorf("token %d opens to %+v, want %+v", i, got, want)
		}
		if decodeHeader(t, tok)["kid"] != KeyID(key) {
			t.Errorf("token %d was not minted under its key", i)
		}
	}
}

// FuzzOpen asserts Open never panics, always fails with one of the two
// sentinels, and opens nothing but the genuinely minted tokens.
func FuzzOpen(f *testing.F) {
	k := mustKeyring(f, keyA, keyB)
	minted := map[string]bool{}
	for _, tok := range readMinted(f) {
		minted[tok] = true
		f.Add(tok)
		parts := strings.Split(tok, ".")
		f.Add(parts[0] + ".." + parts[2] + "." + parts[3] + "." + parts[3])
		f.Add(parts[0] + "." + parts[2] + ".." + parts[3] + "." + parts[4])
		f.Add(tok[:len(tok)-1])
		f.Add(flip(f, tok, 3, 0))
	}
	// Freshly minted tokens that must not open here: expired, foreign key.
	f.Add(mustMint(f, mustKeyring(f, keyA), Claims{StudyUID: "1.2.3", Patient: "x", IssuedAt: now.Add(-2 * time.Hour), Expiry: now.Add(-time.Hour)}))
	f.Add(mustMint(f, mustKeyring(f, keyC), sampleClaims()))
	f.Add(craft(f, keyA, `{"alg":"dir","enc":"A256GCM","zip":"DEF"}`, []byte("x")))
	f.Add(craft(f, keyA, `{"alg":"none","enc":"A256GCM"}`, claimsJSON(sampleClaims())))
	for _, s := range []string{"", ".", "....", "a.b.c.d.e", "eyJ9..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA", "{}", strings.Repeat(".", 3000)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := k.Open(token, now)
		if err != nil {
			if errors.Is(err, ErrInvalid) == errors.Is(err, ErrExpired) {
				t.Fatalf("error %v wraps neither or both sentinels", err)
			}
			if len(token) >= 8 && strings.Contains(err.Error(), token) {
				t.Fatalf("error %q echoes the token", err)
			}
			return
		}
		if !minted[token] {
			t.Fatalf("a token that was never minted opened: %q -> %+v", token, c)
		}
		if c.StudyUID == "" || !now.Before(c.Expiry) {
			t.Fatalf("opened claims are incomplete or expired: %+v", c)
		}
	})
}

func BenchmarkMint(b *testing.B) {
	k := mustKeyring(b, keyA)
	c := sampleClaims()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Mint(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	// The token's key is the last of three, as after two rotations.
	k := mustKeyring(b, keyC, keyB, keyA)
	tok := mustMint(b, mustKeyring(b, keyA), sampleClaims())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Open(tok, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenFirst is the first open of a token (decryption); later
// opens of the same token (BenchmarkOpen) come from the keyring's memory.
func BenchmarkOpenFirst(b *testing.B) {
	k := mustKeyring(b, keyC, keyB, keyA)
	tok := mustMint(b, mustKeyring(b, keyA), sampleClaims())
	b.ReportAllocs()
	for b.Loop() {
		k.opened = openedCache{}
		if _, err := k.Open(tok, now); err != nil {
			b.Fatal(err)
		}
	}
}

// TestOpenRemembersOnlyTokensThatOpened: a remembered token gives the
// same claims as its first opening, tokens that failed are not remembered
// (so refusals cannot fill the memory), and the memory stays bounded.
func TestOpenRemembersOnlyTokensThatOpened(t *testing.T) {
	k := mustKeyring(t, keyA)
	c := sampleClaims()
	tok := mustMint(t, k, c)
	first, err := k.Open(tok, now)
	if err != nil {
		t.Fatal(err)
	}
	again, err := k.Open(tok, now)
	if err != nil || !reflect.DeepEqual(again, first) {
		t.Fatalf("second open: %+v, %v; want %+v", again, err, first)
	}
	other := mustKeyring(t, keyB)
	for _, bad := range []string{flip(t, tok, 3, 0), flip(t, tok, 4, -1), mustMint(t, other, c), tok + "x"} {
		if _, err := k.Open(bad, now); err == nil {
			t.Fatal("a bad token opened")
		}
	}
	if _, err := k.Open(mustMint(t, k, c), c.Expiry); err == nil {
		t.Fatal("an expired token opened")
	}
	if n := len(k.opened.m); n != 1 {
		t.Fatalf("%d tokens remembered, want only the one that opened", n)
	}
	for i := 0; i < maxOpened+100; i++ {
		k.opened.put(fmt.Sprintf("t%d", i), c, now)
	}
	if n := len(k.opened.m); n > maxOpened {
		t.Fatalf("%d tokens remembered, want at most %d", n, maxOpened)
	}
}
