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
// brace. Configs use grace_period 2s, not less: on a reload the old server
// stops with the old config's grace period, and a connection it accepted
// just before (a test's first request to the new config) is closed unserved
// once that period ends; with 1ns the client saw EOF (TestRenderBounds,
// once in a fresh-clone run). Idle kept-alive connections still close at
// once, so reloads are not slower.
const testGlobals = "{\n\tskip_install_trust\n\tadmin localhost:2999\n\thttp_port 9080\n\thttps_port 9443\n"
