package smart

import (
	"strings"
	"testing"
)

func FuzzParseIntrospection(f *testing.F) {
	for _, seed := range []string{
		`{"active":false}`,
		`{"active":true,"scope":"launch/patient patient/ImagingStudy.rs","patient":"123","client_id":"app","sub":"u","iss":"https://ehr/auth","exp":1900000000,"aud":"https://img/fhir","fhirUser":"Patient/123"}`,
		`{"active":true,"scope":["patient/*.rs","openid"],"aud":["a","b"],"exp":1.9e9,"nbf":1}`,
		`{"active":"true"}`,
		`{"active":null}`,
		`{"active":true,"exp":-1}`,
		`{"active":true,"patient":123}`,
		`[]`, `null`, `{}`, `{"active":true}{}`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := parseIntrospection(body)
		if err != nil {
			if c != nil {
				t.Fatal("claims returned with an error")
			}
			return
		}
		if !c.active {
			// An inactive answer carries nothing else.
			if c.patient != "" || len(c.scopes) != 0 || c.sub != "" {
				t.Fatalf("inactive response with claims: %+v", c)
			}
			return
		}
		for _, s := range c.scopes {
			if s == "" || strings.ContainsAny(s, " \t\n") {
				t.Fatalf("scope %q not split", s)
			}
		}
		if !c.exp.IsZero() && c.exp.Unix() < 0 {
			t.Fatalf("negative exp %v", c.exp)
		}
		// Parsing is deterministic.
		c2, err := parseIntrospection(body)
		if err != nil || c2.patient != c.patient || c2.exp != c.exp || len(c2.scopes) != len(c.scopes) {
			t.Fatalf("second parse differs: %+v vs %+v (%v)", c2, c, err)
		}
	})
}

func TestParseIntrospection(t *testing.T) {
	c, err := parseIntrospection([]byte(`{"active":true,"scope":"a  b","patient":"123","exp":1900000000.5,"aud":["x","y"],"fhirUser":"Patient/1"}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.scopes) != 2 || c.patient != "123" || c.exp.Unix() != 1900000000 || len(c.aud) != 2 || c.fhirUser != "Patient/1" {
		t.Fatalf("%+v", c)
	}
	for _, bad := range []string{`{"active":true,"aud":5}`, `{"active":true,"scope":{"a":1}}`, `{"active":true,"sub":["x"]}`,
		`{"active":true,"exp":1e300}`, `{"active":1}`, `{"active":true} trailing`} {
		if _, err := parseIntrospection([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
