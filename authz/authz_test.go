package authz

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestBearerToken(t *testing.T) {
	tests := []struct {
		name   string
		header []string // Authorization values; nil: none
		want   string
	}{
		{"no header", nil, ""},
		{"canonical", []string{"Bearer abc.def"}, "abc.def"},
		{"lower case scheme", []string{"bearer abc"}, "abc"},
		{"upper case scheme", []string{"BEARER abc"}, "abc"},
		{"mixed case scheme", []string{"bEaReR abc"}, "abc"},
		{"extra spaces", []string{"Bearer    abc  "}, "abc"},
		{"scheme only", []string{"Bearer"}, ""},
		{"scheme and space", []string{"Bearer "}, ""},
		{"scheme and blanks", []string{"Bearer    "}, ""},
		{"no separator", []string{"Bearerabc"}, ""},
		{"tab separator", []string{"Bearer\tabc"}, ""},
		{"basic", []string{"Basic dXNlcjpwYXNz"}, ""},
		{"dpop", []string{"DPoP abc"}, ""},
		{"token scheme", []string{"Token abc"}, ""},
		{"bare token", []string{"abc"}, ""},
		{"first header wins", []string{"Bearer one", "Bearer two"}, "one"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			for _, v := range tc.header {
				r.Header.Add("Authorization", v)
			}
			if got := BearerToken(r); got != tc.want {
				t.Errorf("BearerToken(%q) = %q, want %q", tc.header, got, tc.want)
			}
		})
	}
}

func TestHashToken(t *testing.T) {
	if HashToken("") != "" {
		t.Error("HashToken of no token is not empty")
	}
	h := HashToken("secret-access-token")
	if len(h) != 12 || strings.Contains("secret-access-token", h) {
		t.Errorf("HashToken = %q, want 12 hex digits unrelated to the token", h)
	}
	if h != HashToken("secret-access-token") || h == HashToken("secret-access-tokeN") {
		t.Error("HashToken is not a stable, distinguishing digest")
	}
}

func TestPatientIDFromReference(t *testing.T) {
	const base = "https://ehr.example.org/fhir"
	tests := []struct {
		ref, base string
		want      string
		ok        bool
	}{
		{"123", "", "123", true},
		{"Patient/123", "", "123", true},
		{"  Patient/123 ", "", "123", true},
		{"Patient/87a339d0-8cae-418e-89c7-8651e6aab3c6", base, "87a339d0-8cae-418e-89c7-8651e6aab3c6", true},
		{"Patient/a.b-C", "", "a.b-C", true},
		{base + "/Patient/123", base, "123", true},
		{base + "/Patient/123", base + "/", "123", true},
		// Absolute references need a known, matching base and a Patient.
		{base + "/Patient/123", "", "", false},
		{"https://evil.example.org/fhir/Patient/123", base, "", false},
		{base + "2/Patient/123", base, "", false},
		{"http://ehr.example.org/fhir/Patient/123", base, "", false},
		{base + "/123", base, "", false},
		{base + "/Observation/1", base, "", false},
		{base + "/Patient/", base, "", false},
		// Other resource types and empty ids.
		{"Observation/1", "", "", false},
		{"", "", "", false},
		{"   ", "", "", false},
		{"Patient/", "", "", false},
		{"Patient", "", "Patient", true}, // a bare id that happens to read "Patient"
		{"patient/123", "", "", false},
		{"Patient/Patient/123", "", "", false},
		{"Patient/123/_history/2", "", "", false},
		// Anything a PACS, a URL or a FHIR server could read as more than one id.
		{"Patient/123*", "", "", false},
		{"123,456", "", "", false},
		{"123?x=1", "", "", false},
		{"123#frag", "", "", false},
		{"12 3", "", "", false},
		{`12\3`, "", "", false},
		{"12%2F3", "", "", false},
		{"12%", "", "", false},
		{"1&2", "", "", false},
		{"1=2", "", "", false},
		{"1\x002", "", "", false},
		{"1\n2", "", "", false},
		{`1"2`, "", "", false},
		{"Patient/ü", "", "", false},
		{"..", "", "", false},
		{"Patient/.", "", "", false},
		{strings.Repeat("1", 64), "", strings.Repeat("1", 64), true},
		{strings.Repeat("1", 65), "", "", false},
	}
	for _, tc := range tests {
		got, ok := PatientIDFromReference(tc.ref, tc.base)
		if got != tc.want || ok != tc.ok {
			t.Errorf("PatientIDFromReference(%q, %q) = %q, %v; want %q, %v", tc.ref, tc.base, got, ok, tc.want, tc.ok)
		}
	}
}

func TestCheckPatientParam(t *testing.T) {
	const base = "https://ehr.example.org/fhir"
	bound := &Principal{Patient: "123", PatientReference: base + "/Patient/123"}
	tests := []struct {
		name  string
		p     *Principal
		value string
		base  string
		ok    bool
	}{
		{"unrestricted, any value", &Principal{Unrestricted: true}, "456", "", true},
		{"unrestricted, garbage", &Principal{Unrestricted: true}, "*", "", true},
		{"id match", bound, "123", "", true},
		{"relative match", bound, "Patient/123", "", true},
		{"absolute match", bound, base + "/Patient/123", base, true},
		{"absolute, base unknown", bound, base + "/Patient/123", "", false},
		{"absolute, other server", bound, "https://other.example.org/fhir/Patient/123", base, false},
		{"mismatch", bound, "456", "", false},
		{"longer id", bound, "1234", "", false},
		{"shorter id", bound, "12", "", false},
		{"relative longer", bound, "Patient/1234", "", false},
		{"prefix wildcard", bound, "123*", "", false},
		{"value list", bound, "123,456", "", false},
		{"empty value", bound, "", "", false},
		{"other type", bound, "Group/123", "", false},
		{"principal without patient", &Principal{}, "", "", false},
		{"principal without patient, value", &Principal{}, "123", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckPatientParam(tc.p, tc.value, tc.base)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var ae *Error
			if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.Code != "forbidden" {
				t.Fatalf("err = %v, want a 403 forbidden *Error", err)
			}
		})
	}
}

func TestHasPatientReadScope(t *testing.T) {
	tests := []struct {
		scopes []string
		want   bool
	}{
		// SMART v1
		{[]string{"patient/ImagingStudy.read"}, true},
		{[]string{"patient/*.read"}, true},
		{[]string{"patient/*.*"}, true},
		{[]string{"patient/ImagingStudy.*"}, true},
		// SMART v2
		{[]string{"patient/ImagingStudy.rs"}, true},
		{[]string{"patient/*.rs"}, true},
		{[]string{"patient/ImagingStudy.cruds"}, true},
		{[]string{"patient/ImagingStudy.rsd"}, false}, // 'd' before 's' in cruds order
		{[]string{"patient/ImagingStudy.crs"}, true},
		// One granting scope among others is enough.
		{[]string{"openid", "fhirUser", "launch/patient", "patient/ImagingStudy.rs"}, true},
		// Refusals
		{nil, false},
		{[]string{"user/ImagingStudy.read"}, false},
		{[]string{"system/*.read"}, false},
		{[]string{"patient/Observation.read"}, false},
		{[]string{"patient/ImagingStudy.write"}, false},
		{[]string{"patient/ImagingStudy.c"}, false},
		{[]string{"patient/ImagingStudy.r"}, false}, // read without search
		{[]string{"patient/ImagingStudy.s"}, false},
		{[]string{"patient/ImagingStudy.rs?category=x"}, false},
		{[]string{"patient/*.rs?_tag=x"}, false},
		{[]string{"patient/ImagingStudy.sr"}, false},
		{[]string{"patient/ImagingStudy.rrs"}, false},
		{[]string{"patient/ImagingStudy.rsx"}, false},
		{[]string{"patient/ImagingStudy.READ"}, false},
		{[]string{"Patient/ImagingStudy.read"}, false},
		{[]string{"patient/imagingstudy.read"}, false},
		{[]string{"patient/ImagingStudy"}, false},
		{[]string{"patient/ImagingStudy."}, false},
		{[]string{"patient/.rs"}, false},
		{[]string{"patient/"}, false},
		{[]string{"patient"}, false},
		{[]string{""}, false},
		{[]string{"patient/ImagingStudy.read.write"}, false},
		{[]string{"patient/ImagingStudyX.read"}, false},
		{[]string{"launch/patient", "openid"}, false},
		{[]string{"patient/ImagingStudy.read patient/ImagingStudy.rs"}, false}, // unsplit scope string
	}
	for _, tc := range tests {
		if got := HasPatientReadScope(tc.scopes, "ImagingStudy"); got != tc.want {
			t.Errorf("HasPatientReadScope(%q) = %v, want %v", tc.scopes, got, tc.want)
		}
	}
}

func TestErrors(t *testing.T) {
	cause := errors.New("introspection said inactive")
	e := Unauthorized(`token "expired"`+"\n", cause)
	if e.Status != http.StatusUnauthorized || e.Code != "login" {
		t.Errorf("Unauthorized = %+v", e)
	}
	if !errors.Is(e, cause) {
		t.Error("Unauthorized does not unwrap to its cause")
	}
	if !strings.HasPrefix(e.Challenge, `Bearer error="invalid_token"`) || strings.ContainsAny(e.Challenge[len(`Bearer error="invalid_token", error_description="`):len(e.Challenge)-1], "\"\n\\") {
		t.Errorf("challenge %q is not a well-formed header value", e.Challenge)
	}
	f := Forbidden("no")
	if f.Status != http.StatusForbidden || f.Error() != "no" {
		t.Errorf("Forbidden = %+v", f)
	}
}

func TestIdentifierMatchesToken(t *testing.T) {
	const sys = "http://hospital.example.org/mrn"
	withSystem := Identifier{System: sys, Value: "MRN-1"}
	noSystem := Identifier{Value: "MRN-1"}
	tests := []struct {
		name      string
		id        Identifier
		system    string
		hasSystem bool
		value     string
		want      bool
	}{
		{"system|value, both match", withSystem, sys, true, "MRN-1", true},
		{"system|value, another system", withSystem, "urn:other", true, "MRN-1", false},
		{"system|value, another value", withSystem, sys, true, "MRN-2", false},
		{"system|value, a case variant of the value", withSystem, sys, true, "mrn-1", false},
		{"system|value against an identifier without a system", noSystem, sys, true, "MRN-1", false},
		{"|value against an identifier without a system", noSystem, "", true, "MRN-1", true},
		{"|value against an identifier with a system", withSystem, "", true, "MRN-1", false},
		{"value alone, any system", withSystem, "", false, "MRN-1", true},
		{"value alone, no system", noSystem, "", false, "MRN-1", true},
		{"value alone, another value", withSystem, "", false, "MRN-11", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.id.MatchesToken(tt.system, tt.hasSystem, tt.value); got != tt.want {
				t.Errorf("MatchesToken = %v, want %v", got, tt.want)
			}
			if got := AnyMatchesToken([]Identifier{{System: "x", Value: "y"}, tt.id}, tt.system, tt.hasSystem, tt.value); got != tt.want {
				t.Errorf("AnyMatchesToken = %v, want %v", got, tt.want)
			}
		})
	}
	if AnyMatchesToken(nil, "", false, "MRN-1") {
		t.Error("no identifiers matched a token")
	}
}
