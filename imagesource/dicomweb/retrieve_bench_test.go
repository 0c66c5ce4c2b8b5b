package dicomweb_test

import (
	"bytes"
	"fmt"
	"github.com/smart-imaging/smart_imaging/pacskey"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomweb"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
)

// cannedProxy answers like Caddy's reverse proxy would with an upstream
// answer: its headers, then the body in 32 KiB writes (Caddy's copy buffer).
type cannedProxy struct {
	contentType string
	body        []byte
}

func (p *cannedProxy) ServeHTTP(w http.ResponseWriter, _ *http.Request, _ caddyhttp.Handler) error {
	w.Header().Set("Content-Type", p.contentType)
	w.Header().Set("Content-Length", fmt.Sprint(len(p.body)))
	w.WriteHeader(http.StatusOK)
	for b := p.body; len(b) > 0; {
		n := min(len(b), 32<<10)
		if _, err := w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// sinkWriter counts what reaches the client.
type sinkWriter struct {
	h http.Header
	n int64
}

func (w *sinkWriter) Header() http.Header { return w.h }
func (w *sinkWriter) WriteHeader(int)     {}
func (w *sinkWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}
func (w *sinkWriter) Flush() {}

const benchBase = "http://127.0.0.1:8042/dicom-web"

// Identity of the bench study.
const (
	benchStudyUID = "2.25.2718281828459045235360287.9.1.1"
	benchPatient  = "BENCH-MRN-0001"
)

func benchRetrieve(b *testing.B, path, accept string, proxy *cannedProxy) {
	src, err := dicomweb.New(dicomweb.Config{BaseURL: benchBase}, proxy, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	wp, err := wadopath.Parse(path)
	if err != nil {
		b.Fatal(err)
	}
	req := imagesource.Retrieval{Path: wp, PublicBase: "http://127.0.0.1:8080/bench/wado/" + strings.Repeat("t", 180),
		StudyUID: benchStudyUID, PatientIDs: []pacskey.PatientKey{benchPatient}}
	r := httptest.NewRequest(http.MethodGet, "/wado/x/"+path, nil)
	r.Header.Set("Accept", accept)
	b.SetBytes(int64(len(proxy.body)))
	b.ReportAllocs()
	for b.Loop() {
		w := &sinkWriter{h: http.Header{}}
		if err := src.Retrieve(w, r, req); err != nil {
			b.Fatal(err)
		}
		if w.n < int64(len(proxy.body)) {
			b.Fatalf("client got %d of %d bytes", w.n, len(proxy.body))
		}
	}
}

// benchInstances writes the bench study (3 series of 7 CT instances of
// 512x512, as `go run ./bench` uploads) and returns its files' bytes.
func benchInstances(b *testing.B) [][]byte {
	dir := b.TempDir()
	m, err := dicomgen.WriteStudy(dir, dicomgen.StudySpec{PatientID: benchPatient, StudyUID: benchStudyUID,
		Series: 3, InstancesPerSeries: 7, Rows: 512, Cols: 512})
	if err != nil {
		b.Fatal(err)
	}
	var out [][]byte
	for _, in := range m {
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(in.File)))
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, data)
	}
	return out
}

func multipartStudy(parts [][]byte) (string, []byte) {
	boundary := strings.Repeat("b", 72)
	var body bytes.Buffer
	for _, part := range parts {
		fmt.Fprintf(&body, "--%s\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\nMIME-Version: 1.0\r\n\r\n", boundary, len(part))
		body.Write(part)
		body.WriteString("\r\n")
	}
	fmt.Fprintf(&body, "--%s--\r\n", boundary)
	return `multipart/related; type="application/dicom"; boundary=` + boundary, body.Bytes()
}

// BenchmarkRetrieveStudyMultipart streams a 21-part, 11 MB study of real
// CT instances through the gateway's answer filter (each part's DICOM
// header checked, its URLs mapped, its contents passed on).
func BenchmarkRetrieveStudyMultipart(b *testing.B) {
	ct, body := multipartStudy(benchInstances(b))
	benchRetrieve(b, "studies/"+benchStudyUID, `multipart/related; type="application/dicom"`, &cannedProxy{contentType: ct, body: body})
}

// BenchmarkRetrieveInstanceMultipart streams one 525 KB CT instance.
func BenchmarkRetrieveInstanceMultipart(b *testing.B) {
	ct, body := multipartStudy(benchInstances(b)[:1])
	benchRetrieve(b, "studies/"+benchStudyUID+"/series/"+benchStudyUID+".1/instances/"+benchStudyUID+".1.1",
		`multipart/related; type="application/dicom"`, &cannedProxy{contentType: ct, body: body})
}

// BenchmarkRetrieveMetadataJSON checks and passes an 80 KB study metadata
// answer (21 instances of about 65 attributes) whose BulkDataURIs are
// rewritten onto the gateway.
func BenchmarkRetrieveMetadataJSON(b *testing.B) {
	body := dicomweb.BenchMetadataBody(benchBase, benchStudyUID, benchPatient)
	benchRetrieve(b, "studies/"+benchStudyUID+"/metadata", "application/dicom+json", &cannedProxy{contentType: "application/dicom+json", body: body})
}
