package orthanc

import (
	"context"
	"os"
	"sync"
	"testing"
)

// One Orthanc per test binary: starting one costs about 0.2 s and stopping
// it about 3.5 s, so the tests of a package share it.
var shared struct {
	mu   sync.Mutex
	once sync.Once
	srv  *Server
	err  error
}

// Shared starts the test binary's shared Orthanc on first use (default
// Options) and returns it; later calls return the same server or the same
// start error. StopShared ends it.
func Shared() (*Server, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	shared.once.Do(func() {
		shared.srv, shared.err = Start(context.Background(), Options{})
	})
	return shared.srv, shared.err
}

// Require returns the shared Orthanc for a test or benchmark. It skips
// tb in -short mode or when Orthanc is not installed, and fails it when
// Orthanc is installed but does not start. Packages that use it should
// stop the server at the end of the run:
//
//	func TestMain(m *testing.M) { os.Exit(orthanc.RunTests(m)) }
//
// Without that, the kernel kills Orthanc when the test binary exits
// (Linux), but its temporary directory stays behind.
func Require(tb testing.TB) *Server {
	tb.Helper()
	SkipUnlessAvailable(tb)
	s, err := Shared()
	if err != nil {
		tb.Fatalf("starting Orthanc: %v", err)
	}
	return s
}

// StopShared stops the shared Orthanc if one was started. The next Shared
// call starts no new one: it returns the stopped server.
func StopShared() error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv == nil {
		return nil
	}
	return shared.srv.Stop()
}

// RunTests runs m and then stops the shared Orthanc; it returns the exit
// code for os.Exit. Use it from TestMain.
func RunTests(m *testing.M) int {
	code := m.Run()
	if err := StopShared(); err != nil && code == 0 {
		return 1
	}
	return code
}

// RequireEnv names the environment switch that turns a missing Orthanc
// from a skip into a failure. CI sets it, so that a broken install can
// never pass with the real-PACS tests skipped.
const RequireEnv = "SIA_REQUIRE_ORTHANC"

// SkipUnlessAvailable skips tb in -short mode or when Orthanc is not
// installed; with SIA_REQUIRE_ORTHANC=1 (or SIA_REQUIRE_DIMSE=1: the DIMSE
// peer tests need Orthanc's DICOM port) a missing Orthanc fails tb
// instead. Tests that start their own instance with Start call it first.
func SkipUnlessAvailable(tb testing.TB) {
	tb.Helper()
	skipUnless(tb, testing.Short(), Available())
}

func skipUnless(tb testing.TB, short, available bool) {
	tb.Helper()
	if short {
		tb.Skip("skipping the real-PACS test in -short mode (it starts Orthanc)")
		return
	}
	if !available {
		if os.Getenv(RequireEnv) == "1" || os.Getenv("SIA_REQUIRE_DIMSE") == "1" {
			tb.Fatalf("%s=1 but Orthanc is not installed (%s and %s)", RequireEnv, DefaultBinary, DefaultPlugin)
			return
		}
		tb.Skipf("Orthanc is not installed (%s and %s); apt-get install orthanc orthanc-dicomweb to run this test", DefaultBinary, DefaultPlugin)
	}
}
