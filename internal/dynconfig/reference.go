package dynconfig

import (
	"encoding/json"
	"errors"
	"strings"

	"github.com/smart-imaging/smart_imaging/internal/refconfig"
)

// The reference server's /dyn JSON ({"authorization": {...}, "images":
// {...}}) is accepted alongside ours: it is translated into our JSON and
// goes through the same checks, so the allow lists, the credential rule
// and every refusal are exactly those of our own configs. What the
// reference does that a URL may not do here is refused with the reason.

// refFields names, for each field of our JSON, the reference field it came
// from, so that a refusal speaks the caller's language.
var refFields = map[string]string{
	"authz.kind":            "authorization.type",
	"authz.fhir_base_url":   "authorization.fhirBaseUrl",
	"authz.client_id":       "authorization.client.client_id",
	"authz.client_secret":   "authorization.client.client_secret",
	"authz.private_key":     "authorization.client.jwkPrivate",
	"authz.private_key_alg": "authorization.client.jwk.alg",
	"authz.private_key_id":  "authorization.client.jwk.kid",
	"authz.patient":         "authorization.patient.id",
	"authz.mrn":             "authorization.patient.identifier",
	"images.kind":           "images.type",
	"images.base_url":       "images.endpoint",
	"images.lookup":         "images.lookup",
	"images.username":       "images.authentication.username",
	"images.password":       "images.authentication.password",
	"delay.lookup_until":    "images.delay.lookupUntil",
	"delay.retrieve_until":  "images.delay.retrieveUntil",
}

// parseReference checks a reference config against the policy.
func (p *Policy) parseReference(raw []byte) (*Tenant, error) {
	ours, err := FromReference(raw)
	if err != nil {
		return nil, err
	}
	t, err := p.parseOurs(ours)
	var e *Error
	if errors.As(err, &e) {
		renamed := *e
		for ourName, refName := range refFields {
			if e.Field == ourName || strings.HasPrefix(e.Field, ourName+"[") {
				renamed.Field = refName + strings.TrimPrefix(e.Field, ourName)
				break
			}
		}
		return nil, &renamed
	}
	return t, err
}

// FromReference translates a reference config into our /dyn JSON,
// refusing what a URL may never do whatever the route's policy: turn
// patient binding off, take the patient from the request (the Meditech
// variant), list every patient's studies, pick the PACS key with a
// FHIRPath, or use a dual-launch or DIMSE tenant.
func FromReference(raw []byte) ([]byte, error) {
	c, err := refconfig.Parse(raw)
	if err != nil {
		var fe *refconfig.FieldError
		if errors.As(err, &fe) {
			return nil, fail(fe.Field, ErrMalformed, "%s", fe.Reason)
		}
		return nil, fail("", ErrMalformed, "%v", err)
	}
	a, im := c.Authorization, c.Images
	authz := map[string]any{}
	switch c.AuthzType() {
	case refconfig.TypeSMART, refconfig.TypeEpic:
		// The Epic variant's differences (introspection endpoint, where the
		// patient comes from, which scopes grant access) are the operator's
		// smart-on-fhir policy on this route, as for our own configs.
		authz["kind"] = AuthzSMART
		if a.Patient != nil || a.DisableAuthzChecks {
			return nil, fail("authorization", ErrNotSettable, "patient and disableAuthzChecks belong to mock configs")
		}
		if s := c.BackendScope(); s != "" && s != refconfig.DefaultBackendScope {
			return nil, fail("authorization.scope", ErrNotSettable, "the gateway's own scope at the EHR is the operator's (dynamic_config authz smart-on-fhir { scope }); a /dyn config may leave it out or ask for %s", refconfig.DefaultBackendScope)
		}
		setIf(authz, "fhir_base_url", a.FHIRBaseURL)
		if cl := a.Client; cl != nil {
			setIf(authz, "client_id", cl.ClientID)
			setIf(authz, "client_secret", cl.ClientSecret)
			if len(cl.JWKPrivate) > 0 && string(cl.JWKPrivate) != "null" {
				authz["private_key"] = string(cl.JWKPrivate)
			}
			if cl.JWK != nil {
				setIf(authz, "private_key_alg", cl.JWK.Alg)
				setIf(authz, "private_key_id", cl.JWK.Kid)
			}
		}
		if len(im.MRN) > 0 && !(len(im.MRN) == 1 && im.MRN[0] == refconfig.DefaultMRNPath) {
			return nil, fail("images.mrn", ErrNotSettable, "which identifier is the PACS PatientID decides whose studies a token sees: the operator sets it (dynamic_config authz smart-on-fhir { mrn_system }); a /dyn config may leave images.mrn out")
		}
	case refconfig.TypeMock:
		authz["kind"] = AuthzMock
		if a.DisableAuthzChecks {
			return nil, fail("authorization.disableAuthzChecks", ErrNotSettable, "a /dyn URL never turns patient binding off: every search needs ?patient= naming the config's patient")
		}
		if a.Patient != nil {
			setIf(authz, "patient", a.Patient.ID)
			mrns, _, err := c.MockMRNs()
			if err != nil {
				var fe *refconfig.FieldError
				if errors.As(err, &fe) {
					return nil, fail(fe.Field, ErrBadValue, "%s", fe.Reason)
				}
				return nil, fail("images.mrn", ErrBadValue, "%v", err)
			}
			if len(mrns) > 0 {
				authz["mrn"] = mrns
			}
		}
		setIf(authz, "fhir_base_url", a.FHIRBaseURL)
		if a.Client != nil || a.Scope != nil {
			return nil, fail("authorization.client", ErrNotSettable, "a mock config talks to no EHR: client and scope are not used")
		}
	case refconfig.TypeMeditech:
		return nil, fail("authorization.type", ErrBadValue, "%s is refused: it takes the patient from the request's ?patient= (or an unverified token) instead of the access token, so any caller could name any patient; use smart-on-fhir", refconfig.TypeMeditech)
	case refconfig.TypeIndependent:
		return nil, fail("authorization.type", ErrBadValue, "%s (dual launch) needs registered apps, exact redirect URIs and a signing key that only the operator can set: use a Caddyfile route with authz smart-on-fhir-independent", refconfig.TypeIndependent)
	default:
		return nil, fail("authorization.type", ErrBadValue, "%q is not a reference authorization type (smart-on-fhir, smart-on-fhir-with-epic-bugfixes or mock here)", a.Type)
	}

	images := map[string]any{}
	switch im.Type {
	case refconfig.ImagesDICOMweb:
		images["kind"] = ImagesDICOMweb
	case refconfig.ImagesDIMSE:
		return nil, fail("images.type", ErrBadValue, "dicom-dimse is not served through /dyn: a URL may not make the gateway open a C-MOVE receiver and a disk cache; a DIMSE PACS is the operator's to configure (images dimse)")
	case "":
		return nil, fail("images.type", ErrMalformed, "required (dicom-web)")
	default:
		return nil, fail("images.type", ErrBadValue, "%q is not an image source type (dicom-web)", im.Type)
	}
	if im.AE != "" {
		return nil, fail("images.ae", ErrNotSettable, "ae belongs to dicom-dimse configs")
	}
	setIf(images, "base_url", im.Endpoint)
	switch im.Lookup {
	case "", refconfig.LookupByMRN:
		images["lookup"] = LookupStudiesByMRN
	case refconfig.LookupAll:
		return nil, fail("images.lookup", ErrBadValue, "all-studies-on-server answers every patient's studies to any caller: only studies-by-mrn in /dyn configs")
	default:
		return nil, fail("images.lookup", ErrBadValue, "%q is not a lookup (studies-by-mrn)", im.Lookup)
	}
	if au := im.Authentication; au != nil {
		switch au.Type {
		case "open":
			if au.Username != "" || au.Password != "" {
				return nil, fail("images.authentication", ErrMalformed, "open authentication carries no username or password")
			}
		case "http-basic":
			setIf(images, "username", au.Username)
			setIf(images, "password", au.Password)
		default:
			return nil, fail("images.authentication.type", ErrBadValue, "%q is not open or http-basic", au.Type)
		}
	}

	doc := map[string]any{"authz": authz, "images": images}
	if d := im.Delay; d != nil {
		delay := map[string]any{}
		setIf(delay, "lookup_until", refconfig.DelayUntil(d.LookupUntil))
		setIf(delay, "retrieve_until", refconfig.DelayUntil(d.RetrieveUntil))
		doc["delay"] = delay
	}
	return json.Marshal(doc)
}

func setIf(m map[string]any, k, v string) {
	if v != "" {
		m[k] = v
	}
}
