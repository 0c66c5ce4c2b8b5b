package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

// TestDynamicConfig serves a tenant described by the /dyn segment: a
// dicomweb PACS on the route's allow list (with the route's credentials
// for it), searched and retrieved like a configured route.
func TestDynamicConfig(t *testing.T) {
	pacs := orthanc.Require(t)
	dir := t.TempDir()
	m, err := dicomgen.WriteDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pacs.Upload(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	pacsHost := fmt.Sprintf("127.0.0.1:%d", pacs.Port())
	key := base64.StdEncoding.EncodeToString(testKey)
	studies := "../examples/demo/studies"
	tc := caddytest.NewTester(t)
	tc.InitServer(fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	handle_path /tenants/* {
		smart_imaging {
			authz mock {
				patient %[4]s mrn %[5]s
			}
			images folder %[3]s
			study_token_key %[2]s
			dynamic_config {
				allow_hosts %[1]s
				allow_mock
				credentials %[1]s basic %[6]s %[7]s
			}
		}
	}
	handle_path /static/* {
		smart_imaging {
			authz mock {
				patient %[4]s mrn %[5]s
			}
			images folder %[3]s
			study_token_key %[2]s
		}
	}
}
`, pacsHost, key, studies, demoPatient, demoMRN, pacs.Username(), pacs.Password()), "caddyfile")

	encode := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	cfg := map[string]any{
		"authz":  map[string]any{"kind": "mock", "patient": "dyn-patient", "mrn": []string{dicomgen.DemoPatientMRN}},
		"images": map[string]any{"kind": "dicomweb", "base_url": "http://" + pacsHost + "/dicom-web", "lookup": "studies-by-mrn"},
	}
	seg := encode(cfg)

	res := search(t, tc, base+"/tenants/dyn/"+seg+"/fhir/ImagingStudy?patient=dyn-patient")
	want := sortedCopy(m.ForPatient(dicomgen.DemoPatientMRN).StudyUIDs())
	if got := keys(res.studies); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("dynamic search = %v, want %v", got, want)
	}
	uid := keys(res.studies)[0]
	addr := res.endpoints[uid]
	if !strings.HasPrefix(addr, base+"/tenants/dyn/"+seg+"/wado/") {
		t.Fatalf("endpoint %s is not under the dynamic tenant", addr)
	}
	parts := retrieveMultipart(t, tc, addr+"/studies/"+uid, `multipart/related; type="application/dicom"`, "application/dicom")
	if len(parts) == 0 {
		t.Fatal("dynamic retrieve gave no instances")
	}

	// The dynamic tenant's study token opens on no other tenant: not on
	// the parent route, not under another dynamic config.
	token := addr[strings.LastIndex(addr, "/")+1:]
	get(t, tc, base+"/tenants/wado/"+token+"/studies/"+uid, "*/*", http.StatusForbidden, "application/fhir+json")
	get(t, tc, base+"/static/wado/"+token+"/studies/"+uid, "*/*", http.StatusForbidden, "application/fhir+json")
	cfg["study_token_ttl"] = "30m"
	other := encode(cfg)
	get(t, tc, base+"/tenants/dyn/"+other+"/wado/"+token+"/studies/"+uid, "*/*", http.StatusForbidden, "application/fhir+json")

	// Off unless enabled; refused with a reason when not allowed.
	get(t, tc, base+"/static/dyn/"+seg+"/fhir/ImagingStudy?patient=dyn-patient", "*/*", http.StatusNotFound, "application/fhir+json")
	cfg["images"].(map[string]any)["base_url"] = "http://127.0.0.2:1/dicom-web"
	body := get(t, tc, base+"/tenants/dyn/"+encode(cfg)+"/fhir/ImagingStudy?patient=dyn-patient", "*/*", http.StatusBadRequest, "application/fhir+json")
	if !strings.Contains(string(body), "allow list") {
		t.Errorf("refusal does not say why: %s", body)
	}
	get(t, tc, base+"/tenants/dyn/not*base64/fhir/metadata", "*/*", http.StatusBadRequest, "application/fhir+json")
}
