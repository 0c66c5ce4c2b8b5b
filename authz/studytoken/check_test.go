package studytoken

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
)

func TestCheck(t *testing.T) {
	k := mustKeyring(t, keyA)
	c := sampleClaims()
	tok := mustMint(t, k, c)
	openTok := mustMint(t, k, Claims{StudyUID: c.StudyUID, Route: c.Route, IssuedAt: now, Expiry: now.Add(time.Hour)})
	bound := &authz.Principal{Patient: c.Patient}
	other := &authz.Principal{Patient: "someone-else"}
	open := &authz.Principal{Unrestricted: true}
	right := Presented{Route: c.Route, Principal: bound, StudyUID: c.StudyUID}

	tests := []struct {
		name   string
		token  string
		at     time.Time
		req    Presented
		refuse string // part of the refusal message; "" grants
		opened bool   // claims returned for audit
	}{
		{name: "grants its own route, patient and study", token: tok, at: now, req: right, opened: true},
		{name: "unrestricted caller, patient-bound token", token: tok, at: now,
			req: Presented{Route: c.Route, Principal: open, StudyUID: c.StudyUID}, opened: true},
		{name: "unrestricted caller, token without patient", token: openTok, at: now,
			req: Presented{Route: c.Route, Principal: open, StudyUID: c.StudyUID}, opened: true},
		{name: "patient-bound caller, token without patient", token: openTok, at: now,
			req: right, refuse: "another patient", opened: true},
		{name: "another patient", token: tok, at: now,
			req: Presented{Route: c.Route, Principal: other, StudyUID: c.StudyUID}, refuse: "another patient", opened: true},
		{name: "another route", token: tok, at: now,
			req: Presented{Route: "other-route", Principal: bound, StudyUID: c.StudyUID}, refuse: "another route", opened: true},
		{name: "another study in the path", token: tok, at: now,
			req: Presented{Route: c.Route, Principal: bound, StudyUID: "1.2.3.4"}, refuse: "study in the path", opened: true},
		{name: "expired", token: tok, at: c.Expiry.Add(time.Second), req: right, refuse: "has expired"},
		{name: "garbage", token: "not-a-token", at: now, req: right, refuse: "is not valid"},
		{name: "foreign key", token: mustMint(t, mustKeyring(t, keyB), c), at: now, req: right, refuse: "is not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := k.Check(tt.token, tt.at, tt.req)
			if (got.StudyUID != "") != tt.opened {
				t.Errorf("claims %+v returned: opened %v, want %v", got, got.StudyUID != "", tt.opened)
			}
			if tt.refuse == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var ae *authz.Error
			if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.Code != "forbidden" {
				t.Fatalf("error %v, want a 403 forbidden", err)
			}
			if !strings.Contains(ae.Message, tt.refuse) {
				t.Errorf("message %q, want it to say %q", ae.Message, tt.refuse)
			}
		})
	}
}
