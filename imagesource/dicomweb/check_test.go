package dicomweb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/smart-imaging/smart_imaging/pacskey"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
)

// Another patient's identifiers: none may reach the client or the log.
const (
	otherStudy   = "1.3.99"
	otherPatient = "BOB-MRN-77"
)

// observedSetup is retrieveSetup with the source's log observed.
func observedSetup(t *testing.T, h http.HandlerFunc) (*Source, *observer.ObservedLogs) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	target, _ := url.Parse(srv.URL)
	core, logs := observer.New(zapcore.DebugLevel)
	s, err := New(Config{BaseURL: srv.URL + "/dicom-web"}, &rpProxy{target: target, transport: srv.Client().Transport},
		srv.Client(), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	return s, logs
}

// multipartOf frames objects as a multipart/related body with boundary BB,
// with Content-Length part headers when withLength is set.
func multipartOf(withLength bool, objects ...[]byte) []byte {
	var b bytes.Buffer
	for _, o := range objects {
		b.WriteString("--BB\r\nContent-Type: application/dicom\r\n")
		if withLength {
			fmt.Fprintf(&b, "Content-Length: %d\r\n", len(o))
		}
		b.WriteString("\r\n")
		b.Write(o)
		b.WriteString("\r\n")
	}
	b.WriteString("--BB--\r\n")
	return b.Bytes()
}

const mpType = `multipart/related; type="application/dicom"; boundary=BB`

// faultLogged checks that exactly one PACS fault was logged, naming the
// requested study and none of the other patient's identifiers.
func faultLogged(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	faults := logs.FilterMessageSnippet("PACS fault").All()
	if len(faults) != 1 {
		t.Errorf("%d PACS fault log lines, want 1 (all: %v)", len(faults), logs.All())
		return
	}
	f := faults[0]
	if f.Level != zapcore.WarnLevel || f.ContextMap()["study"] != "1.2" {
		t.Errorf("fault logged as %v with %v; want a warning naming study 1.2", f.Level, f.ContextMap())
	}
	line := fmt.Sprint(f.Message, f.ContextMap())
	if strings.Contains(line, otherStudy) || strings.Contains(line, otherPatient) {
		t.Errorf("the log names the other patient's data: %s", line)
	}
}

func TestRetrieveChecksEveryObject(t *testing.T) {
	own := dicomObject("1.2", testPatient, 300)
	bigOwn := dicomObject("1.2", testPatient, 2*coalesceSize)
	longHeader := dicomObject("1.2", testPatient, 10)
	{
		// A private element of 1.1 MiB before PatientID: the study UID
		// lies beyond what the gateway holds back.
		var b bytes.Buffer
		b.Write(longHeader[:160]) // preamble, DICM, the transfer syntax
		b.Write([]byte{0x09, 0x00, 0x10, 0x10, 'O', 'B', 0, 0})
		b.Write([]byte{0, 0, 0x12, 0}) // 0x120000 bytes
		b.Write(make([]byte, 0x120000))
		b.Write(longHeader[160:])
		longHeader = b.Bytes()
	}
	type answer struct {
		contentType string
		body        []byte
	}
	cases := []struct {
		name     string
		path     string
		patients []string // nil: unrestricted
		up       answer
		// want: "ok" (the answer whole), "502" (a clean refusal),
		// "broken" (a broken transfer), "refused" (502 or broken).
		want string
	}{
		{"own object", "/studies/1.2/series/3.4/instances/5.6", []string{testPatient}, answer{"application/dicom", own}, "ok"},
		{"own objects, multipart", "/studies/1.2", []string{"x", testPatient}, answer{mpType, multipartOf(true, own, own)}, "ok"},
		{"own objects, multipart without part lengths", "/studies/1.2", []string{testPatient}, answer{mpType, multipartOf(false, own, own)}, "ok"},
		{"PatientID padded", "/studies/1.2", []string{testPatient}, answer{mpType, multipartOf(true, dicomObject("1.2", " "+testPatient+" ", 8))}, "ok"},
		{"object of another study", "/studies/1.2/series/3.4/instances/5.6", []string{testPatient}, answer{"application/dicom", dicomObject(otherStudy, testPatient, 300)}, "502"},
		{"object of another patient", "/studies/1.2/series/3.4/instances/5.6", []string{testPatient}, answer{"application/dicom", dicomObject("1.2", otherPatient, 300)}, "502"},
		{"another patient, unrestricted route", "/studies/1.2", nil, answer{"application/dicom", dicomObject("1.2", otherPatient, 300)}, "ok"},
		{"another study, unrestricted route", "/studies/1.2", nil, answer{"application/dicom", dicomObject(otherStudy, otherPatient, 300)}, "502"},
		{"object without PatientID", "/studies/1.2", []string{testPatient}, answer{"application/dicom", dicomObject("1.2", "", 300)}, "502"},
		{"first part of another patient", "/studies/1.2", []string{testPatient}, answer{mpType, multipartOf(true, dicomObject("1.2", otherPatient, 300), own)}, "502"},
		{"first part of another study, no part lengths", "/studies/1.2", []string{testPatient}, answer{mpType, multipartOf(false, dicomObject(otherStudy, testPatient, 300), own)}, "502"},
		{"another patient after the answer started", "/studies/1.2", []string{testPatient}, answer{mpType, multipartOf(true, bigOwn, dicomObject("1.2", otherPatient, 300))}, "broken"},
		{"another study after a small part", "/studies/1.2/series/3.4", []string{testPatient}, answer{mpType, multipartOf(false, own, dicomObject(otherStudy, testPatient, 300))}, "refused"},
		{"not Part 10", "/studies/1.2", []string{testPatient}, answer{mpType, multipartOf(true, []byte(strings.Repeat("not dicom ", 20)))}, "502"},
		{"deflated", "/studies/1.2", []string{testPatient}, answer{mpType, multipartOf(true, dicomObjectTS("1.2.840.10008.1.2.1.99", "1.2", testPatient, 10))}, "502"},
		{"big endian", "/studies/1.2", []string{testPatient}, answer{"application/dicom", dicomObjectTS("1.2.840.10008.1.2.2", "1.2", testPatient, 10)}, "502"},
		{"part ends before its study UID", "/studies/1.2", []string{testPatient}, answer{mpType, multipartOf(true, own[:200])}, "502"},
		{"single object ends before its study UID", "/studies/1.2", []string{testPatient}, answer{"application/dicom", own[:200]}, "502"},
		{"study UID beyond the held-back bound", "/studies/1.2", []string{testPatient}, answer{mpType, multipartOf(true, longHeader)}, "502"},
		{"image for a study retrieve", "/studies/1.2", []string{testPatient}, answer{"image/jpeg", []byte("JFIF")}, "502"},
		{"JSON for a study retrieve", "/studies/1.2", []string{testPatient}, answer{"application/dicom+json", []byte("[]")}, "502"},
		{"JSON for frames", "/studies/1.2/series/3.4/instances/5.6/frames/1", []string{testPatient}, answer{"application/json", []byte(`{"BulkDataURI":"http://evil.example/"}`)}, "502"},
		{"multipart without boundary", "/studies/1.2", []string{testPatient}, answer{"multipart/related", multipartOf(true, own)}, "502"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, logs := observedSetup(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.up.contentType)
				w.Write(tc.up.body)
			})
			resp, err := http.Get(gatewayAs(t, s, tc.patients).URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			got, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if tc.want != "ok" && (bytes.Contains(got, []byte(otherPatient)) || bytes.Contains(got, []byte(otherStudy))) {
				t.Errorf("the other patient's object reached the client")
			}
			broken := resp.StatusCode == 200 && rerr != nil
			clean502 := resp.StatusCode == http.StatusBadGateway && rerr == nil
			switch tc.want {
			case "ok":
				if resp.StatusCode != 200 || rerr != nil || !bytes.Equal(got, tc.up.body) {
					t.Fatalf("HTTP %d, %v, %d bytes; want the PACS's %d bytes unchanged", resp.StatusCode, rerr, len(got), len(tc.up.body))
				}
				if n := len(logs.FilterMessageSnippet("PACS fault").All()); n != 0 {
					t.Errorf("%d PACS faults logged for a good answer", n)
				}
				return
			case "502":
				if !clean502 {
					t.Fatalf("HTTP %d (read error %v): %.200q; want a clean 502", resp.StatusCode, rerr, got)
				}
			case "broken":
				if !broken {
					t.Fatalf("HTTP %d (read error %v); want a broken transfer", resp.StatusCode, rerr)
				}
			case "refused":
				if !broken && !clean502 {
					t.Fatalf("HTTP %d (read error %v); want a 502 or a broken transfer", resp.StatusCode, rerr)
				}
			}
			faultLogged(t, logs)
		})
	}
}

// metaObject is one instance's DICOM JSON with the given study and
// patient ("" leaves the element out) and extra elements.
func metaObject(study, patient, extra string) string {
	var b strings.Builder
	b.WriteString(`{"00080018":{"vr":"UI","Value":["` + study + `.9.9"]}`)
	if patient != "" {
		b.WriteString(`,"00100020":{"vr":"LO","Value":["` + patient + `"]}`)
	}
	if study != "" {
		b.WriteString(`,"0020000D":{"vr":"UI","Value":["` + study + `"]}`)
	}
	if extra != "" {
		b.WriteString("," + extra)
	}
	return b.String() + "}"
}

func TestRetrieveChecksMetadata(t *testing.T) {
	own := metaObject("1.2", testPatient, "")
	cases := []struct {
		name     string
		patients []string
		body     string
		ok       bool
	}{
		{"own", []string{testPatient}, "[" + own + "," + own + "]", true},
		{"empty", []string{testPatient}, "[]", true},
		{"one object of another study", []string{testPatient}, "[" + own + "," + metaObject(otherStudy, testPatient, "") + "]", false},
		{"one object of another patient", []string{testPatient}, "[" + own + "," + metaObject("1.2", otherPatient, "") + "]", false},
		{"an object without PatientID", []string{testPatient}, "[" + metaObject("1.2", "", "") + "]", false},
		{"without PatientID, unrestricted", nil, "[" + metaObject("1.2", "", "") + "]", true},
		{"another patient, unrestricted", nil, "[" + metaObject("1.2", otherPatient, "") + "]", true},
		{"another study, unrestricted", nil, "[" + metaObject(otherStudy, otherPatient, "") + "]", false},
		{"an object without StudyInstanceUID", []string{testPatient}, `[{"00100020":{"vr":"LO","Value":["` + testPatient + `"]}}]`, false},
		{"two study UIDs", []string{testPatient}, `[` + metaObject("1.2", testPatient, "") + `]`, true},
		{"StudyInstanceUID twice", []string{testPatient}, "[" + metaObject("1.2", testPatient, `"0020000d":{"vr":"UI","Value":["`+otherStudy+`"]}`) + "]", false},
		{"PatientID twice", []string{testPatient}, "[" + metaObject("1.2", testPatient, `"00100020":{"vr":"LO","Value":["`+otherPatient+`"]}`) + "]", false},
		{"multi-valued StudyInstanceUID", []string{testPatient}, `[{"00100020":{"vr":"LO","Value":["` + testPatient + `"]},"0020000D":{"vr":"UI","Value":["1.2","` + otherStudy + `"]}}]`, false},
		{"an object, not an array", []string{testPatient}, own, false},
		{"data after the array", []string{testPatient}, "[" + own + "]" + metaObject(otherStudy, otherPatient, ""), false},
		{"an element that is no object", []string{testPatient}, "[" + metaObject("1.2", testPatient, `"00080060":"CT"`) + "]", false},
		{"a key that is no tag", []string{testPatient}, "[" + metaObject("1.2", testPatient, `"PatientID":{"vr":"LO","Value":["x"]}`) + "]", false},
		{"truncated", []string{testPatient}, "[" + own, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, logs := observedSetup(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/dicom+json")
				io.WriteString(w, tc.body)
			})
			rec := httptest.NewRecorder()
			err := s.Retrieve(rec, httptest.NewRequest(http.MethodGet, "/x", nil), imagesource.Retrieval{
				Path: mustParse(t, "studies/1.2/metadata"), PublicBase: publicBase,
				StudyUID: "1.2", PatientIDs: toKeys(tc.patients), Unrestricted: tc.patients == nil})
			if tc.ok {
				if err != nil || rec.Code != 200 || rec.Body.String() != tc.body {
					t.Fatalf("err %v, HTTP %d, body %q; want the answer unchanged", err, rec.Code, rec.Body.String())
				}
				if got := rec.Header().Get("Content-Length"); got != strconv.Itoa(len(tc.body)) {
					t.Errorf("Content-Length %q, want %d", got, len(tc.body))
				}
				return
			}
			if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusBadGateway {
				t.Fatalf("err = %v, want a 502", err)
			}
			if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
				t.Errorf("something reached the client: %v %q", rec.Header(), rec.Body.String())
			}
			faultLogged(t, logs)
		})
	}
}

func TestRetrieveMetadataTooLarge(t *testing.T) {
	defer func(n int) { maxMetadataBody = n }(maxMetadataBody)
	maxMetadataBody = 4096
	body := "[" + strings.Repeat(metaObject("1.2", testPatient, "")+",", 40) + metaObject("1.2", testPatient, "") + "]"
	s, logs := observedSetup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom+json")
		io.WriteString(w, body)
	})
	rec := httptest.NewRecorder()
	err := s.Retrieve(rec, httptest.NewRequest(http.MethodGet, "/x", nil), imagesource.Retrieval{
		Path: mustParse(t, "studies/1.2/metadata"), PublicBase: publicBase, StudyUID: "1.2", PatientIDs: []pacskey.PatientKey{testPatient}})
	if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusBadGateway || !strings.Contains(e.Message, "larger") {
		t.Fatalf("err = %v, want a 502 saying the answer is too large", err)
	}
	if rec.Body.Len() != 0 {
		t.Errorf("something reached the client: %q", rec.Body.String())
	}
	faultLogged(t, logs)
}

func TestRetrieveDropsForeignURIs(t *testing.T) {
	var pacs string
	s, _ := observedSetup(t, func(w http.ResponseWriter, r *http.Request) {
		pacs = "http://" + r.Host + "/dicom-web"
		if strings.Contains(r.URL.Path, "/frames/") {
			w.Header().Set("Content-Type", `multipart/related; type="application/octet-stream"; boundary=BB`)
			fmt.Fprintf(w, "--BB\r\nContent-Type: application/octet-stream\r\nContent-Location: %s/studies/1.2/series/3.4/instances/5.6/frames/1\r\n\r\nF1\r\n", pacs)
			fmt.Fprintf(w, "--BB\r\nContent-Type: application/octet-stream\r\nContent-Location: http://evil.example/frames/2\r\n\r\nF2\r\n")
			fmt.Fprintf(w, "--BB\r\nContent-Type: application/octet-stream\r\nContent-Location:\r\n http://evil.example/folded\r\n\r\nF3\r\n--BB--\r\n")
			return
		}
		escaped := strings.ReplaceAll(pacs, "/", `\/`)
		extra := strings.Join([]string{
			`"00081190":{"vr":"UR","Value":["` + pacs + `/studies/1.2","http://evil.example/studies/1.2",null]}`,
			`"00091001":{"vr":"OB","BulkDataURI":"http://evil.example/bulk"}`,
			`"00091002":{"BulkDataURI":"//evil.example/dicom-web/bulk","vr":"OB"}`,
			`"00091003":{"vr":"OB","BulkDataURI":"../../../tools/find"}`,
			`"00091004":{"vr":"OB","BulkDataURI":"series/3.4/instances/5.6/bulk/00091004"}`,
			`"00091005":{"vr":"OB","BulkDataURI":"` + escaped + `\/studies\/1.2\/bulk\/5"}`,
			`"00091006":{"vr":"OB","BulkDataURI":"` + pacs + `/../app/explorer.html"}`,
			`"00091007":{"Value":["http://evil.example/value-first"],"vr":"UR"}`,
			`"00091008":{"BulkDataURI":"http://evil.example/only"}`,
			`"00091009":{"vr":"SQ","Value":[{"00081190":{"vr":"UR","Value":["https://evil.example/nested"]},"7FE00010":{"vr":"OB","BulkDataURI":"http://evil.example/nested-bulk"}}]}`,
			`"7FE00010":{"vr":"OW","BulkDataURI":"` + pacs + `/studies/1.2/series/3.4/instances/5.6/bulk/7fe00010"}`,
		}, ",")
		w.Header().Set("Content-Type", "application/dicom+json")
		w.Header().Set("Content-Location", "http://evil.example/metadata")
		io.WriteString(w, "["+metaObject("1.2", testPatient, extra)+"]")
	})
	gw := gateway(t, s)
	resp, err := http.Get(gw.URL + "/studies/1.2/metadata")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("HTTP %d: %s", resp.StatusCode, body)
	}
	if bytes.Contains(body, []byte("evil")) || strings.Contains(resp.Header.Get("Content-Location"), "evil") {
		t.Errorf("a foreign URI reached the client: %s (Content-Location %q)", body, resp.Header.Get("Content-Location"))
	}
	if bytes.Contains(body, []byte("dicom-web")) {
		t.Errorf("a PACS URI reached the client: %s", body)
	}
	type element struct {
		VR          string `json:"vr"`
		Value       []any
		BulkDataURI *string
	}
	var list []map[string]element
	if err := json.Unmarshal(body, &list); err != nil || len(list) != 1 {
		t.Fatalf("the answer is not DICOM JSON (%v): %s", err, body)
	}
	ds := list[0]
	if got := ds["00081190"].Value; len(got) != 3 || got[0] != publicBase+"/studies/1.2" || got[1] != nil || got[2] != nil {
		t.Errorf("RetrieveURL values %v; want the gateway's, then null, null", got)
	}
	for tag, want := range map[string]string{
		"00091001": "", "00091002": "", "00091003": "", "00091006": "", "00091008": "",
		"00091004": publicBase + "/studies/1.2/series/3.4/instances/5.6/bulk/00091004",
		"00091005": publicBase + "/studies/1.2/bulk/5",
		"7FE00010": publicBase + "/studies/1.2/series/3.4/instances/5.6/bulk/7fe00010",
	} {
		e, ok := ds[tag]
		switch {
		case !ok:
			t.Errorf("%s: the element is gone", tag)
		case want == "" && e.BulkDataURI != nil:
			t.Errorf("%s: BulkDataURI %q kept", tag, *e.BulkDataURI)
		case want != "" && (e.BulkDataURI == nil || *e.BulkDataURI != want):
			t.Errorf("%s: BulkDataURI %v, want %q", tag, e.BulkDataURI, want)
		}
	}
	if v := ds["00091007"].Value; len(v) != 1 || v[0] != nil {
		t.Errorf("a UR Value before its vr: %v", v)
	}
	nested, _ := ds["00091009"].Value[0].(map[string]any)
	if fmt.Sprint(nested) != "map[00081190:map[Value:[<nil>] vr:UR] 7FE00010:map[vr:OB]]" {
		t.Errorf("URIs in a sequence item: %v", nested)
	}

	// Frame part headers.
	resp, err = http.Get(gw.URL + "/studies/1.2/series/3.4/instances/5.6/frames/1,2,3")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	mr := multipart.NewReader(resp.Body, params["boundary"])
	var locs []string
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, p.Header.Get("Content-Location"))
	}
	want := []string{publicBase + "/studies/1.2/series/3.4/instances/5.6/frames/1", "", ""}
	if fmt.Sprint(locs) != fmt.Sprint(want) {
		t.Errorf("part Content-Locations %q, want %q", locs, want)
	}
}

func TestRetrieveRefusesRedirects(t *testing.T) {
	for _, code := range []int{301, 302, 303, 307, 308} {
		s, logs := observedSetup(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "http://evil.example/dicom-web/studies/"+otherStudy)
			w.WriteHeader(code)
		})
		rec := httptest.NewRecorder()
		err := s.Retrieve(rec, httptest.NewRequest(http.MethodGet, "/x", nil), imagesource.Retrieval{
			Path: mustParse(t, "studies/1.2"), PublicBase: publicBase, StudyUID: "1.2", PatientIDs: []pacskey.PatientKey{testPatient}})
		if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusBadGateway || !strings.Contains(e.Message, "redirect") {
			t.Errorf("HTTP %d from the PACS: err = %v, want a 502 naming the redirect", code, err)
		}
		if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
			t.Errorf("HTTP %d from the PACS: something reached the client: %v", code, rec.Header())
		}
		faultLogged(t, logs)
	}
}

// A metadata answer whose URIs are all the PACS's keeps every other byte.
func TestCheckMetadataChangesOnlyURIs(t *testing.T) {
	src, err := New(Config{BaseURL: "http://pacs:8042/dicom-web"}, &rpProxy{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pw := &proxyWriter{src: src, repl: "https://gw/w/T/"}
	body := " [ {\"0020000D\" : {\"vr\":\"UI\",\"Value\":[\"1.2\"]},\n\"00100020\":{\"vr\":\"LO\",\"Value\":[\"P\"]}," +
		"\"00080005\":{\"vr\":\"CS\",\"Value\":[\"ISO_IR 192\"]},\"00281050\":{\"vr\":\"DS\",\"Value\":[40,-1.5e3]}," +
		"\"7FE00010\":{\"vr\":\"OW\",\"BulkDataURI\":\"http://pacs:8042/dicom-web/studies/1.2/bulk\"}} ] \n"
	req := &imagesource.Retrieval{StudyUID: "1.2", PatientIDs: []pacskey.PatientKey{"P"}}
	out, err := checkMetadata([]byte(body), req, pw.publicURL)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(body, "http://pacs:8042/dicom-web/", "https://gw/w/T/", 1); string(out) != want {
		t.Errorf("got  %q\nwant %q", out, want)
	}
}

// FuzzCheckMetadata: checkMetadata never panics; what it accepts is valid
// JSON in which every object is the study's and the patient's, and every
// URI (BulkDataURI, UR value) is on the gateway.
func FuzzCheckMetadata(f *testing.F) {
	f.Add([]byte("[" + metaObject("1.2", "P", `"7FE00010":{"vr":"OW","BulkDataURI":"http://pacs:8042/dicom-web/studies/1.2/bulk"}`) + "]"))
	f.Add([]byte("[" + metaObject("1.2", "P", `"00081190":{"Value":["http://evil/x","rel/a"],"vr":"UR"},"00091001":{"vr":"SQ","Value":[{"00091002":{"BulkDataURI":"x","vr":"OB"}}]}`) + "]"))
	f.Add([]byte(`[{"0020000D":{"vr":"UI","Value":["1.2"]},"00100020":{"vr":"LO","Value":["P"]},"x":1}]`))
	f.Add([]byte(`[]`))
	src, err := New(Config{BaseURL: "http://pacs:8042/dicom-web"}, &rpProxy{}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	const repl = "https://gw/w/T/"
	reqURL, _ := url.Parse("http://pacs:8042/dicom-web/studies/1.2/metadata")
	pw := &proxyWriter{src: src, repl: repl, reqURL: reqURL}
	req := &imagesource.Retrieval{StudyUID: "1.2", PatientIDs: []pacskey.PatientKey{"P"}}
	f.Fuzz(func(t *testing.T, body []byte) {
		out, err := checkMetadata(body, req, pw.publicURL)
		if err != nil {
			return
		}
		if len(bytes.TrimSpace(out)) == 0 {
			return
		}
		if !json.Valid(body) || !json.Valid(out) {
			t.Fatalf("accepted invalid JSON: %q -> %q", body, out)
		}
		var list []map[string]json.RawMessage
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatalf("accepted a non-array: %q", out)
		}
		for _, obj := range list {
			ds, err := dicomjson.Decode(mustMarshal(t, obj))
			if err != nil {
				continue // dicomjson is stricter on VRs and values
			}
			if err := req.CheckObject(ds.Strings(dicomjson.TagStudyInstanceUID), ds.Strings(dicomjson.TagPatientID)); err != nil {
				t.Fatalf("accepted %q: %v", body, err)
			}
			var walk func(dicomjson.Dataset)
			walk = func(ds dicomjson.Dataset) {
				for tag, e := range ds {
					if e.BulkDataURI != "" && !strings.HasPrefix(e.BulkDataURI, repl) {
						t.Fatalf("%s: BulkDataURI %q passed: %q", tag, e.BulkDataURI, out)
					}
					for _, v := range e.Value {
						switch x := v.(type) {
						case string:
							if e.VR == "UR" && !strings.HasPrefix(x, repl) {
								t.Fatalf("%s: UR %q passed: %q", tag, x, out)
							}
						case dicomjson.Dataset:
							walk(x)
						}
					}
				}
			}
			walk(ds)
		}
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// toKeys converts test values to PACS keys (no parsing: tests also feed
// values a parser would refuse, to see the sources refuse them).
func toKeys(ss []string) []pacskey.PatientKey {
	if ss == nil {
		return nil
	}
	out := make([]pacskey.PatientKey, len(ss))
	for i, s := range ss {
		out[i] = pacskey.PatientKey(s)
	}
	return out
}
