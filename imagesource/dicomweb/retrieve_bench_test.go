package dicomweb_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomweb"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
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

func benchRetrieve(b *testing.B, path, accept string, proxy *cannedProxy) {
	src, err := dicomweb.New(dicomweb.Config{BaseURL: benchBase}, proxy, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	wp, err := wadopath.Parse(path)
	if err != nil {
		b.Fatal(err)
	}
	req := imagesource.Retrieval{Path: wp, PublicBase: "http://127.0.0.1:8080/bench/wado/" + strings.Repeat("t", 180)}
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

// BenchmarkRetrieveStudyMultipart streams a 21-part, 12.6 MB study
// through the gateway's answer filter (multipart: part headers checked for
// PACS URLs, contents passed on).
func BenchmarkRetrieveStudyMultipart(b *testing.B) {
	boundary := strings.Repeat("b", 72)
	var body bytes.Buffer
	part := bytes.Repeat([]byte{0x5a}, 600<<10)
	for i := 0; i < 21; i++ {
		fmt.Fprintf(&body, "--%s\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\nMIME-Version: 1.0\r\n\r\n", boundary, len(part))
		body.Write(part)
		body.WriteString("\r\n")
	}
	fmt.Fprintf(&body, "--%s--\r\n", boundary)
	benchRetrieve(b, "studies/2.25.1", `multipart/related; type="application/dicom"`, &cannedProxy{
		contentType: `multipart/related; type="application/dicom"; boundary=` + boundary, body: body.Bytes()})
}

// BenchmarkRetrieveMetadataJSON streams an 80 KB study metadata answer
// whose BulkDataURIs are rewritten onto the gateway.
func BenchmarkRetrieveMetadataJSON(b *testing.B) {
	var items []string
	for i := 0; i < 21; i++ {
		var it strings.Builder
		it.WriteString(`{"00080018":{"vr":"UI","Value":["2.25.1.1.` + fmt.Sprint(i) + `"]}`)
		for t := 0; t < 60; t++ {
			fmt.Fprintf(&it, `,"0009%04X":{"vr":"LO","Value":["value %d"]}`, t, t)
		}
		fmt.Fprintf(&it, `,"7FE00010":{"vr":"OW","BulkDataURI":"%s/studies/2.25.1/series/2.25.1.1/instances/2.25.1.1.%d/bulk/7fe00010"}}`, benchBase, i)
		items = append(items, it.String())
	}
	body := []byte("[" + strings.Join(items, ",") + "]")
	benchRetrieve(b, "studies/2.25.1/metadata", "application/dicom+json", &cannedProxy{contentType: "application/dicom+json", body: body})
}
