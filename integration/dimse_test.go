package integration

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/internal/dimsenet"
)

// TestDIMSEFaults runs the dimse source through a real Caddy against an
// in-process PACS that misbehaves on demand (dimsenet.Provider): it
// refuses the association, answers slowly, drops the connection in the
// middle of a study and slips in an instance of another patient. The
// client must see an OperationOutcome with 502/504 before any byte, a
// broken transfer after, never the other patient's instance; readiness
// must follow the PACS.
func TestDIMSEFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy")
	}
	var files []string
	filepath.WalkDir("../examples/demo/studies", func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".dcm") {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	pacs := &dimsenet.Provider{AE: "FAULTY-PACS", Files: files}
	addr, err := pacs.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer pacs.Close()
	// A forged instance: the patient's CT study, another patient.
	raw, err := os.ReadFile(filepath.Join("../examples/demo/studies", "p1-kshlerin", "st1-ct-chest", "se01", "0001.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	forged := bytes.ReplaceAll(raw, []byte(demoMRN), []byte("9"+demoMRN[1:]))
	forged = bytes.ReplaceAll(forged, []byte("1.1.1.1.1"), []byte("1.1.1.1.9"))
	forgedPath := filepath.Join(t.TempDir(), "forged.dcm")
	if err := os.WriteFile(forgedPath, forged, 0o600); err != nil {
		t.Fatal(err)
	}

	key := base64.StdEncoding.EncodeToString(testKey)
	// The caches live in the test's directory: caddytest leaves the last
	// config loaded, so the module's own cleanup never runs.
	cacheDir := t.TempDir()
	route := func(prefix, address string) string {
		return fmt.Sprintf(`	handle_path %s/* {
		smart_imaging {
			authz mock {
				patient %s mrn %s
			}
			images dimse %s {
				called_ae FAULTY-PACS
				calling_ae SMART-IMAGING
				timeout 1s
				cache_dir %s
			}
			study_token_key %s
		}
	}
`, prefix, demoPatient, demoMRN, address, cacheDir, key)
	}
	tc := caddytest.NewTester(t)
	tc.InitServer(testGlobals+"\tgrace_period 2s\n}\nhttp://localhost:9080 {\n"+
		route("/dimse", addr)+route("/nowhere", "127.0.0.1:1")+"}\n", "caddyfile")

	ready := func(prefix string) int {
		resp, err := tc.Client.Get(base + prefix + "/health/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := ready("/dimse"); got != http.StatusOK {
		t.Errorf("ready with a PACS that answers C-ECHO: %d", got)
	}
	if got := ready("/nowhere"); got != http.StatusServiceUnavailable {
		t.Errorf("ready with no PACS: %d, want 503", got)
	}

	found := search(t, tc, base+"/dimse/fhir/ImagingStudy?patient="+demoPatient)
	studies := keys(found.studies)
	if len(studies) != 2 {
		t.Fatalf("studies %v, want the patient's 2", studies)
	}
	ct, mr := "2.25.2718281828459045235360287.1.1.1", "2.25.2718281828459045235360287.1.1.2"
	accept := `multipart/related; type="application/dicom"`

	t.Run("another patient's instance is never sent", func(t *testing.T) {
		pacs.Set(func(p *dimsenet.Provider) { p.Extra = []string{forgedPath} })
		defer pacs.Set(func(p *dimsenet.Provider) { p.Extra = nil })
		parts := retrieveMultipart(t, tc, found.endpoints[ct]+"/studies/"+ct, accept, "application/dicom")
		if len(parts) != 6 {
			t.Errorf("%d parts, want the study's 6", len(parts))
		}
		for _, p := range parts {
			if bytes.Contains(p, []byte("9"+demoMRN[1:])) {
				t.Error("the forged instance of another patient was sent")
			}
		}
	})

	t.Run("association refused", func(t *testing.T) {
		pacs.Set(func(p *dimsenet.Provider) { p.Refuse = true })
		defer pacs.Set(func(p *dimsenet.Provider) { p.Refuse = false })
		statusOf(t, tc, base+"/dimse/fhir/ImagingStudy?patient="+demoPatient, "application/fhir+json", http.StatusBadGateway)
		statusOf(t, tc, found.endpoints[mr]+"/studies/"+mr, accept, http.StatusBadGateway)
		if got := ready("/dimse"); got != http.StatusServiceUnavailable {
			t.Errorf("ready while the PACS refuses: %d, want 503", got)
		}
	})

	t.Run("slow PACS", func(t *testing.T) {
		pacs.Set(func(p *dimsenet.Provider) { p.Delay = 3 * time.Second })
		defer pacs.Set(func(p *dimsenet.Provider) { p.Delay = 0 })
		statusOf(t, tc, base+"/dimse/fhir/ImagingStudy?patient="+demoPatient, "application/fhir+json", http.StatusGatewayTimeout)
		statusOf(t, tc, found.endpoints[mr]+"/studies/"+mr+"/metadata", "application/dicom+json", http.StatusGatewayTimeout)
	})

	t.Run("connection dropped mid-study", func(t *testing.T) {
		pacs.Set(func(p *dimsenet.Provider) { p.DropAfter = 3 })
		defer pacs.Set(func(p *dimsenet.Provider) { p.DropAfter = 0 })
		req, _ := http.NewRequest(http.MethodGet, found.endpoints[mr]+"/studies/"+mr, nil)
		req.Header.Set("Accept", accept)
		resp, err := tc.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: the first parts should have left before the break", resp.StatusCode)
		}
		_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		mrd := multipart.NewReader(resp.Body, params["boundary"])
		n := 0
		var broke error
		for {
			p, err := mrd.NextPart()
			if err != nil {
				if err != io.EOF {
					broke = err
				}
				break
			}
			if _, err := io.Copy(io.Discard, p); err != nil {
				broke = err
				break
			}
			n++
		}
		if broke == nil {
			t.Errorf("a study cut after 3 instances ended as a well-formed answer of %d parts", n)
		}
	})

	// After the faults, the PACS works again and so does the gateway.
	parts := retrieveMultipart(t, tc, found.endpoints[mr]+"/studies/"+mr, accept, "application/dicom")
	if len(parts) != 7 {
		t.Errorf("after recovery: %d parts, want 7", len(parts))
	}
}
