// Command gen writes the bundled sample studies of examples/demo/studies.
//
// Regenerate (from the repository root) after changing internal/dicomgen:
//
//	go run ./examples/demo/gen -out examples/demo/studies
//
// The output is deterministic (fixed UIDs under 2.25.2718281828459045235360287,
// no clock, no randomness): running it twice gives byte-identical files, and
// the dicomgen tests fail when the committed files drift from the generator.
// The data set itself is defined by dicomgen.DemoStudies; -clean removes an
// older set first (only a directory that holds a MANIFEST.tsv).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
)

func main() {
	out := flag.String("out", "examples/demo/studies", "output directory")
	clean := flag.Bool("clean", false, "remove the existing data set in -out first (it must contain "+dicomgen.ManifestFile+")")
	flag.Parse()
	if err := run(*out, *clean); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(out string, clean bool) error {
	if clean {
		if err := removeDataSet(out); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	m, err := dicomgen.WriteDemo(out)
	if err != nil {
		return err
	}
	if err := dicomgen.Verify(out, m); err != nil {
		return err
	}
	fmt.Printf("wrote %d instances in %d series of %d studies to %s\n",
		len(m), len(m.SeriesUIDs()), len(m.StudyUIDs()), out)
	return nil
}

// removeDataSet deletes the .dcm files and the manifest of an earlier run,
// then the directories left empty. It refuses a directory with no manifest.
func removeDataSet(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, dicomgen.ManifestFile)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return fmt.Errorf("-clean: %s has no %s; not removing anything", dir, dicomgen.ManifestFile)
		}
		return err
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			dirs = append(dirs, p)
		case filepath.Ext(p) == ".dcm" || p == filepath.Join(dir, dicomgen.ManifestFile):
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i > 0; i-- { // deepest first; keep dir itself
		os.Remove(dirs[i]) // fails harmlessly when not empty
	}
	return nil
}
