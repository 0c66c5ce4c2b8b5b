package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

// dwPatient is the FHIR id the mock authorizer binds to the PACS key
// dicomgen.DemoPatientMRN.
const dwPatient = "p-alice"

// dicomwebConfig fronts a real Orthanc (routes /pacs and /open), the same
// Orthanc with a wrong password (/badcreds), a PACS that breaks its answers
// (/broken) and a PACS that is not there (/down).
func dicomwebConfig(pacs *orthanc.Server, brokenURL string, downPort int) string {
	key := base64.StdEncoding.EncodeToString(testKey)
	return fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	handle_path /pacs/* {
		smart_imaging {
			authz mock {
				patient %[5]s mrn %[6]s
			}
			images dicomweb %[1]s {
				lookup studies-by-mrn
				basic_auth %[2]s %[3]s
				qido_timeout 1s
				transport http {
					response_header_timeout 1s
				}
			}
			study_token_key %[4]s
		}
	}
	handle_path /open/* {
		smart_imaging {
			authz mock {
				disable_authz_checks
			}
			images dicomweb %[1]s {
				lookup all-studies
				basic_auth %[2]s %[3]s
			}
			study_token_key %[4]s
		}
	}
	handle_path /badcreds/* {
		smart_imaging {
			authz mock {
				patient %[5]s mrn %[6]s
			}
			images dicomweb %[1]s {
				basic_auth %[2]s wrong-%[3]s
			}
			study_token_key %[4]s
		}
	}
	handle_path /broken/* {
		smart_imaging {
			authz mock {
				disable_authz_checks
			}
			images dicomweb %[7]s {
				lookup all-studies
			}
			study_token_key %[4]s
		}
	}
	handle_path /down/* {
		smart_imaging {
			authz mock {
				patient %[5]s mrn %[6]s
			}
			images dicomweb http://127.0.0.1:%[8]d/dicom-web
			study_token_key %[4]s
		}
	}
}
`, pacs.DICOMwebURL(), pacs.Username(), pacs.Password(), key, dwPatient, dicomgen.DemoPatientMRN, brokenURL, downPort)
}

// mintToken makes a study token for route the way the gateway would.
func mintToken(t *testing.T, study, route string) string {
	t.Helper()
	kr, err := studytoken.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := kr.Mint(studytoken.Claims{StudyUID: study, Patient: dwPatient, Route: route, Expiry: now.Add(time.Hour), IssuedAt: now,
		Binding: mockGrantBinding(kr, dwPatient)})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// mockGrantBinding is the binding of a study token minted on an authz
// mock route for patient: mock checks no token, so its routes bind study
// tokens to its fixed grant.
func mockGrantBinding(kr *studytoken.Keyring, patient string) string {
	return kr.Bind(studytoken.BindingOf(studytoken.BindGrant, "", &authz.Principal{ClientID: "mock", Patient: patient}))
}

// outcome checks an OperationOutcome answer and returns its diagnostics.
func outcome(t *testing.T, tc *caddytest.Tester, url string, status int) string {
	t.Helper()
	resp, body := fhirFetch(t, tc, url, "application/dicom+json, application/fhir+json", status)
	var oo struct {
		ResourceType string
		Issue        []struct{ Diagnostics string }
	}
	if json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("GET %s: %s is not an OperationOutcome", url, body)
	}
	if status == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
		t.Errorf("GET %s: 503 without Retry-After", url)
	}
	return oo.Issue[0].Diagnostics
}

func TestDICOMwebGatewayAgainstOrthanc(t *testing.T) {
	orthanc.SkipUnlessAvailable(t)
	ctx := context.Background()
	pacs, err := orthanc.Start(ctx, orthanc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pacs.Stop() })
	dir := t.TempDir()
	m, err := dicomgen.WriteDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pacs.Upload(ctx, dir); err != nil {
		t.Fatal(err)
	}
	broken := startBrokenPACS(t)
	down := dwClosedPort(t)

	tc := caddytest.NewTester(t)
	tc.InitServer(dicomwebConfig(pacs, broken.URL+"/dicom-web", down), "caddyfile")
	pacsHost := "127.0.0.1:" + strconv.Itoa(pacs.Port())

	// Search: exactly the patient's studies, although Orthanc itself would
	// also match the case decoy.
	res := search(t, tc, base+"/pacs/fhir/ImagingStudy?patient="+dwPatient)
	want := m.ForPatient(dicomgen.DemoPatientMRN).StudyUIDs()
	if got := keys(res.studies); strings.Join(got, " ") != strings.Join(sortedCopy(want), " ") {
		t.Fatalf("search = %v, want exactly %v", got, sortedCopy(want))
	}
	for uid, st := range res.studies {
		if n, _ := st["numberOfSeries"].(float64); n == 0 {
			t.Errorf("study %s: numberOfSeries missing", uid)
		}
		if s, _ := st["series"].([]any); len(s) == 0 {
			t.Errorf("study %s: no series (series QIDO missing?)", uid)
		}
	}

	for _, uid := range keys(res.studies) {
		addr := res.endpoints[uid]
		var insts dicomgen.Manifest
		for _, in := range m {
			if in.StudyUID == uid {
				insts = append(insts, in)
			}
		}
		in := insts[0]
		t.Run("retrieve "+uid, func(t *testing.T) {
			parts := retrieveMultipart(t, tc, addr+"/studies/"+uid, `multipart/related; type="application/dicom"`, "application/dicom")
			if len(parts) != len(insts) {
				t.Errorf("study: %d parts, want %d", len(parts), len(insts))
			}
			seriesURL := addr + "/studies/" + uid + "/series/" + in.SeriesUID
			parts = retrieveMultipart(t, tc, seriesURL, `multipart/related; type="application/dicom"`, "application/dicom")
			if len(parts) != in.SeriesInstances {
				t.Errorf("series: %d parts, want %d", len(parts), in.SeriesInstances)
			}
			instURL := seriesURL + "/instances/" + in.SOPInstanceUID
			parts = retrieveMultipart(t, tc, instURL, `multipart/related; type="application/dicom"`, "application/dicom")
			file, _ := os.ReadFile(filepath.Join(dir, filepath.FromSlash(in.File)))
			if len(parts) != 1 || string(parts[0]) != string(file) {
				t.Errorf("instance: %d parts, bytes equal to the file: %v", len(parts), len(parts) == 1 && string(parts[0]) == string(file))
			}
			for _, level := range []string{addr + "/studies/" + uid, seriesURL, instURL} {
				body := get(t, tc, level+"/metadata", "application/dicom+json", http.StatusOK, "application/dicom+json")
				if strings.Contains(string(body), pacsHost) || strings.Contains(string(body), "/dicom-web/") {
					t.Fatalf("metadata at %s names the PACS", level)
				}
				list, err := dicomjson.DecodeList(body)
				if err != nil || len(list) == 0 {
					t.Fatalf("metadata at %s: %v", level, err)
				}
				rewritten := 0
				for _, ds := range list {
					if px := ds.Get(dicomjson.TagPixelData); px != nil && px.BulkDataURI != "" {
						if !strings.HasPrefix(px.BulkDataURI, addr+"/studies/"+uid+"/") {
							t.Errorf("BulkDataURI %s is not on the gateway", px.BulkDataURI)
						}
						rewritten++
					}
				}
				if rewritten == 0 {
					t.Errorf("metadata at %s has no BulkDataURI to follow", level)
				}
				// The rewritten BulkDataURI works through the gateway.
				if level == instURL {
					bulk := list[0].Get(dicomjson.TagPixelData).BulkDataURI
					parts := retrieveMultipart(t, tc, bulk, `multipart/related; type="application/octet-stream"`, "application/octet-stream")
					if len(parts) != 1 || len(parts[0]) != in.Rows*in.Cols*2*in.Frames {
						t.Errorf("bulk data via %s: %d parts", bulk, len(parts))
					}
				}
			}
			frames := retrieveMultipart(t, tc, instURL+"/frames/1", `multipart/related; type="application/octet-stream"`, "application/octet-stream")
			if len(frames) != 1 || len(frames[0]) != in.Rows*in.Cols*2 {
				t.Errorf("frames/1: %d parts", len(frames))
			}
			png := get(t, tc, instURL+"/rendered?viewport=32,32", "image/png", http.StatusOK, "image/png")
			img, _, err := image.Decode(strings.NewReader(string(png)))
			if err != nil || img.Bounds().Dx() != 32 {
				t.Errorf("rendered: %v, %v", err, img)
			}
			// Orthanc's plugin 1.7 has no thumbnail resource: the gateway
			// asks for a small rendering instead.
			thumb := get(t, tc, instURL+"/thumbnail", "image/jpeg", http.StatusOK, "image/jpeg")
			if img, _, err := image.Decode(strings.NewReader(string(thumb))); err != nil || img.Bounds().Dx() == 0 || img.Bounds().Dx() > 128 {
				t.Errorf("thumbnail: %v, %v", err, img)
			}
		})
	}

	t.Run("multi-frame through the open route", func(t *testing.T) {
		var cine dicomgen.Instance
		for _, in := range m {
			if in.Frames > 2 {
				cine = in
			}
		}
		open := search(t, tc, base+"/open/fhir/ImagingStudy")
		if len(open.studies) != len(m.StudyUIDs()) {
			t.Errorf("open search: %d studies, want %d", len(open.studies), len(m.StudyUIDs()))
		}
		addr := open.endpoints[cine.StudyUID]
		instURL := addr + "/studies/" + cine.StudyUID + "/series/" + cine.SeriesUID + "/instances/" + cine.SOPInstanceUID
		req, _ := http.NewRequest(http.MethodGet, instURL+"/frames/2,"+strconv.Itoa(cine.Frames), nil)
		req.Header.Set("Accept", `multipart/related; type="application/octet-stream"`)
		resp, err := tc.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		mr := multipart.NewReader(resp.Body, params["boundary"])
		n := 0
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
			if loc := p.Header.Get("Content-Location"); loc != "" && !strings.HasPrefix(loc, instURL+"/frames/") {
				t.Errorf("frame Content-Location %q is not on the gateway", loc)
			}
		}
		if n != 2 {
			t.Errorf("%d frames, want 2", n)
		}
	})

	t.Run("unknown frame is the client's error", func(t *testing.T) {
		uid := keys(res.studies)[0]
		in := m.ForPatient(dicomgen.DemoPatientMRN)[0]
		for _, x := range m {
			if x.StudyUID == uid {
				in = x
			}
		}
		url := fmt.Sprintf("%s/studies/%s/series/%s/instances/%s/frames/%d", res.endpoints[uid], uid, in.SeriesUID, in.SOPInstanceUID, in.Frames+1)
		body := get(t, tc, url, `multipart/related; type="application/octet-stream"`, http.StatusBadRequest, "application/fhir+json")
		if strings.Contains(string(body), pacsHost) {
			t.Errorf("error names the PACS: %s", body)
		}
	})

	t.Run("wrong PACS credentials", func(t *testing.T) {
		msg := outcome(t, tc, base+"/badcreds/fhir/ImagingStudy?patient="+dwPatient, http.StatusBadGateway)
		if !strings.Contains(msg, "credentials") || strings.Contains(msg, pacs.Password()) {
			t.Errorf("search: diagnostics %q; want the cause named, not the password", msg)
		}
		uid := keys(res.studies)[0]
		tok := mintToken(t, uid, "/badcreds")
		msg = outcome(t, tc, base+"/badcreds/wado/"+tok+"/studies/"+uid+"/metadata", http.StatusBadGateway)
		if !strings.Contains(msg, "credentials") || strings.Contains(msg, pacs.Password()) {
			t.Errorf("retrieve: diagnostics %q; want the cause named, not the password", msg)
		}
	})

	t.Run("PACS breaks off mid-stream", func(t *testing.T) {
		open := search(t, tc, base+"/broken/fhir/ImagingStudy")
		for _, uid := range []string{brokenMultipartStudy, brokenLengthStudy} {
			addr, ok := open.endpoints[uid]
			if !ok {
				t.Fatalf("broken PACS study %s not found: %v", uid, keys(open.studies))
			}
			req, _ := http.NewRequest(http.MethodGet, addr+"/studies/"+uid, nil)
			req.Header.Set("Accept", `multipart/related; type="application/dicom"`)
			resp, err := tc.Client.Do(req)
			if err != nil {
				continue // broken before the headers: also not a well-formed answer
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case err != nil:
				// A broken transfer: the answer had started.
			case resp.StatusCode == http.StatusBadGateway && strings.Contains(string(body), `"OperationOutcome"`):
				// Broken before any byte went out: a clean 502.
			default:
				t.Errorf("study %s: the client read a well-formed answer (status %d, %d bytes); want a broken transfer or a 502 OperationOutcome", uid, resp.StatusCode, len(body))
			}
		}
		// Control: the complete answer of the same PACS reads fine.
		addr := open.endpoints[brokenCompleteStudy]
		parts := retrieveMultipart(t, tc, addr+"/studies/"+brokenCompleteStudy, `multipart/related; type="application/dicom"`, "application/dicom")
		if len(parts) != 1 {
			t.Errorf("complete answer: %d parts", len(parts))
		}
	})

	t.Run("PACS slow", func(t *testing.T) {
		uid := keys(res.studies)[0]
		addr := res.endpoints[uid]
		if err := pacs.Suspend(); err != nil {
			t.Fatal(err)
		}
		defer pacs.Resume()
		msg := outcome(t, tc, base+"/pacs/fhir/ImagingStudy?patient="+dwPatient, http.StatusGatewayTimeout)
		if !strings.Contains(msg, "did not answer") {
			t.Errorf("search diagnostics %q", msg)
		}
		outcome(t, tc, addr+"/studies/"+uid+"/metadata", http.StatusGatewayTimeout)
		if err := pacs.Resume(); err != nil {
			t.Fatal(err)
		}
		search(t, tc, base+"/pacs/fhir/ImagingStudy?patient="+dwPatient)
	})

	t.Run("PACS down", func(t *testing.T) {
		msg := outcome(t, tc, base+"/down/fhir/ImagingStudy?patient="+dwPatient, http.StatusBadGateway)
		if !strings.Contains(msg, "could not be reached") {
			t.Errorf("search diagnostics %q", msg)
		}
		uid := keys(res.studies)[0]
		addr := res.endpoints[uid]
		if err := pacs.Kill(); err != nil {
			t.Fatal(err)
		}
		outcome(t, tc, base+"/pacs/fhir/ImagingStudy?patient="+dwPatient, http.StatusBadGateway)
		msg = outcome(t, tc, addr+"/studies/"+uid+"/metadata", http.StatusBadGateway)
		if !strings.Contains(msg, "could not be reached") || strings.Contains(msg, pacsHost) {
			t.Errorf("retrieve diagnostics %q", msg)
		}
	})
}

func sortedCopy(s []string) []string {
	m := map[string]bool{}
	for _, v := range s {
		m[v] = true
	}
	return keys(m)
}

func dwClosedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// Studies of the broken PACS.
const (
	brokenCompleteStudy  = "1.2.826.0.1.3680043.99.1"
	brokenMultipartStudy = "1.2.826.0.1.3680043.99.2"
	brokenLengthStudy    = "1.2.826.0.1.3680043.99.3"
)

// startBrokenPACS is a DICOMweb server whose QIDO works and whose WADO-RS
// answers break off: a multipart body framed by the connection close that
// stops before its close delimiter (what a dying Orthanc sends), and a body
// shorter than its Content-Length.
func startBrokenPACS(t *testing.T) *httptest.Server {
	t.Helper()
	studyJSON := func(uid string) dicomjson.Dataset {
		ds := dicomjson.Dataset{}
		ds.SetString(dicomjson.TagStudyInstanceUID, "UI", uid)
		ds.SetString(dicomjson.TagPatientID, "LO", "BROKEN-1")
		ds.SetString(dicomjson.TagModalitiesInStudy, "CS", "OT")
		ds.SetInt(dicomjson.TagNumberOfStudyRelatedSeries, "IS", 1)
		ds.SetInt(dicomjson.TagNumberOfStudyRelatedInst, "IS", 1)
		return ds
	}
	raw := func(w http.ResponseWriter, head, body string) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		buf.WriteString(head + "\r\n" + body)
		buf.Flush()
	}
	part := func(study string) string {
		return "--BB\r\nContent-Type: application/dicom\r\n\r\n" + string(dicomHead(study, "BROKEN-1", 16)) + strings.Repeat("\x5a", 16) + "\r\n"
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, "/dicom-web/")
		w.Header().Set("Content-Type", "application/dicom+json")
		switch {
		case p == "studies":
			json.NewEncoder(w).Encode([]dicomjson.Dataset{studyJSON(brokenCompleteStudy), studyJSON(brokenMultipartStudy), studyJSON(brokenLengthStudy)})
		case strings.HasSuffix(p, "/series"):
			uid := strings.TrimSuffix(strings.TrimPrefix(p, "studies/"), "/series")
			se := dicomjson.Dataset{}
			se.SetString(dicomjson.TagStudyInstanceUID, "UI", uid)
			se.SetString(dicomjson.TagSeriesInstanceUID, "UI", uid+".1")
			se.SetString(dicomjson.TagModality, "CS", "OT")
			json.NewEncoder(w).Encode([]dicomjson.Dataset{se})
		case p == "studies/"+brokenCompleteStudy:
			raw(w, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=BB\r\n", part(brokenCompleteStudy)+"--BB--\r\n")
		case p == "studies/"+brokenMultipartStudy:
			raw(w, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=BB\r\n", part(brokenMultipartStudy)+part(brokenMultipartStudy)[:20])
		case p == "studies/"+brokenLengthStudy:
			raw(w, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=BB\r\n", part(brokenLengthStudy))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}
