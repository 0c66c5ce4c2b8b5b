// Package integration holds the end-to-end tests: a real Caddy (caddytest,
// one per test binary), a real Orthanc (internal/orthanc, started once per
// test binary when installed) and a test EHR speaking the real protocols.
package integration

import (
	"os"
	"testing"

	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

// TestMain stops the shared Orthanc when the tests end.
func TestMain(m *testing.M) { os.Exit(orthanc.RunTests(m)) }
