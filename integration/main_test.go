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

// testGlobals opens the global options block every Caddyfile of these
// tests starts with: caddytest's admin address and ports, no trust store.
// A config adds its own options (grace_period, logging) and the closing
// brace.
const testGlobals = "{\n\tskip_install_trust\n\tadmin localhost:2999\n\thttp_port 9080\n\thttps_port 9443\n"
