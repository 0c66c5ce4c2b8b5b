package integration

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	// The custom Caddy under test: standard modules plus ours.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/smart-imaging/smart_imaging"
)

var updateGolden = flag.Bool("update", false, "rewrite the expected JSON of the golden adapt tests")

// TestCaddyfileAdapt runs the golden tests in caddyfile_adapt/: each file is
// a Caddyfile, a line of ten dashes, then the JSON it must adapt to.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden adapt tests found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			caddyfile, expected, ok := strings.Cut(string(data), "\n----------\n")
			if !ok {
				t.Fatalf("%s has no ---------- separator", f)
			}
			if *updateGolden {
				out := adaptOrFail(t, caddyfile)
				if err := os.WriteFile(f, []byte(caddyfile+"\n----------\n"+out+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !caddytest.CompareAdapt(t, f, strings.TrimRight(caddyfile, "\n")+"\n", "caddyfile", strings.TrimRight(expected, "\n")) {
				t.Errorf("%s: adapted JSON differs from the golden copy (run go test ./integration -run TestCaddyfileAdapt -update to accept)", f)
			}
		})
	}
}

// TestEveryCaddyfileAdapts adapts every Caddyfile the repository ships, as
// `caddy adapt` would, and fails on errors and on warnings (an unformatted
// file gives one).
func TestEveryCaddyfileAdapts(t *testing.T) {
	var files []string
	_ = filepath.WalkDir("..", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && (d.Name() == "Caddyfile" || d.Name() == "Caddyfile.example" || strings.HasSuffix(d.Name(), ".Caddyfile")) {
			files = append(files, p)
		}
		return nil
	})
	if len(files) == 0 {
		t.Fatal("no Caddyfiles found")
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			adapter := caddyconfig.GetAdapter("caddyfile")
			_, warnings, err := adapter.Adapt(data, map[string]any{"filename": f})
			if err != nil {
				t.Fatalf("adapt %s: %v", f, err)
			}
			for _, w := range warnings {
				t.Errorf("adapt %s: warning at line %d: %s", f, w.Line, w.Message)
			}
		})
	}
}

func adaptOrFail(t *testing.T, caddyfile string) string {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}
