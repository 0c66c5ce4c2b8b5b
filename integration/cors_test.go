package integration

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
)

const corsViewer = "https://viewer.example.org"

// corsConfig is the demo's two routes with CORS: the patient route allows
// one viewer origin, the open route any origin.
func corsConfig() string {
	studies, _ := filepath.Abs("../examples/demo/studies")
	key := base64.StdEncoding.EncodeToString(testKey)
	return fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	handle_path /open/* {
		smart_imaging {
			authz mock {
				disable_authz_checks
			}
			images folder %[1]s {
				lookup all-studies
			}
			study_token_key %[2]s
			cors *
		}
	}
	handle_path /hardcoded-patient/* {
		smart_imaging {
			authz mock {
				patient %[3]s mrn %[4]s
			}
			images folder %[1]s {
				lookup studies-by-mrn
			}
			study_token_key %[2]s
			cors %[5]s http://localhost:3000
		}
	}
}
`, studies, key, demoPatient, demoMRN, corsViewer)
}

// corsDo sends a request with the given headers and returns the response
// (body read and closed) and the body.
func corsDo(t *testing.T, tc *caddytest.Tester, method, rawURL string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := tc.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// corsList reports whether the comma-separated header value lists every
// name in want (case-insensitively, as header names compare).
func corsList(t *testing.T, what, value string, want ...string) {
	t.Helper()
	have := map[string]bool{}
	for _, v := range strings.Split(value, ",") {
		have[strings.ToLower(strings.TrimSpace(v))] = true
	}
	for _, w := range want {
		if !have[strings.ToLower(w)] {
			t.Errorf("%s %q does not list %s", what, value, w)
		}
	}
}

// corsPreflight sends a browser's preflight for a GET with Authorization.
func corsPreflight(t *testing.T, tc *caddytest.Tester, rawURL, origin string) *http.Response {
	t.Helper()
	resp, _ := corsDo(t, tc, http.MethodOptions, rawURL,
		"Origin", origin,
		"Access-Control-Request-Method", "GET",
		"Access-Control-Request-Headers", "authorization,accept")
	return resp
}

// corsExposed checks the headers every CORS answer to an allowed origin has.
func corsExposed(t *testing.T, resp *http.Response, wantOrigin string) {
	t.Helper()
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != wantOrigin {
		t.Errorf("Access-Control-Allow-Origin = %q, want %q", got, wantOrigin)
	}
	corsList(t, "Access-Control-Expose-Headers", resp.Header.Get("Access-Control-Expose-Headers"),
		"Content-Type", "Content-Length", "Content-Location")
	if wantOrigin != "*" {
		corsList(t, "Vary", strings.Join(resp.Header.Values("Vary"), ","), "Origin")
	}
}

func TestCORS(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(corsConfig(), "caddyfile")
	c := readCorpus(t)

	patientSearch := base + "/hardcoded-patient/fhir/ImagingStudy?patient=" + demoPatient
	res := search(t, tc, patientSearch)
	uid := keys(res.studies)[0]
	addr := res.endpoints[uid]
	in := c.byStudy[uid][0]
	instURL := addr + "/studies/" + uid + "/series/" + in.series + "/instances/" + in.sop

	targets := map[string]string{
		"search":   patientSearch,
		"metadata": base + "/hardcoded-patient/fhir/metadata",
		"study":    addr + "/studies/" + uid,
		"frames":   instURL + "/frames/1",
		"rendered": instURL + "/rendered",
		// A preflight carries no credentials: it is answered before the
		// study token is looked at.
		"garbage study token": base + "/hardcoded-patient/wado/not-a-token/studies/" + uid,
	}
	for name, u := range targets {
		t.Run("preflight "+name, func(t *testing.T) {
			resp := corsPreflight(t, tc, u, corsViewer)
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("preflight status %d, want 204", resp.StatusCode)
			}
			if got := resp.Header.Get("Access-Control-Allow-Origin"); got != corsViewer {
				t.Errorf("Access-Control-Allow-Origin = %q, want %q", got, corsViewer)
			}
			corsList(t, "Access-Control-Allow-Headers", resp.Header.Get("Access-Control-Allow-Headers"), "Authorization", "Accept")
			corsList(t, "Access-Control-Allow-Methods", resp.Header.Get("Access-Control-Allow-Methods"), "GET")
			corsList(t, "Vary", strings.Join(resp.Header.Values("Vary"), ","), "Origin")
		})
	}

	t.Run("second listed origin", func(t *testing.T) {
		resp := corsPreflight(t, tc, patientSearch, "http://localhost:3000")
		if got := resp.Header.Get("Access-Control-Allow-Origin"); resp.StatusCode != http.StatusNoContent || got != "http://localhost:3000" {
			t.Errorf("status %d, Allow-Origin %q", resp.StatusCode, got)
		}
	})

	gets := []struct {
		name, url, accept, wantType string
	}{
		{"FHIR search", patientSearch, "application/fhir+json", "application/fhir+json"},
		{"WADO frames", instURL + "/frames/1", `multipart/related; type="application/octet-stream"`, "multipart/related"},
		{"WADO rendered", instURL + "/rendered", "image/png", "image/png"},
		{"WADO metadata", addr + "/studies/" + uid + "/metadata", "application/dicom+json", "application/dicom+json"},
	}
	for _, g := range gets {
		t.Run("GET "+g.name, func(t *testing.T) {
			resp, body := corsDo(t, tc, http.MethodGet, g.url, "Origin", corsViewer, "Accept", g.accept, "Authorization", "Bearer some-token")
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), g.wantType) {
				t.Fatalf("status %d, Content-Type %q: %.200s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			corsExposed(t, resp, corsViewer)

			// An origin that is not listed gets the answer (the server
			// cannot stop a non-browser client) but no CORS grant, so a
			// browser withholds it from the page.
			resp, _ = corsDo(t, tc, http.MethodGet, g.url, "Origin", "https://evil.example.org", "Accept", g.accept)
			for _, h := range []string{"Access-Control-Allow-Origin", "Access-Control-Expose-Headers"} {
				if v := resp.Header.Get(h); v != "" {
					t.Errorf("unlisted origin got %s: %q", h, v)
				}
			}
		})
	}

	t.Run("preflight from an unlisted origin", func(t *testing.T) {
		for _, origin := range []string{"https://evil.example.org", "https://viewer.example.org.evil.example", "http://viewer.example.org", "null"} {
			resp := corsPreflight(t, tc, patientSearch, origin)
			for _, h := range []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Headers", "Access-Control-Allow-Methods"} {
				if v := resp.Header.Get(h); v != "" {
					t.Errorf("origin %s: preflight answered %s: %q", origin, h, v)
				}
			}
		}
	})

	t.Run("any origin on the open route", func(t *testing.T) {
		resp := corsPreflight(t, tc, base+"/open/fhir/ImagingStudy", "https://anyone.example.net")
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("preflight: status %d, Allow-Origin %q; want 204 and *", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
		}
		corsList(t, "Access-Control-Allow-Headers", resp.Header.Get("Access-Control-Allow-Headers"), "Authorization", "Accept")
		open := search(t, tc, base+"/open/fhir/ImagingStudy")
		resp, _ = corsDo(t, tc, http.MethodGet, open.endpoints[uid]+"/studies/"+uid+"/series/"+in.series+"/instances/"+in.sop+"/rendered",
			"Origin", "https://anyone.example.net", "Accept", "image/jpeg")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("rendered status %d", resp.StatusCode)
		}
		corsExposed(t, resp, "*")
	})

	t.Run("no Origin, no CORS headers", func(t *testing.T) {
		resp, _ := corsDo(t, tc, http.MethodGet, patientSearch, "Accept", "application/fhir+json")
		if v := resp.Header.Get("Access-Control-Allow-Origin"); v != "" {
			t.Errorf("same-origin request got Access-Control-Allow-Origin %q", v)
		}
	})

	// Browser apps must be able to read why they were refused.
	for name, u := range map[string]string{
		"403 search":        base + "/hardcoded-patient/fhir/ImagingStudy?patient=someone-else",
		"403 retrieve":      base + "/hardcoded-patient/wado/not-a-token/studies/" + uid,
		"400 search":        base + "/hardcoded-patient/fhir/ImagingStudy?patient=" + demoPatient + "&_count=x",
		"404 unknown":       base + "/hardcoded-patient/fhir/Patient",
		"406 unacceptable":  addr + "/studies/" + uid,
		"400 bad WADO path": addr + "/studies/" + uid + "/series/abc",
	} {
		t.Run(name+" carries CORS headers", func(t *testing.T) {
			resp, body := corsDo(t, tc, http.MethodGet, u, "Origin", corsViewer, "Accept", "application/pdf", "Authorization", "Bearer some-token")
			if resp.StatusCode < 400 {
				t.Fatalf("status %d, want an error", resp.StatusCode)
			}
			if !strings.Contains(body, `"OperationOutcome"`) {
				t.Errorf("body is not an OperationOutcome: %.200s", body)
			}
			corsExposed(t, resp, corsViewer)
		})
	}
}
