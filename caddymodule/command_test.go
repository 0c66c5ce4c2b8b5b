package caddymodule

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestImportEveryReferenceConfig converts every reference config of the
// test data: the output adapts without warnings, holds none of the
// configs' secrets (they become {env.…} placeholders it names), serves
// each tenant at /{name}/, and says why the configs it cannot convert
// were left out.
func TestImportEveryReferenceConfig(t *testing.T) {
	files, err := filepath.Glob("../internal/refconfig/testdata/*.json")
	if err != nil || len(files) < 9 {
		t.Fatalf("reference configs: %v %v", files, err)
	}
	var out, errOut bytes.Buffer
	err = runImport(&out, &errOut, "http://localhost:8000", files)
	if !errors.Is(err, errSomeNotConverted) {
		t.Fatalf("runImport = %v, want errSomeNotConverted (dual launch)", err)
	}
	text := out.String()
	_, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(out.Bytes(), map[string]any{"filename": "import.caddyfile"})
	if err != nil || len(warnings) > 0 {
		t.Fatalf("caddy adapt: %v %v\n%s", err, warnings, text)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		switch name {
		case "smart-sandbox-independent":
			if !strings.Contains(text, "# "+name+" was not converted: ") || !strings.Contains(errOut.String(), name) {
				t.Errorf("%s: no reason given for leaving it out", name)
			}
		default:
			if !strings.Contains(text, "handle_path /"+name+"/* {") {
				t.Errorf("%s: no route", name)
			}
		}
	}
	for _, secret := range []string{"argonaut", "not-a-real-secret", "SIlbwj1iILaKpD7Xntfk2QQqWdChSR3oqlKETSFium8D1bLyAIgBUY1SXlcEBsE6"} {
		if strings.Contains(text, secret) {
			t.Errorf("the output holds a secret of the configs: %q", secret)
		}
	}
	for _, env := range []string{"SMART_SANDBOX_PRIVATE_KEY", "MEDITECH_SANDBOX_CLIENT_SECRET", "OPEN_PACS_PASSWORD", "SMART_IMAGING_STUDY_TOKEN_KEY"} {
		if !strings.Contains(text, "{env."+env+"}") || !strings.Contains(text, "#   "+env+": ") {
			t.Errorf("%s is not used and named", env)
		}
	}
	for _, want := range []string{"lookup_until 2123-03-04T17:14:02Z", "disable_authz_checks", "patient 87a339d0-8cae-418e-89c7-8651e6aab3c6", "images dimse orthanc:4242 {"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestImportRefusesUnreadableConfigs: a config that is not the reference's
// shape stops the command with the file and the field.
func TestImportRefusesUnreadableConfigs(t *testing.T) {
	f := filepath.Join(t.TempDir(), "x.json")
	if err := os.WriteFile(f, []byte(`{"authorization": {"type": "mock", "fhirBaseURL": "x"}, "images": {}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err := runImport(&out, &errOut, ":8000", []string{f})
	if err == nil || !strings.Contains(err.Error(), "x.json") || !strings.Contains(err.Error(), "authorization.fhirBaseURL") {
		t.Errorf("runImport = %v", err)
	}
}
