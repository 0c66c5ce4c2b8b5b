package caddymodule

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net"
	"net/url"
	"strings"
	"testing"
)

// dynamicPrecheck runs what provision does to a /dyn segment before any
// module is provisioned: base64url decoding (as get does), strict JSON
// decoding, the kinds, the dicomweb fields and the string checks.
func dynamicPrecheck(d *dynamicTenants, seg string) (*dynamicDoc, error) {
	if seg == "" || len(seg) > maxDynamicSegment {
		return nil, errDynFuzz
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(seg, "="))
	if err != nil {
		return nil, err
	}
	var doc dynamicDoc
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	if dec.More() || doc.Authz == nil || doc.Images == nil {
		return nil, errDynFuzz
	}
	authzKind, err := kindOf(doc.Authz)
	if err != nil {
		return nil, err
	}
	if authzKind != "smart-on-fhir" && !(authzKind == "mock" && d.cfg.AllowMock) {
		return nil, errDynFuzz
	}
	if k, err := kindOf(doc.Images); err != nil || k != "dicomweb" {
		return nil, errDynFuzz
	}
	if err := onlyFields(doc.Images, dynamicImagesFields); err != nil {
		return nil, err
	}
	for _, part := range []json.RawMessage{doc.Authz, doc.Images} {
		if err := d.checkValues(part); err != nil {
			return nil, err
		}
	}
	return &doc, nil
}

var errDynFuzz = &problem{Status: 400, Message: "refused"}

// dynStrings lists every string value in a JSON value, inline JSON
// documents included (as checkString treats them).
func dynStrings(v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for _, sub := range x {
			dynStrings(sub, out)
		}
	case []any:
		for _, sub := range x {
			dynStrings(sub, out)
		}
	case string:
		*out = append(*out, x)
		if t := strings.TrimSpace(x); strings.HasPrefix(t, "{") {
			var inner any
			if json.Unmarshal([]byte(t), &inner) == nil {
				dynStrings(inner, out)
			}
		}
	}
}

// isHostPortLike reports whether s looks like a network address (a
// reverse proxy dial, a host:port) rather than a scope or a URN.
func isHostPortLike(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return false
	}
	for _, c := range host + port {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == ':' || c == '%' || c == '_') {
			return false
		}
	}
	return true
}

// FuzzDynamicDecode feeds /dyn segments to the dynamic config checks. It
// must never panic, and a config it lets through must keep the promise of
// DynamicConfig: every http(s) URL and every host:port in it names a host
// on the allow list, and no placeholder survives.
func FuzzDynamicDecode(f *testing.F) {
	seed := func(doc string) { f.Add(base64.RawURLEncoding.EncodeToString([]byte(doc))) }
	mock := `{"kind":"mock","patient":"p","mrn":["m"]}`
	dw := func(extra string) string {
		return `{"kind":"dicomweb","base_url":"http://127.0.0.1:8042/dicom-web","username":"u","password":"p"` + extra + `}`
	}
	seed(`{"authz":` + mock + `,"images":` + dw("") + `}`)
	seed(`{"authz":` + mock + `,"images":` + dw(`,"lookup":"studies-by-mrn","qido_timeout":"1s","max_concurrent_qido":2`) + `,"study_token_ttl":"10m"}`)
	seed(`{"authz":{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","client_id":"c","client_secret":"s","private_key":"{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"a\",\"y\":\"b\",\"d\":\"c\"}","audience":["https://ehr.example.org/aud"],"scope":"system/Patient.rs"},"images":` + dw("") + `}`)
	seed(`{"authz":` + mock + `,"images":{"kind":"dicomweb","base_url":"http://10.0.0.1:80/dicom-web"}}`)
	seed(`{"authz":` + mock + `,"images":` + dw(`,"proxy":{"upstreams":[{"dial":"10.0.0.1:80"}]}`) + `}`)
	seed(`{"authz":` + mock + `,"images":{"kind":"dicomweb","base_url":"http://127.0.0.1:8042@evil:80/"}}`)
	seed(`{"authz":` + mock + `,"images":{"kind":"dicomweb","base_url":"file:///etc/passwd"}}`)
	seed(`{"authz":` + mock + `,"images":{"kind":"dicomweb","base_url":"{env.X}"}}`)
	seed(`{"authz":` + mock + `,"images":{"kind":"folder","root":"/"}}`)
	seed(`{"authz":{"kind":"smart-on-fhir","fhir_base_url":"http://[::1]:8042/fhir","jwks_url":"http://0x7f.1:1/"},"images":` + dw("") + `}`)
	seed(`{"authz":{"kind":"smart-on-fhir","fhir_base_url":"https://ehr.example.org/fhir","jwks_url":"https://evil.example.net/jwks","audience":["https://evil.example.net/aud"]},"images":` + dw("") + `}`)
	seed(`{"authz":{"kind":"smart-on-fhir","private_key":"etc/key.jwk","mrn_system":["urn:oid:1.2.3"]},"images":` + dw("") + `}`)
	seed(`{"authz":` + mock + `,"images":` + dw("") + `} trailing`)
	seed(`[]`)
	f.Add("")
	f.Add("====")
	f.Add("%2e%2e")

	f.Fuzz(func(t *testing.T, seg string) {
		d := &dynamicTenants{cfg: DynamicConfig{AllowHosts: []string{"127.0.0.1:8042", "ehr.example.org"}, AllowMock: true, MaxConfigs: 4}}
		doc, err := dynamicPrecheck(d, seg)
		if err != nil {
			return
		}
		// all: every string (no placeholder may survive); addresses: the
		// strings of options the gateway may contact, i.e. all but those
		// that name things rather than servers. The list is the test's
		// own, so a server option wrongly exempted in dynamic.go fails.
		var all, addresses []string
		for _, raw := range []json.RawMessage{doc.Authz, doc.Images} {
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatalf("accepted JSON does not decode: %v", err)
			}
			dynStrings(v, &all)
			if m, ok := v.(map[string]any); ok {
				contacted := maps.Clone(m)
				for _, k := range []string{"mrn_system", "audience", "issuer", "scope", "accept_scopes"} {
					delete(contacted, k)
				}
				v = contacted
			}
			dynStrings(v, &addresses)
		}
		for _, s := range all {
			if t2 := strings.TrimSpace(s); strings.ContainsAny(s, "{}") && !(strings.HasPrefix(t2, "{") && json.Valid([]byte(t2))) {
				t.Fatalf("accepted a placeholder: %q", s)
			}
		}
		for _, s := range addresses {
			if u, err := url.Parse(s); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" {
				if !d.allowed(u.Host) {
					t.Fatalf("accepted a URL off the allow list: %q", s)
				}
				if u.User != nil {
					t.Fatalf("accepted a URL with credentials: %q", s)
				}
			}
			if isHostPortLike(s) && !d.allowed(s) {
				t.Fatalf("accepted a host:port off the allow list: %q", s)
			}
		}
	})
}
