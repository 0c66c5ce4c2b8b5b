package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
)

// The demo's fixed patient.
const (
	demoPatient = "87a339d0-8cae-418e-89c7-8651e6aab3c6"
	demoMRN     = "293ee354-f8ad-4345-b10c-759fdfdcc082"
)

// testKey is the study token key of the test routes (32 bytes of 0x07).
var testKey = make32(7)

func make32(b byte) []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = b
	}
	return k
}

// demoConfig is the demo Caddyfile's two routes on the test ports, with a
// known study token key so the tests can craft tokens.
func demoConfig() string {
	studies, _ := filepath.Abs("../examples/demo/studies")
	key := base64.StdEncoding.EncodeToString(testKey)
	return fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	handle_path /open/* {
		smart_imaging {
			authz mock {
				disable_authz_checks
			}
			images folder %[1]s {
				lookup all-studies
			}
			study_token_key %[2]s
		}
	}
	handle_path /hardcoded-patient/* {
		smart_imaging {
			authz mock {
				patient %[3]s mrn %[4]s
			}
			images folder %[1]s {
				lookup studies-by-mrn
			}
			study_token_key %[2]s
		}
	}
}
`, studies, key, demoPatient, demoMRN)
}

const base = "http://localhost:9080"

// corpus is what the demo folder holds, read independently of the gateway
// with the DICOM library.
type corpus struct {
	byStudy   map[string][]instanceInfo
	byPatient map[string]map[string]bool // PatientID → study UIDs
}

type instanceInfo struct {
	patientID, study, series, sop, file string
	frames                              int
}

func readCorpus(t *testing.T) corpus {
	t.Helper()
	c := corpus{byStudy: map[string][]instanceInfo{}, byPatient: map[string]map[string]bool{}}
	err := filepath.WalkDir("../examples/demo/studies", func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".dcm") {
			return err
		}
		ds, err := dicom.ParseFile(p, nil, dicom.SkipPixelData())
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		get := func(tg tag.Tag) string {
			e, err := ds.FindElementByTag(tg)
			if err != nil {
				return ""
			}
			if v, ok := e.Value.GetValue().([]string); ok && len(v) > 0 {
				return strings.TrimSpace(v[0])
			}
			return ""
		}
		in := instanceInfo{patientID: get(tag.PatientID), study: get(tag.StudyInstanceUID),
			series: get(tag.SeriesInstanceUID), sop: get(tag.SOPInstanceUID), file: p, frames: 1}
		if nf := get(tag.NumberOfFrames); nf != "" {
			fmt.Sscan(nf, &in.frames)
		}
		c.byStudy[in.study] = append(c.byStudy[in.study], in)
		if c.byPatient[in.patientID] == nil {
			c.byPatient[in.patientID] = map[string]bool{}
		}
		c.byPatient[in.patientID][in.study] = true
		return nil
	})
	if err != nil {
		t.Fatalf("reading the demo corpus: %v", err)
	}
	if len(c.byStudy) < 5 {
		t.Fatalf("demo corpus has %d studies, want at least 5", len(c.byStudy))
	}
	return c
}

// searchResult is the part of a searchset Bundle the tests look at.
type searchResult struct {
	studies   map[string]map[string]any // study UID → ImagingStudy
	endpoints map[string]string         // study UID → Endpoint address
	bundle    map[string]any
}

// fhirFetch GETs url with Accept and fails the test unless the status is
// wantStatus; it returns the response (body closed) and the body.
func fhirFetch(t *testing.T, tc *caddytest.Tester, url, accept string, wantStatus int) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", accept)
	resp, err := tc.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: status %d, want %d; body: %.300s", url, resp.StatusCode, wantStatus, body)
	}
	return resp, body
}

func getJSON(t *testing.T, tc *caddytest.Tester, url string, wantStatus int) (map[string]any, *http.Response) {
	t.Helper()
	resp, body := fhirFetch(t, tc, url, "application/fhir+json", wantStatus)
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("GET %s: body is not JSON: %v: %s", url, err, body)
	}
	return out, resp
}

func search(t *testing.T, tc *caddytest.Tester, url string) searchResult {
	t.Helper()
	b, resp := getJSON(t, tc, url, http.StatusOK)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("search Content-Type = %q, want application/fhir+json", ct)
	}
	if b["resourceType"] != "Bundle" || b["type"] != "searchset" {
		t.Fatalf("search answer is not a searchset Bundle: %v", b)
	}
	res := searchResult{studies: map[string]map[string]any{}, endpoints: map[string]string{}, bundle: b}
	entries, _ := b["entry"].([]any)
	byFullURL := map[string]map[string]any{}
	for _, e := range entries {
		em := e.(map[string]any)
		byFullURL[em["fullUrl"].(string)] = em["resource"].(map[string]any)
	}
	for _, e := range entries {
		r := e.(map[string]any)["resource"].(map[string]any)
		if r["resourceType"] != "ImagingStudy" {
			continue
		}
		ids := r["identifier"].([]any)
		id0 := ids[0].(map[string]any)
		if id0["system"] != "urn:dicom:uid" || !strings.HasPrefix(id0["value"].(string), "urn:oid:") {
			t.Errorf("study identifier = %v, want urn:dicom:uid / urn:oid:…", id0)
		}
		uid := strings.TrimPrefix(id0["value"].(string), "urn:oid:")
		res.studies[uid] = r
		eps, _ := r["endpoint"].([]any)
		if len(eps) == 0 {
			t.Fatalf("study %s has no endpoint", uid)
		}
		ref := eps[0].(map[string]any)["reference"].(string)
		ep, ok := byFullURL[ref]
		if !ok {
			t.Fatalf("study %s references endpoint %s that is not in the Bundle", uid, ref)
		}
		if ep["resourceType"] != "Endpoint" || ep["status"] != "active" {
			t.Errorf("endpoint %s: %v", ref, ep)
		}
		ct := ep["connectionType"].(map[string]any)
		if ct["code"] != "dicom-wado-rs" {
			t.Errorf("endpoint connectionType = %v", ct)
		}
		res.endpoints[uid] = ep["address"].(string)
	}
	return res
}

func keys[M ~map[string]V, V any](m M) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestDemoSearchAndRetrieve(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")
	c := readCorpus(t)

	t.Run("metadata", func(t *testing.T) {
		cs, _ := getJSON(t, tc, base+"/open/fhir/metadata", http.StatusOK)
		if cs["resourceType"] != "CapabilityStatement" {
			t.Fatalf("metadata is %v", cs["resourceType"])
		}
	})

	t.Run("open route lists every study", func(t *testing.T) {
		res := search(t, tc, base+"/open/fhir/ImagingStudy")
		if got, want := keys(res.studies), keys(c.byStudy); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("open search studies = %v, want %v", got, want)
		}
		for uid, addr := range res.endpoints {
			if !strings.HasPrefix(addr, base+"/open/wado/") {
				t.Errorf("study %s endpoint address %s is not under %s/open/wado/", uid, addr, base)
			}
		}
	})

	for _, form := range []string{demoPatient, "Patient/" + demoPatient} {
		t.Run("hardcoded patient search as "+form, func(t *testing.T) {
			res := search(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient="+form)
			want := keys(c.byPatient[demoMRN])
			if len(want) == 0 {
				t.Fatal("the demo corpus has no study for the demo MRN")
			}
			if got := keys(res.studies); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Fatalf("studies = %v, want exactly the patient's %v", got, want)
			}
			for _, st := range res.studies {
				subj := st["subject"].(map[string]any)["reference"]
				if subj != "Patient/"+demoPatient {
					t.Errorf("subject = %v", subj)
				}
			}
		})
	}

	for name, url := range map[string]string{
		"another patient":  "/hardcoded-patient/fhir/ImagingStudy?patient=someone-else",
		"no patient":       "/hardcoded-patient/fhir/ImagingStudy",
		"subject mismatch": "/hardcoded-patient/fhir/ImagingStudy?patient=" + demoPatient + "&subject=Patient/x",
		"other type":       "/hardcoded-patient/fhir/ImagingStudy?patient=Group/" + demoPatient,
	} {
		t.Run("refused: "+name, func(t *testing.T) {
			oo, _ := getJSON(t, tc, base+url, http.StatusForbidden)
			if oo["resourceType"] != "OperationOutcome" {
				t.Fatalf("refusal body is %v, want OperationOutcome", oo)
			}
		})
	}

	// Follow the Endpoints of the patient's studies.
	res := search(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient)
	for _, uid := range keys(res.studies) {
		addr := res.endpoints[uid]
		insts := c.byStudy[uid]
		t.Run("retrieve study "+uid, func(t *testing.T) {
			parts := retrieveMultipart(t, tc, addr+"/studies/"+uid, `multipart/related; type="application/dicom"; transfer-syntax=*`, "application/dicom")
			if len(parts) != len(insts) {
				t.Fatalf("study retrieve gave %d parts, want %d instances", len(parts), len(insts))
			}
			for i, p := range parts {
				ds, err := dicom.Parse(strings.NewReader(string(p)), int64(len(p)), nil, dicom.SkipPixelData())
				if err != nil {
					t.Fatalf("part %d is not DICOM: %v", i, err)
				}
				e, err := ds.FindElementByTag(tag.StudyInstanceUID)
				if err != nil || strings.TrimSpace(e.Value.GetValue().([]string)[0]) != uid {
					t.Fatalf("part %d belongs to another study", i)
				}
			}
		})
		in := insts[0]
		t.Run("series, instance, metadata, frames, rendered of "+uid, func(t *testing.T) {
			seriesCount := 0
			for _, x := range insts {
				if x.series == in.series {
					seriesCount++
				}
			}
			parts := retrieveMultipart(t, tc, addr+"/studies/"+uid+"/series/"+in.series, `multipart/related; type="application/dicom"`, "application/dicom")
			if len(parts) != seriesCount {
				t.Errorf("series retrieve gave %d parts, want %d", len(parts), seriesCount)
			}
			instURL := addr + "/studies/" + uid + "/series/" + in.series + "/instances/" + in.sop
			parts = retrieveMultipart(t, tc, instURL, `multipart/related; type="application/dicom"`, "application/dicom")
			if len(parts) != 1 {
				t.Errorf("instance retrieve gave %d parts", len(parts))
			}
			want, _ := os.ReadFile(in.file)
			if len(parts) == 1 && string(parts[0]) != string(want) {
				t.Errorf("instance retrieve bytes differ from the file")
			}

			for _, level := range []string{addr + "/studies/" + uid, addr + "/studies/" + uid + "/series/" + in.series, instURL} {
				body := get(t, tc, level+"/metadata", "application/dicom+json", http.StatusOK, "application/dicom+json")
				list, err := dicomjson.DecodeList(body)
				if err != nil || len(list) == 0 {
					t.Fatalf("metadata at %s: %v (%d datasets)", level, err, len(list))
				}
				for _, ds := range list {
					if ds.String(dicomjson.TagStudyInstanceUID) != uid {
						t.Fatalf("metadata holds another study")
					}
					if px := ds.Get(dicomjson.TagPixelData); px != nil && px.BulkDataURI != "" && !strings.HasPrefix(px.BulkDataURI, addr+"/") {
						t.Errorf("BulkDataURI %s does not point at the gateway address", px.BulkDataURI)
					}
				}
			}

			frames := retrieveMultipart(t, tc, instURL+"/frames/1", `multipart/related; type="application/octet-stream"`, "application/octet-stream")
			if len(frames) != 1 || len(frames[0]) == 0 {
				t.Errorf("frames/1 gave %d parts", len(frames))
			}

			for _, accept := range []string{"image/png", "image/jpeg"} {
				body := get(t, tc, instURL+"/rendered", accept, http.StatusOK, accept)
				img, format, err := image.Decode(strings.NewReader(string(body)))
				if err != nil {
					t.Fatalf("rendered %s does not decode: %v", accept, err)
				}
				if !strings.HasSuffix(accept, format) || img.Bounds().Dx() == 0 {
					t.Errorf("rendered %s decoded as %s %v", accept, format, img.Bounds())
				}
			}
			body := get(t, tc, addr+"/studies/"+uid+"/series/"+in.series+"/rendered", "image/png", http.StatusOK, "image/png")
			if _, _, err := image.Decode(strings.NewReader(string(body))); err != nil {
				t.Errorf("series rendered does not decode: %v", err)
			}
		})
	}

	t.Run("multi-frame instance pages through frames", func(t *testing.T) {
		var mf *instanceInfo
		for _, insts := range c.byStudy {
			for i := range insts {
				if insts[i].frames > 1 {
					mf = &insts[i]
				}
			}
		}
		if mf == nil {
			t.Fatal("the demo corpus has no multi-frame instance")
		}
		open := search(t, tc, base+"/open/fhir/ImagingStudy")
		instURL := open.endpoints[mf.study] + "/studies/" + mf.study + "/series/" + mf.series + "/instances/" + mf.sop
		parts := retrieveMultipart(t, tc, fmt.Sprintf("%s/frames/1,%d", instURL, mf.frames), `multipart/related; type="application/octet-stream"`, "application/octet-stream")
		if len(parts) != 2 || len(parts[0]) != len(parts[1]) || string(parts[0]) == string(parts[1]) {
			t.Errorf("frames 1 and %d: %d parts; want two different frames of equal size", mf.frames, len(parts))
		}
		get(t, tc, fmt.Sprintf("%s/frames/%d", instURL, mf.frames+1), `multipart/related; type="application/octet-stream"`, 0, "")
	})
}

func TestDemoRefusals(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")
	c := readCorpus(t)
	res := search(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient)
	uid := keys(res.studies)[0]
	addr := res.endpoints[uid]
	token := addr[strings.LastIndex(addr, "/")+1:]

	// A study of another patient.
	var otherStudy string
	for p, studies := range c.byPatient {
		if p != demoMRN {
			otherStudy = keys(studies)[0]
			break
		}
	}
	kr, err := studytoken.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	mint := func(cl studytoken.Claims) string {
		tok, err := kr.Mint(cl)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	now := time.Now()
	route := "/hardcoded-patient"
	expired := mint(studytoken.Claims{StudyUID: uid, Patient: demoPatient, Route: route, Expiry: now.Add(-time.Minute), IssuedAt: now.Add(-time.Hour)})
	foreign := mint(studytoken.Claims{StudyUID: otherStudy, Patient: "someone-else", Route: route, Expiry: now.Add(time.Hour), IssuedAt: now})
	otherRoute := mint(studytoken.Claims{StudyUID: uid, Patient: demoPatient, Route: "/open", Expiry: now.Add(time.Hour), IssuedAt: now})
	otherKey, _ := studytoken.NewKeyring(make32(9))
	wrongKey, _ := otherKey.Mint(studytoken.Claims{StudyUID: uid, Patient: demoPatient, Route: route, Expiry: now.Add(time.Hour), IssuedAt: now})
	tampered := []byte(token)
	tampered[len(tampered)/2] ^= 1
	if tampered[len(tampered)/2] == '.' {
		tampered[len(tampered)/2+1] ^= 1
	}

	wado := base + "/hardcoded-patient/wado/"
	accept := `multipart/related; type="application/dicom"`
	cases := []struct {
		name, url string
		status    int
	}{
		{"tampered token", wado + string(tampered) + "/studies/" + uid, http.StatusForbidden},
		{"expired token", wado + expired + "/studies/" + uid, http.StatusForbidden},
		{"foreign patient token", wado + foreign + "/studies/" + otherStudy, http.StatusForbidden},
		{"token of another route", wado + otherRoute + "/studies/" + uid, http.StatusForbidden},
		{"token under another key", wado + wrongKey + "/studies/" + uid, http.StatusForbidden},
		{"path study differs from token", wado + token + "/studies/" + otherStudy, http.StatusForbidden},
		{"garbage token", wado + "not-a-token/studies/" + uid, http.StatusForbidden},
		{"open route token on patient route", base + "/hardcoded-patient/wado/" + strings.TrimPrefix(search(t, tc, base+"/open/fhir/ImagingStudy").endpoints[uid], base+"/open/wado/") + "/studies/" + uid, http.StatusForbidden},
		{"no path after token", wado + token, http.StatusNotFound},
		{"dot segments", wado + token + "/studies/" + uid + "/../" + otherStudy, http.StatusBadRequest},
		{"not a DICOMweb path", wado + token + "/patients", http.StatusBadRequest},
		{"bad UID", wado + token + "/studies/" + uid + "/series/abc", http.StatusBadRequest},
		{"unknown route path", base + "/hardcoded-patient/fhir/Patient", http.StatusNotFound},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			body := get(t, tc, tt.url, accept, tt.status, "application/fhir+json")
			var oo map[string]any
			if json.Unmarshal(body, &oo) != nil || oo["resourceType"] != "OperationOutcome" {
				t.Errorf("body is not an OperationOutcome: %s", body)
			}
			if strings.Contains(string(body), otherStudy) && tt.status != http.StatusOK {
				t.Errorf("refusal echoes the other study's UID")
			}
		})
	}

	t.Run("unsupported Accept is 406", func(t *testing.T) {
		body := get(t, tc, addr+"/studies/"+uid, "application/pdf", http.StatusNotAcceptable, "application/fhir+json")
		if !strings.Contains(string(body), "OperationOutcome") {
			t.Errorf("406 body: %s", body)
		}
	})
	t.Run("POST is refused", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, addr+"/studies/"+uid, nil)
		resp, err := tc.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST status %d, want 405", resp.StatusCode)
		}
	})
}

// get fetches url with Accept and checks the status (0: any 4xx) and the
// Content-Type prefix.
func get(t *testing.T, tc *caddytest.Tester, url, accept string, wantStatus int, wantType string) []byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", accept)
	resp, err := tc.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	if wantStatus == 0 {
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("GET %s: status %d, want a 4xx; body %.300s", url, resp.StatusCode, body)
		}
		return body
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: status %d, want %d; body %.300s", url, resp.StatusCode, wantStatus, body)
	}
	if ct := resp.Header.Get("Content-Type"); wantType != "" && !strings.HasPrefix(ct, wantType) {
		t.Errorf("GET %s: Content-Type %q, want %s", url, ct, wantType)
	}
	return body
}

// retrieveMultipart fetches a multipart/related answer and returns its
// parts, checking the type parameter and each part's Content-Type.
func retrieveMultipart(t *testing.T, tc *caddytest.Tester, url, accept, partType string) [][]byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", accept)
	resp, err := tc.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: status %d: %.300s", url, resp.StatusCode, b)
	}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/related" || params["boundary"] == "" {
		t.Fatalf("GET %s: Content-Type %q is not multipart/related with a boundary", url, resp.Header.Get("Content-Type"))
	}
	if !strings.HasPrefix(params["type"], partType) {
		t.Errorf("GET %s: multipart type %q, want %s", url, params["type"], partType)
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("GET %s: part %d: %v", url, len(parts), err)
		}
		if ct := p.Header.Get("Content-Type"); !strings.HasPrefix(ct, partType) {
			t.Errorf("part Content-Type %q, want %s", ct, partType)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("GET %s: reading part: %v", url, err)
		}
		parts = append(parts, b)
	}
	return parts
}
