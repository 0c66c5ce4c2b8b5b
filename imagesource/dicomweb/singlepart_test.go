package dicomweb

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/byterange"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// multipartOnlyPACS answers like Orthanc 1.10's DICOMweb plugin: an
// Accept that asks for no multipart answer gets 400; otherwise the body
// goes out as multipart with boundary BB.
func multipartOnlyPACS(body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept"), "multipart/related") {
			http.Error(w, "single-part not supported", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", `multipart/related; type="application/dicom"; boundary=BB`)
		w.Write(body)
	}
}

// rangedGateway serves Retrieve as the Caddy module does, through
// byterange.Wrap.
func rangedGateway(t *testing.T, s *Source) *httptest.Server {
	t.Helper()
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := wadopath.Parse(strings.TrimPrefix(r.URL.EscapedPath(), "/"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		err = s.Retrieve(byterange.Wrap(w, r), r, imagesource.Retrieval{Path: p, PublicBase: publicBase, StudyUID: p.StudyUID, PatientIDs: toKeys([]string{testPatient})})
		if e, ok := imagesource.AsError(err); ok {
			http.Error(w, e.Message, e.Status)
		} else if err != nil {
			panic(http.ErrAbortHandler)
		}
	}))
	t.Cleanup(gw.Close)
	return gw
}

func getWith(t *testing.T, u, accept, rng string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", accept)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: reading the answer: %v", u, err)
	}
	return resp, b
}

// A single-part instance or bulk data value is asked of the PACS as
// multipart (Orthanc serves nothing else) and sent as its one part, so
// that a Range can be served on it.
func TestRetrieveSinglePartFromMultipart(t *testing.T) {
	own := dicomObject("1.2", testPatient, 3*coalesceSize) // larger than the coalescer: streamed
	small := dicomObject("1.2", testPatient, 300)
	pixels := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	bulk := []byte("--BB\r\nContent-Type: application/octet-stream\r\nContent-Length: " + strconv.Itoa(len(pixels)) + "\r\n\r\n")
	bulk = append(append(bulk, pixels...), "\r\n--BB--\r\n"...)
	cases := []struct {
		name, path, accept, wantUpstream, wantType string
		up, want                                   []byte
	}{
		{"instance", "/studies/1.2/series/3.4/instances/5.6", "application/dicom", `multipart/related; type="application/dicom"`,
			"application/dicom", multipartOf(true, own), own},
		{"small instance without a part length", "/studies/1.2/series/3.4/instances/5.6", "application/dicom", `multipart/related; type="application/dicom"`,
			"application/dicom", multipartOf(false, small), small},
		{"instance in a transfer syntax", "/studies/1.2/series/3.4/instances/5.6", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
			`multipart/related; transfer-syntax=1.2.840.10008.1.2.1; type="application/dicom"`, "application/dicom", multipartOf(true, small), small},
		{"bulk data", "/studies/1.2/series/3.4/instances/5.6/bulkdata/7fe00010", "application/octet-stream",
			`multipart/related; type="application/octet-stream"`, "application/octet-stream", bulk, pixels},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, up, _ := retrieveSetup(t, multipartOnlyPACS(c.up), nil)
			gw := rangedGateway(t, s)
			resp, body := getWith(t, gw.URL+c.path, c.accept, "")
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, c.want) {
				t.Fatalf("got %d, %d bytes (%.60q), want 200 and the %d bytes of the part", resp.StatusCode, len(body), body, len(c.want))
			}
			if got := up.last(t).Header.Get("Accept"); got != c.wantUpstream {
				t.Errorf("upstream Accept = %q, want %q", got, c.wantUpstream)
			}
			if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != c.wantType {
				t.Errorf("Content-Type = %q, want %s", resp.Header.Get("Content-Type"), c.wantType)
			}
			if resp.Header.Get("Content-Length") != strconv.Itoa(len(c.want)) || resp.Header.Get("Accept-Ranges") != "bytes" {
				t.Errorf("Content-Length %q, Accept-Ranges %q; want %d and bytes",
					resp.Header.Get("Content-Length"), resp.Header.Get("Accept-Ranges"), len(c.want))
			}
			n := len(c.want)
			resp, body = getWith(t, gw.URL+c.path, c.accept, "bytes=100-")
			if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, c.want[100:]) ||
				resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 100-%d/%d", n-1, n) {
				t.Errorf("bytes=100-: %d, %d bytes, %q", resp.StatusCode, len(body), resp.Header.Get("Content-Range"))
			}
			resp, _ = getWith(t, gw.URL+c.path, c.accept, "bytes="+strconv.Itoa(n)+"-")
			if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
				t.Errorf("bytes=%d-: %d, want 416", n, resp.StatusCode)
			}
		})
	}
}

// The unwrapped part is checked like any object: one of another study or
// patient, or a count of parts other than one, never leaves.
func TestRetrieveSinglePartChecksThePart(t *testing.T) {
	own := dicomObject("1.2", testPatient, 300)
	big := dicomObject("1.2", testPatient, 2*coalesceSize)
	for name, c := range map[string]struct {
		up   []byte
		want string // "502" or "refused" (502 or a broken transfer)
	}{
		"another patient":             {multipartOf(true, dicomObject("1.2", otherPatient, 300)), "502"},
		"another study, no length":    {multipartOf(false, dicomObject(otherStudy, testPatient, 300)), "502"},
		"two parts":                   {multipartOf(true, own, own), "502"},
		"own then another patient":    {multipartOf(true, big, dicomObject("1.2", otherPatient, 300)), "refused"},
		"no part":                     {[]byte("--BB--\r\n"), "502"},
		"not Part 10":                 {multipartOf(true, []byte(strings.Repeat("not dicom ", 20))), "502"},
		"part ends before its header": {multipartOf(true, own[:200]), "502"},
	} {
		t.Run(name, func(t *testing.T) {
			s, logs := observedSetup(t, multipartOnlyPACS(c.up))
			gw := rangedGateway(t, s)
			req, _ := http.NewRequest(http.MethodGet, gw.URL+"/studies/1.2/series/3.4/instances/5.6", nil)
			req.Header.Set("Accept", "application/dicom")
			req.Header.Set("Range", "bytes=0-")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusBadGateway:
				if bytes.Contains(body, []byte("DICM")) {
					t.Errorf("the refusal carries object bytes")
				}
			case c.want == "refused" && rerr != nil:
				// a broken transfer: the client never holds a whole answer
			default:
				t.Errorf("got %d (read error %v), want %s", resp.StatusCode, rerr, c.want)
			}
			if bytes.Contains(body, []byte(otherPatient)) || bytes.Contains(body, []byte(otherStudy)) {
				t.Errorf("the other patient's data reached the client")
			}
			faultLogged(t, logs)
		})
	}
}

// Multipart and wildcard Accepts, and other resources, are not changed:
// the client gets the PACS's answer as it is.
func TestMultipartAccept(t *testing.T) {
	inst := wadopath.Path{StudyUID: "1.2", SeriesUID: "3.4", InstanceUID: "5.6"}
	series := wadopath.Path{StudyUID: "1.2", SeriesUID: "3.4"}
	bulk := wadopath.Path{StudyUID: "1.2", SeriesUID: "3.4", InstanceUID: "5.6", Resource: wadopath.Bulkdata}
	frames := wadopath.Path{StudyUID: "1.2", SeriesUID: "3.4", InstanceUID: "5.6", Resource: wadopath.Frames, Frames: []int{1}}
	for _, c := range []struct {
		p            wadopath.Path
		accept, want string
		unwrap       bool
	}{
		{inst, "application/dicom", `multipart/related; type="application/dicom"`, true},
		{inst, "application/dicom; q=0.9, application/dicom; transfer-syntax=*; q=0",
			`multipart/related; q=0.9; type="application/dicom"`, true},
		{bulk, "application/octet-stream", `multipart/related; type="application/octet-stream"`, true},
		{inst, "", "", false},
		{inst, "*/*", "*/*", false},
		{inst, "application/dicom, multipart/related", "application/dicom, multipart/related", false},
		{inst, "application/dicom, application/octet-stream", "application/dicom, application/octet-stream", false},
		{inst, "application/dicom; type=x", "application/dicom; type=x", false},
		{inst, "application/dicom; q=0", "application/dicom; q=0", false},
		{inst, "not a media type", "not a media type", false},
		{series, "application/dicom", "application/dicom", false},
		{frames, "application/octet-stream", "application/octet-stream", false},
	} {
		got, unwrap := multipartAccept(c.p, c.accept)
		if got != c.want || unwrap != c.unwrap {
			t.Errorf("%s, Accept %q: %q, %v; want %q, %v", c.p, c.accept, got, unwrap, c.want, c.unwrap)
		}
	}
}
