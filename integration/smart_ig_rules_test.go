package integration

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/internal/orthanc"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// Study UIDs of the demo patient in the bundled demo set, by modality.
const (
	demoCTStudy = "2.25.2718281828459045235360287.1.1.1"
	demoMRStudy = "2.25.2718281828459045235360287.1.1.2" // MR and OT series
	registryApp = "registry-sync"                        // a backend client of /ig
)

// igConfig is a gateway in front of a real Orthanc with the SMART test
// EHR: /ig binds study tokens to the access token and serves one backend
// client, /iggrant binds them to the grant and has no backend client,
// /ignocache introspects every request.
func igConfig(env *smartEnv, pacs *orthanc.Server) string {
	key := base64.StdEncoding.EncodeToString(testKey)
	route := func(path, extraAuthz, extra string) string {
		return fmt.Sprintf(`
	handle_path /%[1]s/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[2]s
				client_id %[3]s
				private_key %[4]s
				mrn_system %[5]s
				%[6]s
			}
			images dicomweb %[7]s {
				lookup studies-by-mrn
				basic_auth %[8]s %[9]s
			}
			study_token_key %[10]s
			base_url http://localhost:9080/%[1]s
			%[11]s
		}
	}`, path, env.ehr.FHIRBase(), smartClientID, env.keyFile, smartMRNSystem, extraAuthz,
			pacs.DICOMwebURL(), pacs.Username(), pacs.Password(), key, extra)
	}
	return testGlobals + "\tgrace_period 2s\n}\nhttp://localhost:9080 {" +
		route("ig", "backend_client "+registryApp+" {\n\t\t\t\t\tpatients "+demoPatient+"\n\t\t\t\t}", "") +
		route("iggrant", "", "study_token_binding grant") +
		route("ignocache", "cache_ttl 0", "") +
		"\n}\n"
}

// TestSmartIGAuthorizationRules tries to break each authorization rule of
// the latest SMART Imaging Access IG through a real Caddy and Orthanc.
func TestSmartIGAuthorizationRules(t *testing.T) {
	pacs, _ := startDemoPACS(t)
	env := newSmartEnv(t)
	env.tc = caddytest.NewTester(t)
	env.tc.InitServer(igConfig(env, pacs), "caddyfile")
	t.Cleanup(func() {
		env.mu.Lock()
		defer env.mu.Unlock()
		for _, l := range env.leaks {
			t.Errorf("credential leaked: %s", l)
		}
	})
	ehr := env.ehr
	searchURL := func(route, patient string) string {
		return base + "/" + route + "/fhir/ImagingStudy?patient=" + patient
	}
	metadata := func(res searchResult, uid string) string {
		addr, ok := res.endpoints[uid]
		if !ok {
			t.Fatalf("no Endpoint for study %s in %v", uid, res.endpoints)
		}
		return addr + "/studies/" + uid + "/metadata"
	}
	wadoOK := func(t *testing.T, tc *caddytest.Tester, url string) {
		t.Helper()
		get(t, tc, url, "application/dicom+json", http.StatusOK, "application/dicom+json")
	}
	invalidToken := func(t *testing.T, hdr http.Header) {
		t.Helper()
		if wa := hdr.Get("WWW-Authenticate"); !strings.Contains(wa, `error="invalid_token"`) {
			t.Errorf("WWW-Authenticate = %q, want Bearer error=\"invalid_token\"", wa)
		}
	}

	t.Run("expired but introspected as active: 401 on search and WADO", func(t *testing.T) {
		good := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		res := search(t, env.as(good), searchURL("ig", demoPatient))
		// A few seconds past exp (inside the 30 s leeway the gateway used
		// to allow: 500 on search, 200 on WADO) and a minute past.
		for _, ago := range []time.Duration{5 * time.Second, time.Minute} {
			expired := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Exp: time.Now().Add(-ago), ActiveAfterExp: true})
			hdr, _ := smartRefused(t, env.as(expired), searchURL("ig", demoPatient), http.StatusUnauthorized)
			invalidToken(t, hdr)
			hdr, _ = smartRefused(t, env.as(expired), metadata(res, demoCTStudy), http.StatusUnauthorized)
			invalidToken(t, hdr)
		}
	})

	t.Run("another token of the same patient cannot use the address", func(t *testing.T) {
		first := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		res := search(t, env.as(first), searchURL("ig", demoPatient))
		wadoOK(t, env.as(first), metadata(res, demoCTStudy))
		for name, spec := range map[string]testehr.TokenSpec{
			"same app and user": {Patient: demoPatient},
			"another app":       {Patient: demoPatient, ClientID: "other-app"},
		} {
			other := env.mint(ehr, spec)
			_, diag := smartRefused(t, env.as(other), metadata(res, demoCTStudy), http.StatusForbidden)
			if !strings.Contains(diag, "search ImagingStudy again") {
				t.Errorf("%s: refusal %q does not say to search again", name, diag)
			}
		}
	})

	t.Run("grant binding: a refreshed token works, another app does not", func(t *testing.T) {
		first := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, ClientID: "viewer", Sub: "user-7"})
		res := search(t, env.as(first), searchURL("iggrant", demoPatient))
		refreshed := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, ClientID: "viewer", Sub: "user-7"})
		wadoOK(t, env.as(refreshed), metadata(res, demoCTStudy))
		otherApp := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, ClientID: "other-app", Sub: "user-7"})
		if _, diag := smartRefused(t, env.as(otherApp), metadata(res, demoCTStudy), http.StatusForbidden); !strings.Contains(diag, "search ImagingStudy again") {
			t.Errorf("another app: %q", diag)
		}
		otherUser := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, ClientID: "viewer", Sub: "user-8"})
		smartRefused(t, env.as(otherUser), metadata(res, demoCTStudy), http.StatusForbidden)
	})

	t.Run("modality-restricted token sees and fetches only its modality", func(t *testing.T) {
		ct := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, ClientID: "viewer", Sub: "user-7",
			Scope: "launch/patient patient/ImagingStudy.rs?modality=CT"})
		res := search(t, env.as(ct), searchURL("iggrant", demoPatient))
		if got := keys(res.studies); !slices.Equal(got, []string{demoCTStudy}) {
			t.Fatalf("CT-only token found %v, want only %s", got, demoCTStudy)
		}
		wadoOK(t, env.as(ct), metadata(res, demoCTStudy))
		// The MR study's address, issued to the same grant without the
		// restriction, is refused to the CT-only token.
		full := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, ClientID: "viewer", Sub: "user-7"})
		all := search(t, env.as(full), searchURL("iggrant", demoPatient))
		if _, diag := smartRefused(t, env.as(ct), metadata(all, demoMRStudy), http.StatusForbidden); !strings.Contains(diag, "modalities") {
			t.Errorf("MR study with a CT-only token: %q", diag)
		}
		// Union of scopes.
		both := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Scope: "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?modality=MR"})
		if got := keys(search(t, env.as(both), searchURL("ig", demoPatient)).studies); len(got) != 2 {
			t.Errorf("CT+MR token found %v, want both studies", got)
		}
		// A query the gateway does not understand grants nothing; the 403
		// names the scope.
		odd := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Scope: "patient/ImagingStudy.rs?bodysite=chest"})
		if _, diag := smartRefused(t, env.as(odd), searchURL("ig", demoPatient), http.StatusForbidden); !strings.Contains(diag, "patient/ImagingStudy.rs?bodysite=chest") {
			t.Errorf("unknown scope query: %q", diag)
		}
	})

	t.Run("backend client: its patients only, named on every search", func(t *testing.T) {
		sys := env.mint(ehr, testehr.TokenSpec{ClientID: registryApp, Sub: registryApp, OmitPatient: true, Scope: "system/ImagingStudy.rs"})
		res := search(t, env.as(sys), searchURL("ig", demoPatient))
		if got := keys(res.studies); len(got) != 2 {
			t.Fatalf("backend search found %v, want the demo patient's 2 studies", got)
		}
		wadoOK(t, env.as(sys), metadata(res, demoMRStudy))
		// Another token of the same backend client: bound like App Launch.
		sys2 := env.mint(ehr, testehr.TokenSpec{ClientID: registryApp, Sub: registryApp, OmitPatient: true, Scope: "system/ImagingStudy.rs"})
		smartRefused(t, env.as(sys2), metadata(res, demoMRStudy), http.StatusForbidden)

		if _, diag := smartRefused(t, env.as(sys), searchURL("ig", smartAlice), http.StatusForbidden); !strings.Contains(diag, "not authorized for the patient") {
			t.Errorf("patient outside the list: %q", diag)
		}
		smartRefused(t, env.as(sys), base+"/ig/fhir/ImagingStudy?patient.identifier="+smartMRNSystem+"|"+smartAliceMRN, http.StatusForbidden)
		smartRefused(t, env.as(sys), base+"/ig/fhir/ImagingStudy?_lastUpdated=gt2000-01-01", http.StatusForbidden)
		byIdent := search(t, env.as(sys), base+"/ig/fhir/ImagingStudy?patient.identifier="+smartMRNSystem+"|"+demoMRN)
		if len(byIdent.studies) != 2 {
			t.Errorf("backend search by the listed patient's MRN found %d studies, want 2", len(byIdent.studies))
		}
		unknown := env.mint(ehr, testehr.TokenSpec{ClientID: "stranger", OmitPatient: true, Scope: "system/ImagingStudy.rs"})
		smartRefused(t, env.as(unknown), searchURL("ig", demoPatient), http.StatusForbidden)
		// A system token on a route with no backend_client: nothing.
		if _, diag := smartRefused(t, env.as(sys), searchURL("iggrant", demoPatient), http.StatusForbidden); !strings.Contains(diag, "Backend Services") {
			t.Errorf("system token on an App Launch route: %q", diag)
		}
		// A patient-context token with a system scope stays bound to its
		// patient.
		mixed := env.mint(ehr, testehr.TokenSpec{ClientID: registryApp, Patient: smartAlice, Scope: "system/ImagingStudy.rs patient/ImagingStudy.rs"})
		smartRefused(t, env.as(mixed), searchURL("ig", demoPatient), http.StatusForbidden)
	})

	t.Run("cache_ttl 0: a revoked token stops at the next request", func(t *testing.T) {
		tok := env.mint(ehr, testehr.TokenSpec{Patient: demoPatient})
		res := search(t, env.as(tok), searchURL("ignocache", demoPatient))
		wadoOK(t, env.as(tok), metadata(res, demoCTStudy))
		ehr.Revoke(tok)
		hdr, _ := smartRefused(t, env.as(tok), metadata(res, demoCTStudy), http.StatusUnauthorized)
		invalidToken(t, hdr)
	})

	t.Run("smart-configuration names the modes each route offers", func(t *testing.T) {
		caps := func(route string) []string {
			doc, _ := getJSON(t, env.as(""), base+"/"+route+"/fhir/.well-known/smart-configuration", http.StatusOK)
			var out []string
			for _, c := range doc["capabilities"].([]any) {
				out = append(out, c.(string))
			}
			return out
		}
		const appLaunch = "http://fhir.org/argonaut/smart-imaging/capabilities/app-launch"
		const backend = "http://fhir.org/argonaut/smart-imaging/capabilities/backend-services"
		if c := caps("ig"); !slices.Contains(c, appLaunch) || !slices.Contains(c, backend) {
			t.Errorf("/ig capabilities %v", c)
		}
		if c := caps("iggrant"); !slices.Contains(c, appLaunch) || slices.Contains(c, backend) {
			t.Errorf("/iggrant capabilities %v", c)
		}
	})
}
