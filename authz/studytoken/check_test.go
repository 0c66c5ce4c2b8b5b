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
	right := Presented{Route: c.Route, Principal: bound, StudyUID: c.StudyUID, Binding: BindingOf(BindToken, "access-token-1", bound)}
	// Another access token of the same patient (another app, another
	// user, or the same app after a refresh).
	sibling := right
	sibling.Binding = BindingOf(BindToken, "access-token-2", bound)
	unbound := right
	unbound.Binding = ""
	// Grant binding: client, user and patient, not the token.
	grantP := &authz.Principal{Patient: c.Patient, ClientID: "app", User: "Patient/" + c.Patient}
	grantC := c
	grantC.Binding = k.Bind(BindingOf(BindGrant, "access-token-1", grantP))
	grantTok := mustMint(t, k, grantC)
	refreshed := Presented{Route: c.Route, Principal: grantP, StudyUID: c.StudyUID, Binding: BindingOf(BindGrant, "access-token-2", grantP)}
	otherApp := *grantP
	otherApp.ClientID = "other-app"
	otherAppReq := refreshed
	otherAppReq.Principal, otherAppReq.Binding = &otherApp, BindingOf(BindGrant, "access-token-3", &otherApp)
	// Backend clients: the patient comes from the token, the list decides.
	backend := &authz.Principal{Backend: true, Patients: []string{c.Patient}}
	backendOther := &authz.Principal{Backend: true, Patients: []string{"someone-else"}}
	backendTok := mustMint(t, k, Claims{StudyUID: c.StudyUID, Patient: c.Patient, Route: c.Route, IssuedAt: now,
		Expiry: now.Add(time.Hour), Binding: k.Bind(BindingOf(BindToken, "system-token", backend))})
	// Modality restriction: the token carries the study's modalities.
	mrOnly := &authz.Principal{Patient: c.Patient, Modalities: []string{"MR"}, IgnoredScopes: []string{"patient/ImagingStudy.rs?bodysite=head"}}
	ctOnly := &authz.Principal{Patient: c.Patient, Modalities: []string{"ct"}}
	ctStudy := c
	ctStudy.Modalities = []string{"CT", "SR"}
	ctTok := mustMint(t, k, ctStudy)

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
		{name: "another access token of the same patient", token: tok, at: now, req: sibling, refuse: "search ImagingStudy again", opened: true},
		{name: "no bearer on a patient-bound route", token: tok, at: now, req: unbound, refuse: "another access token", opened: true},
		{name: "grant binding survives a refresh", token: grantTok, at: now, req: refreshed, opened: true},
		{name: "grant binding: another app of the same patient", token: grantTok, at: now, req: otherAppReq, refuse: "search ImagingStudy again", opened: true},
		{name: "backend client, patient on its list", token: backendTok, at: now,
			req: Presented{Route: c.Route, Principal: backend, StudyUID: c.StudyUID, Binding: BindingOf(BindToken, "system-token", backend)}, opened: true},
		{name: "backend client, patient not on its list", token: backendTok, at: now,
			req: Presented{Route: c.Route, Principal: backendOther, StudyUID: c.StudyUID, Binding: BindingOf(BindToken, "system-token", backendOther)}, refuse: "may not see", opened: true},
		{name: "modality allowed (case-insensitive)", token: ctTok, at: now,
			req: Presented{Route: c.Route, Principal: ctOnly, StudyUID: c.StudyUID, Binding: right.Binding}, opened: true},
		{name: "modality not allowed", token: ctTok, at: now,
			req: Presented{Route: c.Route, Principal: mrOnly, StudyUID: c.StudyUID, Binding: right.Binding}, refuse: "ignored for a query this server does not understand: patient/ImagingStudy.rs?bodysite=head", opened: true},
		{name: "modality-restricted caller, study of unknown modality", token: tok, at: now,
			req: Presented{Route: c.Route, Principal: mrOnly, StudyUID: c.StudyUID, Binding: right.Binding}, refuse: "modalities", opened: true},
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

// An access token in its last second, or past its exp, gets a 401 (not a
// server error from minting a token that expires before it is issued).
func TestExpiryFor(t *testing.T) {
	now := time.Unix(1_800_000_000, 400_000_000)
	for _, tt := range []struct {
		name    string
		expires time.Time
		want    time.Time // zero: refused
	}{
		{name: "unknown exp: the ttl", want: now.Add(time.Hour)},
		{name: "exp before the ttl ends", expires: now.Add(10 * time.Minute), want: now.Add(10 * time.Minute)},
		{name: "exp after the ttl", expires: now.Add(2 * time.Hour), want: now.Add(time.Hour)},
		{name: "within the same second", expires: now.Add(500 * time.Millisecond)},
		{name: "already past", expires: now.Add(-time.Minute)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ExpiryFor(now, time.Hour, &authz.Principal{Expires: tt.expires})
			if tt.want.IsZero() {
				var ae *authz.Error
				if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || !strings.Contains(ae.Challenge, "invalid_token") {
					t.Fatalf("error %v, want a 401 invalid_token", err)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}
