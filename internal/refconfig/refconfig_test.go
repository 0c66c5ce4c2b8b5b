package refconfig

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseShippedConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.json")
	if len(files) < 9 {
		t.Fatalf("want the shipped configs, got %v", files)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(raw); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestMockMRNs(t *testing.T) {
	const patient = `{"authorization": {"type": "mock", "patient": {"id": "p", "identifier": [
		{"system": "urn:ssn", "value": "999"},
		{"system": "urn:mrn", "value": "M1", "type": {"text": "EPIC", "coding": [{"code": "MR"}]}}]}},
		"images": {"type": "dicom-web", "endpoint": "http://pacs/dicom-web" %s}}`
	for _, c := range []struct {
		mrn, want, system string
	}{
		{"", "M1", "urn:mrn"},
		{`, "mrn": ["identifier[0].value"]`, "999", "urn:ssn"},
		{`, "mrn": ["identifier.where(type.text = 'EPIC').value"]`, "M1", "urn:mrn"},
		{`, "mrn": ["identifier.where(type.text = 'NONE').value"]`, "999", "urn:ssn"}, // falls back to identifier[0]
	} {
		cfg, err := Parse([]byte(strings.Replace(patient, "%s", c.mrn, 1)))
		if err != nil {
			t.Fatal(err)
		}
		got, system, err := cfg.MockMRNs()
		if err != nil || !reflect.DeepEqual(got, []string{c.want}) || system != c.system {
			t.Errorf("mrn %s: got %v %q %v, want %s %s", c.mrn, got, system, err, c.want, c.system)
		}
	}
	cfg, _ := Parse([]byte(strings.Replace(patient, "%s", `, "mrn": ["name.family"]`, 1)))
	if _, _, err := cfg.MockMRNs(); !errors.Is(err, ErrSchema) {
		t.Errorf("an unsupported FHIRPath: %v", err)
	}
}

func TestParseIsExact(t *testing.T) {
	for _, doc := range []string{
		`{"authorization": {"fhirBaseURL": "x"}, "images": {}}`, // case matters
		`{"authorization": {}, "images": {"delay": {"lookupuntil": 1}}}`,
		`{"authorization": {}, "images": {}, "extra": 1}`,
		`[]`,
	} {
		if _, err := Parse([]byte(doc)); !errors.Is(err, ErrSchema) {
			t.Errorf("%s: %v", doc, err)
		}
	}
}

func TestConvertRefusesWhatHasNoSafeEquivalent(t *testing.T) {
	for name, why := range map[string]string{
		"smart-sandbox-independent": "registered apps",
	} {
		raw, _ := os.ReadFile("testdata/" + name + ".json")
		cfg, err := Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Convert(name, cfg); !errors.Is(err, ErrNotConverted) || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v", name, err)
		}
	}
	raw, _ := os.ReadFile("testdata/open.json")
	cfg, _ := Parse(raw)
	if _, err := Convert("a/b", cfg); !errors.Is(err, ErrNotConverted) {
		t.Errorf("a tenant name with a slash: %v", err)
	}
	cfg.Images.Endpoint = "http://{env.PACS_SECRET}/dicom-web"
	if _, err := Convert("open", cfg); !errors.Is(err, ErrNotConverted) || !strings.Contains(err.Error(), "images.endpoint") {
		t.Errorf("a placeholder in a value: %v", err)
	}
}

// The reference's DIMSE tenant becomes images dimse with what its dcmtk
// tools used: its AE as calling AE and C-MOVE destination, its receiver
// port; a malformed endpoint or AE is not guessed at.
func TestConvertDIMSE(t *testing.T) {
	raw, _ := os.ReadFile("testdata/open-dimse.json")
	cfg, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Convert("open-dimse", cfg)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(r.Lines, "\n")
	for _, want := range []string{"images dimse orthanc:4242 {", "calling_ae STORESCP", "retrieve c-move", "move_destination STORESCP", "listen :30104", "lookup studies-by-mrn", "disable_authz_checks"} {
		if !strings.Contains(text, want) {
			t.Errorf("route lacks %q:\n%s", want, text)
		}
	}
	for _, bad := range []struct{ endpoint, ae string }{
		{"http://orthanc:4242", "STORESCP"},
		{"dimse://orthanc:4242/x", "STORESCP"},
		{"dimse://orthanc:4242", ""},
		{"dimse://orthanc:4242", "AN-AE-TITLE-TOO-LONG"},
		{"dimse://orthanc:4242", "A\\B"},
	} {
		c := *cfg
		c.Images.Endpoint, c.Images.AE = bad.endpoint, bad.ae
		if _, err := Convert("x", &c); !errors.Is(err, ErrNotConverted) {
			t.Errorf("endpoint %q ae %q: %v", bad.endpoint, bad.ae, err)
		}
	}
}
