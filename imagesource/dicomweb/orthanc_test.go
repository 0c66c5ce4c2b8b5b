package dicomweb

import (
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomhead"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

func TestMain(m *testing.M) { os.Exit(orthanc.RunTests(m)) }

var demo struct {
	once     sync.Once
	manifest dicomgen.Manifest
	err      error
}

// realPACS returns the shared Orthanc loaded with the demo studies.
func realPACS(t *testing.T) (*orthanc.Server, dicomgen.Manifest) {
	t.Helper()
	srv := orthanc.Require(t)
	demo.once.Do(func() {
		dir, err := os.MkdirTemp("", "sia-demo-*")
		if err != nil {
			demo.err = err
			return
		}
		defer os.RemoveAll(dir)
		if demo.manifest, demo.err = dicomgen.WriteDemo(dir); demo.err != nil {
			return
		}
		_, demo.err = srv.Upload(context.Background(), dir)
	})
	if demo.err != nil {
		t.Fatalf("loading the demo studies: %v", demo.err)
	}
	return srv, demo.manifest
}

func orthancSource(t *testing.T, srv *orthanc.Server, user, pass string) *Source {
	t.Helper()
	target, _ := url.Parse(srv.URL())
	s, err := New(Config{BaseURL: srv.DICOMwebURL(), Username: user, Password: pass},
		&rpProxy{target: target, transport: defaultClient().Transport}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// directQIDO asks Orthanc itself, bypassing the source.
func directQIDO(t *testing.T, srv *orthanc.Server, rawQuery string) []dicomjson.Dataset {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "/dicom-web/studies?"+rawQuery, nil)
	resp, err := srv.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	list, err := dicomjson.DecodeList(b)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("direct QIDO %s: HTTP %d, %v", rawQuery, resp.StatusCode, err)
	}
	return list
}

func sortedUIDs(studies []imagesource.Study) []string {
	out := studyUIDs(studies)
	sort.Strings(out)
	return out
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func TestOrthancExactPatientIDNeedsThePostFilter(t *testing.T) {
	srv, m := realPACS(t)
	s := orthancSource(t, srv, srv.Username(), srv.Password())
	const key = dicomgen.DemoPatientMRN
	want := sorted(m.ForPatient(key).StudyUIDs())
	if len(want) == 0 {
		t.Fatal("demo set has no studies for", key)
	}

	// Orthanc on its own: the exact query also returns the case decoy, and
	// a wildcard returns the prefix decoy. This is what the post-filter is for.
	exact := directQIDO(t, srv, "PatientID="+key)
	if len(exact) <= len(want) {
		t.Fatalf("Orthanc returned %d studies for PatientID=%s; expected more than the patient's %d (case-insensitive match) — the test data or Orthanc changed", len(exact), key, len(want))
	}
	if wild := directQIDO(t, srv, "PatientID="+key+"*"); len(wild) <= len(exact) {
		t.Errorf("Orthanc wildcard query returned %d studies, want more than %d", len(wild), len(exact))
	}

	got, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{key}})
	if err != nil {
		t.Fatal(err)
	}
	if g := sortedUIDs(got); strings.Join(g, " ") != strings.Join(want, " ") {
		t.Fatalf("FindStudies(%s) = %v, want exactly %v", key, g, want)
	}
	for _, st := range got {
		if pid := st.Attributes.String(dicomjson.TagPatientID); pid != key {
			t.Errorf("study of patient %q returned", pid)
		}
		uid := st.Attributes.String(dicomjson.TagStudyInstanceUID)
		var wantSeries []string
		for _, in := range m {
			if in.StudyUID == uid {
				wantSeries = append(wantSeries, in.SeriesUID)
			}
		}
		wantSeries = dedupe(wantSeries)
		if len(st.Series) != len(wantSeries) {
			t.Errorf("study %s: %d series, want %d", uid, len(st.Series), len(wantSeries))
		}
		for _, se := range st.Series {
			if se.Attributes.String(dicomjson.TagModality) == "" {
				t.Errorf("study %s: series without Modality (includefield missing?)", uid)
			}
		}
		if n, ok := st.Attributes.Int(dicomjson.TagNumberOfStudyRelatedInst); !ok || n == 0 {
			t.Errorf("study %s: NumberOfStudyRelatedInstances missing", uid)
		}
		if st.Attributes.Get(dicomjson.TagRetrieveURL) != nil {
			t.Errorf("study %s: the PACS's RetrieveURL was passed on", uid)
		}
	}

	// The decoy's own key finds only the decoy.
	got, err = s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{dicomgen.DemoPatientCaseDecoy}})
	if err != nil {
		t.Fatal(err)
	}
	if g, w := sortedUIDs(got), sorted(m.ForPatient(dicomgen.DemoPatientCaseDecoy).StudyUIDs()); strings.Join(g, " ") != strings.Join(w, " ") {
		t.Errorf("FindStudies(case decoy) = %v, want %v", g, w)
	}
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func TestOrthancAllStudiesAndStudyUIDs(t *testing.T) {
	srv, m := realPACS(t)
	s := orthancSource(t, srv, srv.Username(), srv.Password())
	got, err := s.FindStudies(context.Background(), imagesource.Query{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if g, w := sortedUIDs(got), sorted(m.StudyUIDs()); strings.Join(g, " ") != strings.Join(w, " ") {
		t.Errorf("all studies = %v, want %v", g, w)
	}
	// Fields Orthanc returns only when named in includefield.
	tz := 0
	for _, st := range got {
		if st.Attributes.String(dicomjson.TagPatientID) == dicomgen.DemoPatientSmart &&
			st.Attributes.String(dicomjson.TagIssuerOfPatientID) != dicomgen.DemoIssuer {
			t.Errorf("study %s: IssuerOfPatientID = %q, want %q (includefield not honoured?)",
				st.Attributes.String(dicomjson.TagStudyInstanceUID), st.Attributes.String(dicomjson.TagIssuerOfPatientID), dicomgen.DemoIssuer)
		}
		if st.Attributes.String(dicomjson.TagTimezoneOffsetFromUTC) != "" {
			tz++
		}
		for _, se := range st.Series {
			if _, ok := se.Attributes.Int(dicomjson.TagSeriesNumber); !ok {
				t.Errorf("series without SeriesNumber")
			}
		}
	}
	if tz == 0 {
		t.Error("no study has TimezoneOffsetFromUTC (includefield not honoured?)")
	}

	all := m.StudyUIDs()
	two := []string{all[0], all[len(all)-1]}
	got, err = s.FindStudies(context.Background(), imagesource.Query{All: true, StudyUIDs: two})
	if err != nil {
		t.Fatal(err)
	}
	if g := sortedUIDs(got); strings.Join(g, " ") != strings.Join(sorted(two), " ") {
		t.Errorf("restricted to %v: %v", two, g)
	}
	// Orthanc itself applies the comma list (so the post-filter is only a
	// safety net here).
	if direct := directQIDO(t, srv, "StudyInstanceUID="+two[0]+","+two[1]); len(direct) != 2 {
		t.Errorf("Orthanc answered %d studies to a two-UID list", len(direct))
	}
}

func TestOrthancWrongCredentials(t *testing.T) {
	srv, _ := realPACS(t)
	s := orthancSource(t, srv, srv.Username(), "not-the-password")
	_, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{dicomgen.DemoPatientMRN}})
	e, ok := imagesource.AsError(err)
	if !ok || e.Status != http.StatusBadGateway || !strings.Contains(e.Message, "credentials (HTTP 401)") {
		t.Fatalf("search: err = %v, want a 502 naming the credentials", err)
	}
	if strings.Contains(e.Error(), "not-the-password") {
		t.Error("error holds the password")
	}
	m := demo.manifest
	err = s.Retrieve(discardWriter{}, mustRequest(t, "/"), imagesource.Retrieval{
		Path: mustParse(t, "studies/"+m[0].StudyUID+"/metadata"), PublicBase: publicBase})
	if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusBadGateway || !strings.Contains(e.Message, "credentials") {
		t.Fatalf("retrieve: err = %v, want a 502 naming the credentials", err)
	}
}

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

func mustRequest(t *testing.T, target string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, "http://gw.test"+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestOrthancRetrieve(t *testing.T) {
	srv, m := realPACS(t)
	s := orthancSource(t, srv, srv.Username(), srv.Password())
	pacsHost := "127.0.0.1:" + strconv.Itoa(srv.Port())

	var cine dicomgen.Instance
	for _, in := range m {
		if in.Frames > 1 {
			cine = in
		}
	}
	if cine.Frames < 4 {
		t.Fatal("demo set has no multi-frame instance")
	}
	gw := gatewayAs(t, s, []string{cine.PatientID})
	inst := fmt.Sprintf("studies/%s/series/%s/instances/%s", cine.StudyUID, cine.SeriesUID, cine.SOPInstanceUID)

	get := func(path, accept string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, gw.URL+"/"+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s: reading the body: %v", path, err)
		}
		return resp, b
	}

	t.Run("study metadata", func(t *testing.T) {
		resp, body := get("studies/"+cine.StudyUID+"/metadata", "application/dicom+json")
		if resp.StatusCode != 200 {
			t.Fatalf("HTTP %d: %s", resp.StatusCode, body)
		}
		if strings.Contains(string(body), pacsHost) || strings.Contains(string(body), "/dicom-web/") {
			t.Fatalf("PACS URLs left in the metadata")
		}
		list, err := dicomjson.DecodeList(body)
		if err != nil {
			t.Fatal(err)
		}
		bulk := 0
		for _, ds := range list {
			if u := ds.Get(dicomjson.TagPixelData); u != nil && u.BulkDataURI != "" {
				bulk++
				if !strings.HasPrefix(u.BulkDataURI, publicBase+"/studies/"+cine.StudyUID+"/series/") {
					t.Errorf("BulkDataURI %q not on the gateway", u.BulkDataURI)
				}
			}
		}
		if bulk == 0 {
			t.Error("no BulkDataURI in the metadata: nothing was rewritten")
		}
	})

	t.Run("frames", func(t *testing.T) {
		resp, body := get(inst+"/frames/2,4", `multipart/related; type="application/octet-stream"`)
		if resp.StatusCode != 200 {
			t.Fatalf("HTTP %d: %s", resp.StatusCode, body)
		}
		_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if err != nil {
			t.Fatal(err)
		}
		mr := multipart.NewReader(strings.NewReader(string(body)), params["boundary"])
		var locs []string
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(p)
			if len(data) != cine.Rows*cine.Cols*2 {
				t.Errorf("frame of %d bytes, want %d", len(data), cine.Rows*cine.Cols*2)
			}
			locs = append(locs, p.Header.Get("Content-Location"))
		}
		if len(locs) != 2 {
			t.Fatalf("%d frames, want 2", len(locs))
		}
		for _, l := range locs {
			if l != "" && !strings.HasPrefix(l, publicBase+"/"+inst+"/frames/") {
				t.Errorf("frame Content-Location %q not on the gateway", l)
			}
		}
	})

	t.Run("rendered", func(t *testing.T) {
		resp, body := get(inst+"/frames/1/rendered?viewport=32,32", "image/png")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" || !strings.HasPrefix(string(body), "\x89PNG") {
			t.Fatalf("HTTP %d %q: %.300s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	})

	t.Run("study", func(t *testing.T) {
		resp, body := get("studies/"+cine.StudyUID, `multipart/related; type="application/dicom"`)
		if resp.StatusCode != 200 {
			t.Fatalf("HTTP %d", resp.StatusCode)
		}
		_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		mr := multipart.NewReader(strings.NewReader(string(body)), params["boundary"])
		n := 0
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(p)
			if len(data) < 132 || string(data[128:132]) != "DICM" {
				t.Errorf("part %d is not a DICOM file", n)
			}
			n++
		}
		want := 0
		for _, in := range m {
			if in.StudyUID == cine.StudyUID {
				want++
			}
		}
		if n != want {
			t.Errorf("%d instances, want %d", n, want)
		}
	})

	// Orthanc transcodes on request: the header check reads implicit VR
	// little endian as well, and refuses what it cannot read rather than
	// pass it on unchecked.
	t.Run("study transcoded to implicit VR", func(t *testing.T) {
		resp, body := get("studies/"+cine.StudyUID, `multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2`)
		if resp.StatusCode != 200 {
			t.Fatalf("HTTP %d: %.300s", resp.StatusCode, body)
		}
		_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		mr := multipart.NewReader(strings.NewReader(string(body)), params["boundary"])
		n := 0
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(p)
			id, err := dicomhead.Parse(data)
			if err != nil || id.TransferSyntax != "1.2.840.10008.1.2" {
				t.Errorf("part %d: transfer syntax %q, %v; want implicit VR little endian", n, id.TransferSyntax, err)
			}
			n++
		}
		if n == 0 {
			t.Error("no instance")
		}
	})
	t.Run("study transcoded to a syntax the check cannot read", func(t *testing.T) {
		for _, ts := range []string{"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"} {
			resp, body := get("studies/"+cine.StudyUID, `multipart/related; type="application/dicom"; transfer-syntax=`+ts)
			if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "cannot check") {
				t.Errorf("transfer syntax %s: HTTP %d %.200s; want the gateway's 502", ts, resp.StatusCode, body)
			}
		}
	})

	t.Run("foreign series under the study", func(t *testing.T) {
		var other dicomgen.Instance
		for _, in := range m {
			if in.StudyUID != cine.StudyUID {
				other = in
			}
		}
		resp, body := get(fmt.Sprintf("studies/%s/series/%s/metadata", cine.StudyUID, other.SeriesUID), "")
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("HTTP %d, want 404: %s", resp.StatusCode, body)
		}
	})

	t.Run("client Accept Orthanc cannot serve", func(t *testing.T) {
		resp, body := get(inst+"/frames/1", "application/octet-stream")
		if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(body), pacsHost) {
			t.Errorf("HTTP %d: %s", resp.StatusCode, body)
		}
	})
}
