package orthanc_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

func TestMain(m *testing.M) { os.Exit(orthanc.RunTests(m)) }

func get(t *testing.T, s *orthanc.Server, path string, user, pass string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, pass)
	req.Header.Set("Accept", "application/dicom+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", path, err)
	}
	return resp, body
}

func TestUploadAndQIDO(t *testing.T) {
	s := orthanc.Require(t)
	dir := t.TempDir()
	m, err := dicomgen.WriteDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Upload(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(m) {
		t.Fatalf("uploaded %d files, manifest lists %d", n, len(m))
	}

	resp, body := get(t, s, "/dicom-web/studies?PatientID="+dicomgen.DemoPatientMRN, s.Username(), s.Password())
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("QIDO: HTTP %d: %s", resp.StatusCode, body)
	}
	var studies []map[string]any
	if err := json.Unmarshal(body, &studies); err != nil {
		t.Fatalf("QIDO answer: %v", err)
	}
	want := len(m.ForPatient(dicomgen.DemoPatientMRN).StudyUIDs())
	// Orthanc matches PatientID case-insensitively by default: the case
	// decoy's study comes back too. That is the harness default on purpose.
	if len(studies) != want+1 {
		t.Errorf("QIDO PatientID=%s gave %d studies, want %d (%d of the patient + the case decoy)",
			dicomgen.DemoPatientMRN, len(studies), want+1, want)
	}

	resp, _ = get(t, s, "/dicom-web/studies", s.Username(), "wrong")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong password: HTTP %d, want 401", resp.StatusCode)
	}
	if !strings.HasPrefix(s.DICOMwebURL(), "http://127.0.0.1:"+strconv.Itoa(s.Port())) {
		t.Errorf("DICOMwebURL %q does not use 127.0.0.1 and the port", s.DICOMwebURL())
	}
}

func TestStartRefusesBusyPort(t *testing.T) {
	s := orthanc.Require(t)
	// The shared server holds its port.
	if _, err := orthanc.Start(context.Background(), orthanc.Options{Port: s.Port()}); err == nil {
		t.Fatalf("Start on the shared server's port %d succeeded", s.Port())
	}
	// Any other listener too.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	if _, err := orthanc.Start(context.Background(), orthanc.Options{Port: port}); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("Start on busy port %d: err = %v, want a 'busy' error", port, err)
	}
}

func TestStopEndsTheProcessAndFreesThePort(t *testing.T) {
	orthanc.Require(t) // skip rules
	s, err := orthanc.Start(context.Background(), orthanc.Options{Username: "u", Password: "p", QidoCaseSensitive: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := s.Dir()
	resp, _ := get(t, s, "/system", "u", "p")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/system with the configured user: HTTP %d", resp.StatusCode)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if !s.Exited() {
		t.Error("process still running after Stop")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s not removed: %v", dir, err)
	}
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+strconv.Itoa(s.Port()), time.Second)
	if err == nil {
		c.Close()
		t.Errorf("port %d still answers after Stop", s.Port())
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestSuspendResume(t *testing.T) {
	s := orthanc.Require(t)
	if err := s.Suspend(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			s.Resume()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/system", nil)
	if resp, err := s.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("a suspended Orthanc answered")
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	req, _ = http.NewRequest(http.MethodGet, "/system", nil)
	resp, err := s.Do(req)
	if err != nil {
		t.Fatalf("after Resume: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after Resume: HTTP %d", resp.StatusCode)
	}
}
