package integration

import (
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// dicomwebRootConfig is sourcesConfig with the patient-scoped DICOMweb
// root on every route.
func dicomwebRootConfig(pacs *orthanc.Server, peers ...dimsePeer) string {
	return strings.ReplaceAll(sourcesConfig(pacs, peers...), "\t\tsmart_imaging {\n", "\t\tsmart_imaging {\n\t\t\tdicomweb_root\n")
}

// rootGet sends a GET with the given Accept and returns status, header and
// body.
func rootGet(t *testing.T, tc *caddytest.Tester, u, accept string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := tc.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading: %v", u, err)
	}
	return resp.StatusCode, resp.Header, b
}

// qido runs a QIDO-RS search that must succeed and returns its results.
func qido(t *testing.T, tc *caddytest.Tester, u string) []dicomjson.Dataset {
	t.Helper()
	code, h, b := rootGet(t, tc, u, "application/dicom+json")
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", u, code, b)
	}
	if ct := h.Get("Content-Type"); ct != "application/dicom+json" {
		t.Fatalf("GET %s: Content-Type %q", u, ct)
	}
	list, err := dicomjson.DecodeList(b)
	if err != nil {
		t.Fatalf("GET %s: %v in %s", u, err, b)
	}
	return list
}

func uidsOf(list []dicomjson.Dataset, tag string) []string {
	var out []string
	for _, ds := range list {
		out = append(out, ds.String(tag))
	}
	sort.Strings(out)
	return out
}

// TestDICOMwebRoot drives {route}/dicomweb/ on every image source as a
// plain DICOMweb client would: QIDO-RS sees exactly the patient's studies,
// whatever the query says; WADO-RS serves them and answers another
// patient's study, series or instance as if it did not exist; a study
// downloads as a zip of its Part 10 files.
func TestDICOMwebRoot(t *testing.T) {
	pacs := orthanc.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pacs.Upload(ctx, "../examples/demo/studies"); err != nil {
		t.Fatal(err)
	}
	peers := startDIMSEPeers(t, ctx)
	c := readSourcesCorpus(t)
	tc := caddytest.NewTester(t)
	tc.InitServer(dicomwebRootConfig(pacs, peers...), "caddyfile")

	routes := map[string]string{"folder": "/folder", "dicomweb": "/pacs"}
	for _, p := range peers {
		routes[strings.TrimPrefix(p.route, "/")] = p.route
	}
	own := keys(c.byPatient[demoMRN])
	var foreign, foreignSeries, foreignSOP string
	for study, insts := range c.byStudy {
		if insts[0].patientID != demoMRN {
			foreign, foreignSeries, foreignSOP = study, insts[0].series, insts[0].sop
			break
		}
	}
	if len(own) == 0 || foreign == "" {
		t.Fatal("the demo corpus lacks the patient's or another patient's studies")
	}
	const missing = "2.25.999999999999999999"

	for name, route := range routes {
		t.Run(name, func(t *testing.T) {
			root := base + route + "/dicomweb"
			studies := qido(t, tc, root+"/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060")
			if got := uidsOf(studies, dicomjson.TagStudyInstanceUID); strings.Join(got, " ") != strings.Join(own, " ") {
				t.Fatalf("studies = %v, want exactly the patient's %v", got, own)
			}
			for _, st := range studies {
				want := root + "/studies/" + st.String(dicomjson.TagStudyInstanceUID)
				if got := st.String(dicomjson.TagRetrieveURL); got != want {
					t.Errorf("RetrieveURL = %q, want %q", got, want)
				}
			}

			t.Run("the gateway decides the PatientID", func(t *testing.T) {
				if got := uidsOf(qido(t, tc, root+"/studies?PatientID="+demoMRN), dicomjson.TagStudyInstanceUID); strings.Join(got, " ") != strings.Join(own, " ") {
					t.Errorf("PatientID=own: %v", got)
				}
				for _, q := range []string{"PatientID=" + c.byStudy[foreign][0].patientID, "00100020=" + c.byStudy[foreign][0].patientID,
					"StudyInstanceUID=" + foreign, "PatientID=SIA-MRN-0001"} {
					if got := qido(t, tc, root+"/studies?"+q); len(got) != 0 {
						t.Errorf("%s: %d results, want none", q, len(got))
					}
				}
				if got := qido(t, tc, root+"/studies/"+foreign+"/series"); len(got) != 0 {
					t.Errorf("another patient's series: %d results", len(got))
				}
				if got := qido(t, tc, root+"/studies/"+foreign+"/series/"+foreignSeries+"/instances"); len(got) != 0 {
					t.Errorf("another patient's instances: %d results", len(got))
				}
			})
			t.Run("refused parameters", func(t *testing.T) {
				for _, q := range []string{"PatientName=Kshlerin*", "PatientName=Kshlerin%5EDanae", "AccessionNumber=*",
					"PatientID=*", "PatientID=SIA-MRN-*", "PatientID=" + url.QueryEscape(demoMRN+`\SIA-MRN-0001`),
					"Modality=CT,MR", "StudyInstanceUID=1.2.*", "fuzzymatching=true", "includefield=00100030x",
					"PatientBirthDate=19700101", "limit=-1", "unknown=1"} {
					code, h, b := rootGet(t, tc, root+"/studies?"+q, "")
					if code != http.StatusBadRequest || !strings.Contains(h.Get("Content-Type"), "fhir+json") || !bytes.Contains(b, []byte("OperationOutcome")) {
						t.Errorf("%s: %d %s, want a 400 OperationOutcome", q, code, b)
					}
				}
			})
			t.Run("filters", func(t *testing.T) {
				st := studies[0]
				uid := st.String(dicomjson.TagStudyInstanceUID)
				if got := qido(t, tc, root+"/studies?StudyInstanceUID="+uid); len(got) != 1 {
					t.Errorf("StudyInstanceUID: %d results", len(got))
				}
				mod := c.files[c.byStudy[uid][0].sop].modality
				got := qido(t, tc, root+"/studies?ModalitiesInStudy="+mod)
				if len(got) == 0 || len(got) > len(own) {
					t.Errorf("ModalitiesInStudy=%s: %d results", mod, len(got))
				}
				if got := qido(t, tc, root+"/studies?limit=1&offset=1"); len(got) != 1 || got[0].String(dicomjson.TagStudyInstanceUID) == "" {
					t.Errorf("limit=1&offset=1: %d results", len(got))
				}
			})

			for _, uid := range own {
				series := qido(t, tc, root+"/studies/"+uid+"/series")
				wantSeries := keys(mapKeys(c.seriesOf(uid)))
				if got := uidsOf(series, dicomjson.TagSeriesInstanceUID); strings.Join(got, " ") != strings.Join(wantSeries, " ") {
					t.Errorf("study %s series = %v, want %v", uid, got, wantSeries)
				}
				for suid, files := range c.seriesOf(uid) {
					insts := qido(t, tc, root+"/studies/"+uid+"/series/"+suid+"/instances")
					var want []string
					for _, f := range files {
						want = append(want, f.sop)
					}
					sort.Strings(want)
					if got := uidsOf(insts, dicomjson.TagSOPInstanceUID); strings.Join(got, " ") != strings.Join(want, " ") {
						t.Errorf("series %s instances = %v, want %v", suid, got, want)
					}
					for _, in := range insts {
						if !strings.HasPrefix(in.String(dicomjson.TagRetrieveURL), root+"/studies/"+uid+"/series/"+suid+"/instances/") {
							t.Errorf("instance RetrieveURL %q", in.String(dicomjson.TagRetrieveURL))
						}
					}
					// The viewer's next request: the series metadata.
					code, _, b := rootGet(t, tc, root+"/studies/"+uid+"/series/"+suid+"/metadata", "application/dicom+json")
					if code != http.StatusOK {
						t.Fatalf("metadata: %d %s", code, b)
					}
					md, err := dicomjson.DecodeList(b)
					if err != nil || len(md) != len(files) {
						t.Errorf("metadata: %d instances (%v), want %d", len(md), err, len(files))
					}
					code, _, b = rootGet(t, tc, root+"/studies/"+uid+"/series/"+suid+"/instances/"+files[0].sop+"/frames/1", "")
					if code != http.StatusOK || !bytes.Contains(b, files[0].frame1[:min(64, len(files[0].frame1))]) {
						t.Errorf("frame 1: %d, %d bytes, want the file's pixels", code, len(b))
					}
				}
			}

			t.Run("another patient's images are not found", func(t *testing.T) {
				_, _, missingBody := rootGet(t, tc, root+"/studies/"+missing+"/metadata", "application/dicom+json")
				for _, p := range []string{
					"/studies/" + foreign,
					"/studies/" + foreign + "/metadata",
					"/studies/" + foreign + "/series/" + foreignSeries,
					"/studies/" + foreign + "/series/" + foreignSeries + "/metadata",
					"/studies/" + foreign + "/series/" + foreignSeries + "/instances/" + foreignSOP,
					"/studies/" + foreign + "/series/" + foreignSeries + "/instances/" + foreignSOP + "/frames/1",
					"/studies/" + foreign + "/series/" + foreignSeries + "/instances/" + foreignSOP + "/rendered",
					"/studies/" + foreign + "/series/" + foreignSeries + "/instances/" + foreignSOP + "/bulkdata/7FE00010",
				} {
					code, _, b := rootGet(t, tc, root+p, "")
					if code != http.StatusNotFound {
						t.Errorf("%s: %d, want 404", p, code)
					}
					if !bytes.Equal(b, missingBody) {
						t.Errorf("%s: answer %s differs from a missing study's %s", p, b, missingBody)
					}
					if leaks := scanFor(foreignNeedles(readDemoManifest(t), demoMRN), p, b); len(leaks) > 0 {
						t.Errorf("%s leaks %v", p, leaks)
					}
				}
				// The patient's own study with another patient's series
				// under it.
				code, _, _ := rootGet(t, tc, root+"/studies/"+own[0]+"/series/"+foreignSeries+"/metadata", "application/dicom+json")
				if code == http.StatusOK {
					t.Errorf("own study, foreign series: %d", code)
				}
			})

			t.Run("zip download", func(t *testing.T) {
				uid := own[0]
				code, h, b := rootGet(t, tc, root+"/studies/"+uid, "application/zip")
				if code != http.StatusOK || h.Get("Content-Type") != "application/zip" {
					t.Fatalf("zip: %d %s", code, h.Get("Content-Type"))
				}
				checkStudyZip(t, c, uid, b, name == "folder" || name == "dicomweb")
			})
		})
	}

	t.Run("zip on the SMART endpoint", func(t *testing.T) {
		for name, route := range routes {
			res := search(t, tc, base+route+"/fhir/ImagingStudy?patient="+demoPatient)
			uid := own[len(own)-1]
			code, h, b := rootGet(t, tc, res.endpoints[uid]+"/studies/"+uid, "application/zip")
			if code != http.StatusOK || h.Get("Content-Type") != "application/zip" {
				t.Fatalf("%s: zip: %d %s %s", name, code, h.Get("Content-Type"), b)
			}
			checkStudyZip(t, c, uid, b, name == "folder" || name == "dicomweb")
		}
	})
}

func mapKeys[V any](m map[string]V) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}

// checkStudyZip checks a study's zip: a folder per series holding that
// series' Part 10 files (byte for byte the corpus's when exact is set).
func checkStudyZip(t *testing.T, c sourcesCorpus, study string, b []byte, exact bool) {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("not a zip: %v", err)
	}
	wantSHA := map[string]string{} // sha → series
	n := 0
	for suid, files := range c.seriesOf(study) {
		for _, f := range files {
			wantSHA[f.sha] = suid
			n++
		}
	}
	if len(zr.File) != n {
		t.Errorf("zip holds %d files, want %d", len(zr.File), n)
	}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		if len(data) < 132 || string(data[128:132]) != "DICM" {
			t.Errorf("%s is not a Part 10 file", f.Name)
			continue
		}
		folder := f.Name[:strings.IndexByte(f.Name, '/')]
		if _, ok := c.seriesOf(study)[folder]; !ok {
			t.Errorf("%s: folder is not a series of the study", f.Name)
		}
		if exact {
			sum := sha256.Sum256(data)
			if s, ok := wantSHA[hex.EncodeToString(sum[:])]; !ok || s != folder {
				t.Errorf("%s: not the corpus file of that series", f.Name)
			}
		}
	}
}

// TestDICOMwebRootSMART: the root under SMART tokens, as for search: no
// token is a 401 with a challenge, a wrong scope a 403, and each token
// sees its own patient's studies only, also right after another token
// opened a study (ownership is cached per token, not per study).
func TestDICOMwebRootSMART(t *testing.T) {
	env := newSmartEnv(t)
	env.tc = caddytest.NewTester(t)
	env.tc.InitServer(strings.ReplaceAll(env.config(), "\t\tsmart_imaging {\n", "\t\tsmart_imaging {\n\t\t\tdicomweb_root\n"), "caddyfile")
	t.Cleanup(func() {
		env.mu.Lock()
		defer env.mu.Unlock()
		for _, l := range env.leaks {
			t.Errorf("credential leaked: %s", l)
		}
	})
	c := readCorpus(t)
	ehr := env.ehr
	root := base + "/smart/dicomweb"
	wantDemo, wantAlice := keys(c.byPatient[demoMRN]), keys(c.byPatient[smartAliceMRN])

	h, _ := smartRefused(t, env.as(""), root+"/studies", http.StatusUnauthorized)
	if !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("no token: WWW-Authenticate %q", h.Get("WWW-Authenticate"))
	}
	smartRefused(t, env.as(env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Scope: "launch/patient patient/Observation.rs"})),
		root+"/studies", http.StatusForbidden)
	smartRefused(t, env.as(env.mint(ehr, testehr.TokenSpec{Patient: demoPatient, Scope: "launch/patient patient/Observation.rs"})),
		root+"/studies/"+wantDemo[0]+"/metadata", http.StatusForbidden)

	demo := env.as(env.mint(ehr, testehr.TokenSpec{Patient: demoPatient}))
	alice := env.as(env.mint(ehr, testehr.TokenSpec{Patient: smartAlice}))
	for _, tc := range []struct {
		name        string
		tester      *caddytest.Tester
		own, others []string
	}{{"demo", demo, wantDemo, wantAlice}, {"alice", alice, wantAlice, wantDemo}} {
		got := uidsOf(qido(t, tc.tester, root+"/studies"), dicomjson.TagStudyInstanceUID)
		if strings.Join(got, " ") != strings.Join(tc.own, " ") {
			t.Errorf("%s: studies %v, want %v", tc.name, got, tc.own)
		}
		for _, uid := range tc.own {
			if code, _, b := rootGet(t, tc.tester, root+"/studies/"+uid+"/metadata", "application/dicom+json"); code != http.StatusOK {
				t.Errorf("%s: own study metadata %d %s", tc.name, code, b)
			}
		}
		for _, uid := range tc.others {
			if code, _, _ := rootGet(t, tc.tester, root+"/studies/"+uid+"/metadata", "application/dicom+json"); code != http.StatusNotFound {
				t.Errorf("%s: the other patient's study %s: %d, want 404", tc.name, uid, code)
			}
			if got := qido(t, tc.tester, root+"/studies/"+uid+"/series"); len(got) != 0 {
				t.Errorf("%s: the other patient's series listed", tc.name)
			}
		}
	}
}

// exampleEncodeBlock is the encode block of examples/demo/Caddyfile, the
// one the README tells operators to copy.
func exampleEncodeBlock(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../examples/demo/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\tencode {\n")
	j := strings.Index(s[max(i, 0):], "\n\t}\n")
	if i < 0 || j < 0 {
		t.Fatal("examples/demo/Caddyfile has no encode block")
	}
	return s[i : i+j+4]
}

// TestCompressedJSON: with the example's encode block, a study's DICOM
// JSON metadata, a QIDO-RS answer and a FHIR Bundle come back compressed
// and smaller; frames do not.
func TestCompressedJSON(t *testing.T) {
	tc := caddytest.NewTester(t)
	cfg := strings.Replace(demoConfig(), "http://localhost:9080 {\n", "http://localhost:9080 {\n"+exampleEncodeBlock(t)+"\n", 1)
	cfg = strings.ReplaceAll(cfg, "\t\tsmart_imaging {\n", "\t\tsmart_imaging {\n\t\t\tdicomweb_root\n")
	tc.InitServer(cfg, "caddyfile")
	c := readSourcesCorpus(t)
	study := keys(c.byPatient[demoMRN])[0]
	var sop corpusFile
	for _, f := range c.files {
		if f.study == study {
			sop = f
			break
		}
	}
	res := search(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient)
	for _, u := range []string{
		base + "/hardcoded-patient/dicomweb/studies/" + study + "/metadata",
		base + "/hardcoded-patient/dicomweb/studies",
		res.endpoints[study] + "/studies/" + study + "/metadata",
		base + "/hardcoded-patient/fhir/ImagingStudy?patient=" + demoPatient,
	} {
		get := func(enc string) (*http.Response, []byte) {
			req, _ := http.NewRequest(http.MethodGet, u, nil)
			if enc != "" {
				req.Header.Set("Accept-Encoding", enc)
			}
			resp, err := tc.Client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp, b
		}
		plainResp, plain := get("identity")
		zResp, z := get("gzip")
		if plainResp.StatusCode != 200 || zResp.StatusCode != 200 {
			t.Fatalf("%s: %d / %d", u, plainResp.StatusCode, zResp.StatusCode)
		}
		if zResp.Header.Get("Content-Encoding") != "gzip" {
			t.Errorf("%s (%s): not compressed", u, zResp.Header.Get("Content-Type"))
			continue
		}
		zr, err := gzip.NewReader(bytes.NewReader(z))
		if err != nil {
			t.Fatal(err)
		}
		unz, err := io.ReadAll(zr)
		if err != nil || !json.Valid(unz) || (!strings.Contains(u, "/fhir/") && !bytes.Equal(unz, plain)) {
			// (A FHIR Bundle differs from one search to the next: its
			// study tokens are fresh.)
			t.Errorf("%s: the compressed answer is not the plain one (%v)", u, err)
		}
		if len(z) >= len(plain) {
			t.Errorf("%s: compressed %d bytes, plain %d", u, len(z), len(plain))
		}
		t.Logf("%s: %d → %d bytes", zResp.Header.Get("Content-Type"), len(plain), len(z))
	}
	// Pixels are left alone.
	req, _ := http.NewRequest(http.MethodGet, base+"/hardcoded-patient/dicomweb/studies/"+study+"/series/"+sop.series+"/instances/"+sop.sop+"/frames/1", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := tc.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" {
		t.Errorf("frame: %d, Content-Encoding %q", resp.StatusCode, resp.Header.Get("Content-Encoding"))
	}
}

// TestRangeDownloads: a single-part instance and a bulk data value resume
// with Range on every source, on the root and on the SMART endpoint.
func TestRangeDownloads(t *testing.T) {
	pacs := orthanc.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pacs.Upload(ctx, "../examples/demo/studies"); err != nil {
		t.Fatal(err)
	}
	peers := startDIMSEPeers(t, ctx)
	c := readSourcesCorpus(t)
	tc := caddytest.NewTester(t)
	tc.InitServer(dicomwebRootConfig(pacs, peers...), "caddyfile")
	routes := map[string]string{"folder": "/folder", "dicomweb": "/pacs"}
	for _, p := range peers {
		routes[strings.TrimPrefix(p.route, "/")] = p.route
	}
	study := keys(c.byPatient[demoMRN])[0]
	f := c.seriesOf(study)[c.byStudy[study][0].series][0]
	raw, err := os.ReadFile(f.file)
	if err != nil {
		t.Fatal(err)
	}
	get := func(t *testing.T, u, accept, rng string) (int, http.Header, []byte) {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Accept", accept)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := tc.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	for name, route := range routes {
		t.Run(name, func(t *testing.T) {
			res := search(t, tc, base+route+"/fhir/ImagingStudy?patient="+demoPatient)
			for door, prefix := range map[string]string{"root": base + route + "/dicomweb", "endpoint": res.endpoints[study]} {
				inst := prefix + "/studies/" + study + "/series/" + f.series + "/instances/" + f.sop
				checkInstance := func() {
					// Orthanc refuses single-part answers: the dicomweb source
					// asks it for multipart and sends the one part.
					code, h, full := get(t, inst, "application/dicom", "")
					if code != http.StatusOK {
						t.Fatalf("%s: single-part instance: %d", door, code)
					}
					if h.Get("Accept-Ranges") != "bytes" {
						t.Errorf("%s: Accept-Ranges %q", door, h.Get("Accept-Ranges"))
					}
					n := int64(len(full))
					code, h, part := get(t, inst, "application/dicom", "bytes=100-")
					if code != http.StatusPartialContent || !bytes.Equal(part, full[100:]) ||
						h.Get("Content-Range") != "bytes 100-"+strconv.FormatInt(n-1, 10)+"/"+strconv.FormatInt(n, 10) {
						t.Errorf("%s: instance bytes=100-: %d, %d bytes, %q", door, code, len(part), h.Get("Content-Range"))
					}
					if (name == "folder" || name == "dicomweb") && !bytes.Equal(full, raw) {
						t.Errorf("%s: the instance is not the file", door)
					}
					if code, _, _ := get(t, inst, "application/dicom", "bytes="+strconv.FormatInt(n, 10)+"-"); code != http.StatusRequestedRangeNotSatisfiable {
						t.Errorf("%s: beyond the end: %d, want 416", door, code)
					}
				}
				checkInstance()
				bulkURL := inst + "/bulkdata/7FE00010"
				if name == "dicomweb" {
					bulkURL = inst + "/bulk/7fe00010"
				}
				code, h, whole := get(t, bulkURL, "application/octet-stream", "")
				if code != http.StatusOK || len(whole) < 16 || h.Get("Accept-Ranges") != "bytes" {
					t.Errorf("%s: single-part bulk data: %d", door, code)
					continue
				}
				code, _, part := get(t, bulkURL, "application/octet-stream", "bytes=-16")
				if code != http.StatusPartialContent || !bytes.Equal(part, whole[len(whole)-16:]) {
					t.Errorf("%s: bulk data bytes=-16: %d, %d bytes", door, code, len(part))
				}
				if code, _, _ := get(t, bulkURL, "application/octet-stream", "bytes="+strconv.Itoa(len(whole))+"-"); code != http.StatusRequestedRangeNotSatisfiable {
					t.Errorf("%s: bulk data beyond the end: %d, want 416", door, code)
				}
			}
		})
	}
}
