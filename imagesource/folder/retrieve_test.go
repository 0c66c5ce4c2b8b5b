package folder

import (
	"bytes"
	"encoding/json"
	"errors"
	"github.com/smart-imaging/smart_imaging/pacskey"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

const publicBase = "https://gw.example.org/open/wado/TOKEN"

const (
	acceptDICOM  = `multipart/related; type="application/dicom"`
	acceptOctets = `multipart/related; type="application/octet-stream"`
)

type request struct {
	path   string
	accept []string // one entry per Accept header line
	query  string
	method string
	// maxRender is the route's max_render_size (0: the default).
	maxRender int
}

func do(t *testing.T, s *Source, rq request) (*httptest.ResponseRecorder, error) {
	t.Helper()
	p, err := wadopath.Parse(rq.path)
	if err != nil {
		t.Fatalf("wadopath.Parse(%q): %v", rq.path, err)
	}
	target := "/open/wado/TOKEN/" + rq.path
	if rq.query != "" {
		target += "?" + rq.query
	}
	method := rq.method
	if method == "" {
		method = http.MethodGet
	}
	r := httptest.NewRequest(method, target, nil)
	for _, a := range rq.accept {
		r.Header.Add("Accept", a)
	}
	rec := httptest.NewRecorder()
	err = s.Retrieve(rec, r, imagesource.Retrieval{Path: p, PublicBase: publicBase, MaxRenderSize: rq.maxRender, StudyUID: p.StudyUID, Unrestricted: true})
	return rec, err
}

// mustOK runs a request that must succeed.
func mustOK(t *testing.T, s *Source, rq request) *httptest.ResponseRecorder {
	t.Helper()
	rec, err := do(t, s, rq)
	if err != nil {
		t.Fatalf("%s (Accept %q): %v", rq.path, rq.accept, err)
	}
	if rec.Code != http.StatusOK {
		t.Fatalf("%s: status %d", rq.path, rec.Code)
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "private" {
		t.Errorf("%s: Cache-Control = %q, want private", rq.path, cc)
	}
	return rec
}

// mustFail runs a request that must be refused with status before anything
// is written.
func mustFail(t *testing.T, s *Source, rq request, status int) *imagesource.Error {
	t.Helper()
	rec, err := do(t, s, rq)
	e, ok := imagesource.AsError(err)
	if !ok {
		t.Fatalf("%s (Accept %q): err = %v, want *imagesource.Error %d", rq.path, rq.accept, err, status)
	}
	if e.Status != status {
		t.Fatalf("%s (Accept %q): status %d (%s), want %d", rq.path, rq.accept, e.Status, e.Message, status)
	}
	if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
		t.Fatalf("%s: refused request wrote %d bytes and headers %v", rq.path, rec.Body.Len(), rec.Header())
	}
	return e
}

type part struct {
	header map[string][]string
	body   []byte
}

// readParts parses a multipart/related answer, checking the root type and
// each part's Content-Length.
func readParts(t *testing.T, rec *httptest.ResponseRecorder, wantType string) []part {
	t.Helper()
	mt, params, err := mime.ParseMediaType(rec.Header().Get("Content-Type"))
	if err != nil {
		t.Fatalf("Content-Type %q: %v", rec.Header().Get("Content-Type"), err)
	}
	if mt != "multipart/related" || params["type"] != wantType || params["boundary"] == "" {
		t.Fatalf("Content-Type = %q, want multipart/related; type=%q", rec.Header().Get("Content-Type"), wantType)
	}
	mr := multipart.NewReader(bytes.NewReader(rec.Body.Bytes()), params["boundary"])
	var out []part
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("part %d: %v", len(out)+1, err)
		}
		body, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("part %d body: %v", len(out)+1, err)
		}
		if cl := p.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
			t.Errorf("part %d Content-Length %q, body has %d bytes", len(out)+1, cl, len(body))
		}
		out = append(out, part{header: p.Header, body: body})
	}
	return out
}

func parseSOP(t *testing.T, b []byte) string {
	t.Helper()
	ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil)
	if err != nil {
		t.Fatalf("part does not parse as DICOM: %v", err)
	}
	e, err := ds.FindElementByTag(tag.SOPInstanceUID)
	if err != nil {
		t.Fatal(err)
	}
	return dicom.MustGetStrings(e.Value)[0]
}

func TestRetrieveStudyMultipart(t *testing.T) {
	s, _ := openTree(t)
	rec := mustOK(t, s, request{path: "studies/" + studyA, accept: []string{acceptDICOM}})
	parts := readParts(t, rec, "application/dicom")
	var got []string
	for _, p := range parts {
		if ct := p.header["Content-Type"]; len(ct) != 1 || ct[0] != "application/dicom" {
			t.Errorf("part Content-Type = %v", ct)
		}
		got = append(got, parseSOP(t, p.body))
	}
	want := []string{instA1a, instA1b, instA1c, instA2, instA3, instA4, instA4b}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("instances = %v, want %v", got, want)
	}
}

func TestRetrieveSeriesAndInstance(t *testing.T) {
	s, dir := openTree(t)
	rec := mustOK(t, s, request{path: "studies/" + studyA + "/series/" + seriesA1, accept: []string{acceptDICOM}})
	if n := len(readParts(t, rec, "application/dicom")); n != 3 {
		t.Errorf("series parts = %d, want 3", n)
	}
	rec = mustOK(t, s, request{path: "studies/" + studyA + "/series/" + seriesA1 + "/instances/" + instA1c, accept: []string{acceptDICOM}})
	parts := readParts(t, rec, "application/dicom")
	file, err := os.ReadFile(filepath.Join(dir, "a/deep/er/ct3.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 1 || !bytes.Equal(parts[0].body, file) {
		t.Errorf("instance part is not the stored file")
	}
}

func TestRetrieveObjectsAccept(t *testing.T) {
	s, dir := openTree(t)
	study := "studies/" + studyA
	inst := study + "/series/" + seriesA1 + "/instances/" + instA1a
	jpegInst := study + "/series/" + seriesA3 + "/instances/" + instA3
	ok := []struct {
		name, path string
		accept     []string
	}{
		{"no Accept", study, nil},
		{"any", study, []string{"*/*"}},
		{"quoted type", study, []string{`multipart/related; type="application/dicom"`}},
		{"unquoted type", study, []string{`multipart/related; type=application/dicom`}},
		{"bare multipart", study, []string{"multipart/related"}},
		{"any transfer syntax", study, []string{`multipart/related; type="application/dicom"; transfer-syntax=*`}},
		{"stored transfer syntax", inst, []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1`}},
		{"stored compressed syntax", jpegInst, []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50`}},
		{"q-values pick the acceptable one", study, []string{`image/png, multipart/related; type="application/dicom"; q=0.5`}},
		{"second Accept line", study, []string{"image/png", acceptDICOM}},
		{"upper case", study, []string{`Multipart/Related; Type="Application/DICOM"`}},
	}
	for _, c := range ok {
		t.Run(c.name, func(t *testing.T) {
			rec := mustOK(t, s, request{path: c.path, accept: c.accept})
			for _, p := range readParts(t, rec, "application/dicom") {
				parseSOP(t, p.body)
			}
		})
	}
	refused := []struct {
		name, path string
		accept     []string
	}{
		{"single part for a study", study, []string{"application/dicom"}},
		{"image", study, []string{"image/png"}},
		{"json", study, []string{"application/dicom+json"}},
		{"other multipart type", study, []string{`multipart/related; type="application/octet-stream"`}},
		{"transcoding", study, []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1`}},
		{"transcoding an instance", jpegInst, []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1`}},
		{"q=0", study, []string{`multipart/related; type="application/dicom"; q=0`}},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			e := mustFail(t, s, request{path: c.path, accept: c.accept}, http.StatusNotAcceptable)
			if e.Code != "not-supported" {
				t.Errorf("code = %q, want not-supported", e.Code)
			}
		})
	}
	t.Run("single part instance", func(t *testing.T) {
		rec := mustOK(t, s, request{path: inst, accept: []string{"application/dicom"}})
		if ct := rec.Header().Get("Content-Type"); ct != "application/dicom" {
			t.Errorf("Content-Type = %q", ct)
		}
		file, _ := os.ReadFile(filepath.Join(dir, "a/ct1.dcm"))
		if !bytes.Equal(rec.Body.Bytes(), file) {
			t.Error("single-part body is not the stored file")
		}
		if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(len(file)) {
			t.Errorf("Content-Length = %q, want %d", cl, len(file))
		}
	})
}

func TestRetrieveHead(t *testing.T) {
	s, _ := openTree(t)
	rec := mustOK(t, s, request{path: "studies/" + studyA, method: http.MethodHead})
	if !strings.HasPrefix(rec.Header().Get("Content-Type"), "multipart/related") || rec.Body.Len() != 0 {
		t.Errorf("HEAD: Content-Type %q, %d body bytes", rec.Header().Get("Content-Type"), rec.Body.Len())
	}
}

func TestRetrieveStaysInsideTheStudy(t *testing.T) {
	s, _ := openTree(t)
	a := "studies/" + studyA
	for _, p := range []string{
		"studies/1.2.3.4",
		"studies/" + studyD, // left out: its files disagree on PatientID
		a + "/series/" + seriesB1,
		a + "/series/" + seriesB1 + "/instances/" + instB1,
		a + "/series/" + seriesB1 + "/instances/" + instB1 + "/metadata",
		a + "/series/" + seriesB1 + "/instances/" + instB1 + "/frames/1",
		a + "/series/" + seriesB1 + "/rendered",
		a + "/series/" + seriesA1 + "/instances/" + instA2, // instance of another series
		a + "/series/" + seriesA1 + "/instances/" + instA2 + "/frames/1",
		a + "/series/" + seriesA1 + "/instances/" + instA2 + "/bulkdata/7FE00010",
		"studies/" + studyB + "/series/" + seriesA1 + "/metadata",
	} {
		t.Run(p, func(t *testing.T) {
			e := mustFail(t, s, request{path: p}, http.StatusNotFound)
			if e.Code != "not-found" {
				t.Errorf("code = %q, want not-found", e.Code)
			}
		})
	}
}

func TestRetrieveMetadata(t *testing.T) {
	s, _ := openTree(t)
	rec := mustOK(t, s, request{path: "studies/" + studyA + "/metadata", accept: []string{"application/dicom+json"}})
	if ct := rec.Header().Get("Content-Type"); ct != "application/dicom+json" {
		t.Errorf("Content-Type = %q", ct)
	}
	list, err := dicomjson.DecodeList(rec.Body.Bytes())
	if err != nil {
		t.Fatalf("DecodeList: %v\n%s", err, rec.Body.String())
	}
	if len(list) != 7 {
		t.Fatalf("metadata has %d datasets, want 7", len(list))
	}
	var ds dicomjson.Dataset
	for _, d := range list {
		if d.String(dicomjson.TagSOPInstanceUID) == instA1b {
			ds = d
		}
	}
	if ds == nil {
		t.Fatal("no metadata for " + instA1b)
	}
	instURL := publicBase + "/studies/" + studyA + "/series/" + seriesA1 + "/instances/" + instA1b
	if e := ds.Get(dicomjson.TagPixelData); e == nil || e.BulkDataURI != instURL+"/bulkdata/7FE00010" || e.VR != "OW" {
		t.Errorf("PixelData = %+v, want OW with BulkDataURI %s/bulkdata/7FE00010", e, instURL)
	}
	if e := ds.Get("00282000"); e == nil || e.BulkDataURI != instURL+"/bulkdata/00282000" || e.VR != "OB" {
		t.Errorf("ICC Profile = %+v, want OB with a BulkDataURI", e)
	}
	if got := ds.String(dicomjson.TagRetrieveURL); got != instURL {
		t.Errorf("RetrieveURL = %q, want %q", got, instURL)
	}
	if e := ds.Get(dicomjson.TagPatientName); e == nil || e.VR != "PN" || len(e.Value) != 1 || e.Value[0] != (dicomjson.PersonName{Alphabetic: "Doe^Jane"}) {
		t.Errorf("PatientName = %+v", e)
	}
	if e := ds.Get("00180050"); e == nil || e.VR != "DS" || e.Value[0] != json.Number("2.50") {
		t.Errorf("SliceThickness = %+v, want DS 2.50 as a number", e)
	}
	if e := ds.Get(dicomjson.TagRows); e == nil || e.VR != "US" || e.Value[0] != json.Number("16") {
		t.Errorf("Rows = %+v", e)
	}
	if e := ds.Get(dicomjson.TagSeriesNumber); e == nil || e.VR != "IS" || e.Value[0] != json.Number("1") {
		t.Errorf("SeriesNumber = %+v", e)
	}
	if got := ds.Strings("00080008"); strings.Join(got, "|") != "ORIGINAL|PRIMARY|AXIAL" {
		t.Errorf("ImageType = %v", got)
	}
	if got := ds.Strings("00204000"); len(got) != 1 || got[0] != `left \ right` {
		t.Errorf("ImageComments (LT) = %q, want one value with its backslash", got)
	}
	seq := ds.Get("00081032")
	if seq == nil || seq.VR != "SQ" || len(seq.Value) != 1 {
		t.Fatalf("ProcedureCodeSequence = %+v", seq)
	}
	if item, _ := seq.Value[0].(dicomjson.Dataset); item.String("00080104") != "CT chest" {
		t.Errorf("sequence item = %v", seq.Value[0])
	}
	for tag := range ds {
		if strings.HasPrefix(tag, "0002") {
			t.Errorf("file meta element %s in metadata", tag)
		}
	}

	// The BulkDataURI resolves to the value.
	rel := strings.TrimPrefix(ds.Get("00282000").BulkDataURI, publicBase+"/")
	parts := readParts(t, mustOK(t, s, request{path: rel}), "application/octet-stream")
	if len(parts) != 1 || len(parts[0].body) != 2000 || parts[0].body[1999] != byte(1999%256) {
		t.Errorf("ICC bulk data: %d parts", len(parts))
	}

	// Instance level, application/json.
	rec = mustOK(t, s, request{path: "studies/" + studyA + "/series/" + seriesA2 + "/instances/" + instA2 + "/metadata", accept: []string{"application/json"}})
	list, err = dicomjson.DecodeList(rec.Body.Bytes())
	if err != nil || len(list) != 1 {
		t.Fatalf("instance metadata: %d datasets, %v", len(list), err)
	}
	if n, _ := list[0].Int(dicomjson.TagNumberOfFrames); n != multiFrames {
		t.Errorf("NumberOfFrames = %d", n)
	}
	mustFail(t, s, request{path: "studies/" + studyA + "/metadata", accept: []string{"image/png"}}, http.StatusNotAcceptable)
	mustFail(t, s, request{path: "studies/" + studyA + "/metadata", accept: []string{`multipart/related; type="application/dicom+xml"`}}, http.StatusNotAcceptable)
}

func TestRetrieveFrames(t *testing.T) {
	s, _ := openTree(t)
	const rows, cols = 16, 24
	mf := "studies/" + studyA + "/series/" + seriesA2 + "/instances/" + instA2
	rec := mustOK(t, s, request{path: mf + "/frames/1,3", accept: []string{acceptOctets}})
	parts := readParts(t, rec, "application/octet-stream")
	if len(parts) != 2 {
		t.Fatalf("parts = %d, want 2", len(parts))
	}
	for i, f := range []int{0, 2} {
		if len(parts[i].body) != rows*cols*2 {
			t.Errorf("frame %d has %d bytes, want %d", f+1, len(parts[i].body), rows*cols*2)
		}
		if !bytes.Equal(parts[i].body, expectedFrame(rows, cols, f)) {
			t.Errorf("frame %d bytes differ from the stored pixels", f+1)
		}
		if ct := parts[i].header["Content-Type"]; len(ct) != 1 || !strings.HasPrefix(ct[0], "application/octet-stream") {
			t.Errorf("part Content-Type = %v", ct)
		}
	}

	// Frames come out little endian whatever the stored syntax.
	for _, p := range []string{
		"studies/" + studyA + "/series/" + seriesA4 + "/instances/" + instA4 + "/frames/1",
		"studies/" + studyA + "/series/" + seriesA4 + "/instances/" + instA4b + "/frames/1",
		"studies/" + studyA + "/series/" + seriesA1 + "/instances/" + instA1a + "/frames/1",
	} {
		parts := readParts(t, mustOK(t, s, request{path: p}), "application/octet-stream")
		if len(parts) != 1 || !bytes.Equal(parts[0].body, expectedFrame(rows, cols, 0)) {
			t.Errorf("%s: frame bytes differ from the stored pixels", p)
		}
	}

	// A single bare frame.
	rec = mustOK(t, s, request{path: mf + "/frames/2", accept: []string{"application/octet-stream"}})
	if !bytes.Equal(rec.Body.Bytes(), expectedFrame(rows, cols, 1)) {
		t.Error("bare frame 2 differs from the stored pixels")
	}

	// Pixel Data as bulk data: every frame, in order.
	parts = readParts(t, mustOK(t, s, request{path: mf + "/bulkdata/7FE00010"}), "application/octet-stream")
	want := bytes.Join([][]byte{expectedFrame(rows, cols, 0), expectedFrame(rows, cols, 1), expectedFrame(rows, cols, 2)}, nil)
	if len(parts) != 1 || !bytes.Equal(parts[0].body, want) {
		t.Errorf("pixel bulk data differs from the stored pixels")
	}

	mustFail(t, s, request{path: mf + "/frames/4"}, http.StatusNotFound)
	mustFail(t, s, request{path: mf + "/frames/1,4"}, http.StatusNotFound)
	mustFail(t, s, request{path: mf + "/bulkdata/00100010"}, http.StatusNotFound)
	mustFail(t, s, request{path: mf + "/bulkdata/7FE00010/1"}, http.StatusNotFound)
	jp := "studies/" + studyA + "/series/" + seriesA3 + "/instances/" + instA3
	mustFail(t, s, request{path: jp + "/frames/1"}, http.StatusNotAcceptable)
	mustFail(t, s, request{path: jp + "/bulkdata/7FE00010"}, http.StatusNotAcceptable)
	for _, a := range []string{
		"image/jpeg",
		"application/dicom",
		`multipart/related; type="application/dicom"`,
		`multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50`,
	} {
		mustFail(t, s, request{path: mf + "/frames/1", accept: []string{a}}, http.StatusNotAcceptable)
	}
	mustFail(t, s, request{path: mf + "/frames/1,2", accept: []string{"application/octet-stream"}}, http.StatusNotAcceptable)
}

func decodeImage(t *testing.T, rec *httptest.ResponseRecorder, wantType string) image.Image {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != wantType {
		t.Fatalf("Content-Type = %q, want %q", ct, wantType)
	}
	var img image.Image
	var err error
	if wantType == "image/png" {
		img, err = png.Decode(bytes.NewReader(rec.Body.Bytes()))
	} else {
		img, err = jpeg.Decode(bytes.NewReader(rec.Body.Bytes()))
	}
	if err != nil {
		t.Fatalf("decode %s: %v", wantType, err)
	}
	return img
}

func grayLevels(img image.Image) map[uint8]bool {
	levels := map[uint8]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, _, _, _ := img.At(x, y).RGBA()
			levels[uint8(r>>8)] = true
		}
	}
	return levels
}

func TestRetrieveRendered(t *testing.T) {
	s, _ := openTree(t)
	inst := "studies/" + studyA + "/series/" + seriesA1 + "/instances/" + instA1a
	img := decodeImage(t, mustOK(t, s, request{path: inst + "/rendered", accept: []string{"image/png"}}), "image/png")
	if b := img.Bounds(); b.Dx() != 24 || b.Dy() != 16 {
		t.Errorf("rendered size %v, want 24x16", b)
	}
	if n := len(grayLevels(img)); n < 20 {
		t.Errorf("rendered PNG has %d gray levels; the image looks blank", n)
	}

	for _, accept := range [][]string{nil, {"image/jpeg"}, {"image/*"}, {"image/png;q=0.5, image/jpeg"}} {
		img := decodeImage(t, mustOK(t, s, request{path: inst + "/rendered", accept: accept}), "image/jpeg")
		if n := len(grayLevels(img)); n < 10 {
			t.Errorf("Accept %q: JPEG has %d gray levels", accept, n)
		}
	}

	img = decodeImage(t, mustOK(t, s, request{path: inst + "/rendered", query: "viewport=48,100", accept: []string{"image/png"}}), "image/png")
	if b := img.Bounds(); b.Dx() != 48 || b.Dy() != 32 {
		t.Errorf("viewport 48,100 gave %v, want 48x32", b)
	}
	// A viewport past the route's bound is refused, not rendered.
	for _, q := range []string{"viewport=9000,9000", "viewport=30000,30000", "viewport=2049,10"} {
		e := mustFail(t, s, request{path: inst + "/rendered", query: q, accept: []string{"image/png"}}, http.StatusBadRequest)
		if !errors.Is(e, imagesource.ErrRenderTooLarge) {
			t.Errorf("%s: %v, want ErrRenderTooLarge", q, e)
		}
	}
	mustFail(t, s, request{path: inst + "/thumbnail", query: "viewport=48,48", maxRender: 32}, http.StatusBadRequest)
	mustFail(t, s, request{path: inst + "/thumbnail", query: "viewport=16,16&viewport=9000,9000"}, http.StatusBadRequest)
	// The route's bound is honoured when no viewport is asked for: the
	// 24x16 image fits in 12x12, thumbnail or not.
	for _, res := range []string{"/rendered", "/thumbnail"} {
		img = decodeImage(t, mustOK(t, s, request{path: inst + res, accept: []string{"image/png"}, maxRender: 12}), "image/png")
		if b := img.Bounds(); b.Dx() != 12 || b.Dy() != 8 {
			t.Errorf("%s with max_render_size 12 gave %v, want 12x8", res, b)
		}
	}
	img = decodeImage(t, mustOK(t, s, request{path: inst + "/rendered", query: "viewport=32,32", accept: []string{"image/png"}, maxRender: 32}), "image/png")
	if b := img.Bounds(); b.Dx() != 32 {
		t.Errorf("viewport at the bound gave %v, want 32 wide", b)
	}
	img = decodeImage(t, mustOK(t, s, request{path: inst + "/thumbnail", accept: []string{"image/png"}}), "image/png")
	if b := img.Bounds(); b.Dx() != 24 || b.Dy() != 16 {
		t.Errorf("thumbnail of a small image is %v, want it left at 24x16", b)
	}

	// A one-unit window makes a two-level image.
	img = decodeImage(t, mustOK(t, s, request{path: inst + "/rendered", query: "window=0,1,linear", accept: []string{"image/png"}}), "image/png")
	if levels := grayLevels(img); len(levels) != 2 || !levels[0] || !levels[255] {
		t.Errorf("window=0,1 gave levels %v, want only 0 and 255", levels)
	}

	// Series level renders the first instance; frames render separately.
	mfSeries := "studies/" + studyA + "/series/" + seriesA2
	mf := mfSeries + "/instances/" + instA2
	seriesPNG := mustOK(t, s, request{path: mfSeries + "/rendered", accept: []string{"image/png"}}).Body.Bytes()
	frame1 := mustOK(t, s, request{path: mf + "/frames/1/rendered", accept: []string{"image/png"}}).Body.Bytes()
	frame2 := mustOK(t, s, request{path: mf + "/frames/2/rendered", accept: []string{"image/png"}}).Body.Bytes()
	if !bytes.Equal(seriesPNG, frame1) {
		t.Error("series rendered differs from its first instance's first frame")
	}
	if bytes.Equal(frame1, frame2) {
		t.Error("frames 1 and 2 render the same")
	}
	decodeImage(t, mustOK(t, s, request{path: "studies/" + studyA + "/rendered"}), "image/jpeg")
	decodeImage(t, mustOK(t, s, request{path: mf + "/frames/3/thumbnail", accept: []string{"image/png"}}), "image/png")

	// Other stored forms render too.
	for _, p := range []string{
		"studies/" + studyA + "/series/" + seriesA3 + "/instances/" + instA3,  // JPEG Baseline
		"studies/" + studyA + "/series/" + seriesA4 + "/instances/" + instA4,  // implicit VR
		"studies/" + studyA + "/series/" + seriesA4 + "/instances/" + instA4b, // big endian
	} {
		img := decodeImage(t, mustOK(t, s, request{path: p + "/rendered", accept: []string{"image/png"}}), "image/png")
		if n := len(grayLevels(img)); n < 10 {
			t.Errorf("%s: %d gray levels", p, n)
		}
	}

	for _, q := range []string{"viewport=abc", "viewport=0,10", "viewport=1,2,3,4,5,6", "quality=0", "quality=101", "window=1", "window=a,b", "window=10,0", "window=10,20,cubic"} {
		mustFail(t, s, request{path: inst + "/rendered", query: q}, http.StatusBadRequest)
	}
	mustFail(t, s, request{path: mf + "/frames/1,2/rendered"}, http.StatusBadRequest)
	mustFail(t, s, request{path: mf + "/frames/9/rendered"}, http.StatusNotFound)
	for _, a := range []string{"image/gif", "application/dicom", `multipart/related; type="image/png"`} {
		mustFail(t, s, request{path: inst + "/rendered", accept: []string{a}}, http.StatusNotAcceptable)
	}
}

func TestDeflatedInstance(t *testing.T) {
	dir := t.TempDir()
	const st = "1.2.826.0.1.3680043.10.7"
	writeDeflated(t, dir, "deflated.dcm", fixture{PatientID: "PAT-Z", StudyUID: st, SeriesUID: st + ".1", SeriesNumber: 1, SOPUID: st + ".1.1", InstanceNumber: 1, Frames: 2})
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Count() != 1 {
		t.Fatalf("Count = %d, problems %v", s.Count(), s.Problems())
	}
	inst := "studies/" + st + "/series/" + st + ".1/instances/" + st + ".1.1"
	parts := readParts(t, mustOK(t, s, request{path: inst + "/frames/2"}), "application/octet-stream")
	if len(parts) != 1 || !bytes.Equal(parts[0].body, expectedFrame(16, 24, 1)) {
		t.Error("deflated frame 2 differs from the stored pixels")
	}
	list, err := dicomjson.DecodeList(mustOK(t, s, request{path: inst + "/metadata"}).Body.Bytes())
	if err != nil || len(list) != 1 || list[0].String(dicomjson.TagPatientID) != "PAT-Z" {
		t.Fatalf("deflated metadata = %v, %v", list, err)
	}
	decodeImage(t, mustOK(t, s, request{path: inst + "/rendered", accept: []string{"image/png"}}), "image/png")
	rec := mustOK(t, s, request{path: inst, accept: []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1.99`}})
	if n := len(readParts(t, rec, "application/dicom")); n != 1 {
		t.Errorf("parts = %d", n)
	}
}

func TestReplacedFileIsNotServed(t *testing.T) {
	s, dir := openTree(t)
	// Put study B's file where an instance of study A was indexed.
	other, err := os.ReadFile(filepath.Join(dir, "b/1.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "a/ct1.dcm")
	if err := os.WriteFile(target, other, 0o644); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(target, later, later); err != nil {
		t.Fatal(err)
	}
	inst := "studies/" + studyA + "/series/" + seriesA1 + "/instances/" + instA1a
	for _, suffix := range []string{"", "/metadata", "/frames/1", "/rendered"} {
		rec, err := do(t, s, request{path: inst + suffix})
		if err == nil || rec.Body.Len() != 0 {
			t.Errorf("%s: a replaced file was served (err %v, %d bytes)", suffix, err, rec.Body.Len())
		}
	}
}

// The folder source holds its files to the same contract as a PACS's
// answers: served only when their headers name the request's study and
// one of the patient's PatientIDs, whatever the path.
func TestRetrieveChecksStudyAndPatient(t *testing.T) {
	s, _ := openTree(t)
	for _, tc := range []struct {
		name     string
		path     string
		study    string
		patients []string
		any      bool
		want     int // 0: served
	}{
		{"the patient's study", "studies/" + studyA, studyA, []string{"PAT-1"}, false, 0},
		{"one of the patient's keys", "studies/" + studyA + "/metadata", studyA, []string{"X", "PAT-1"}, false, 0},
		{"unrestricted", "studies/" + studyB, studyB, nil, true, 0},
		{"another patient's study", "studies/" + studyB, studyB, []string{"PAT-1"}, false, 403},
		{"PatientID differing in case", "studies/" + studyC + "/metadata", studyC, []string{"PAT-1"}, false, 403},
		{"another patient's frames", "studies/" + studyB + "/series/" + seriesB1 + "/instances/" + instB1 + "/frames/1", studyB, []string{"PAT-1"}, false, 403},
		{"no keys at all", "studies/" + studyA, studyA, nil, false, 403},
		{"the token's study is not the path's", "studies/" + studyA, studyB, nil, true, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := wadopath.Parse(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			err = s.Retrieve(rec, httptest.NewRequest(http.MethodGet, "/x", nil), imagesource.Retrieval{
				Path: p, PublicBase: publicBase, StudyUID: tc.study, PatientIDs: toKeys(tc.patients), Unrestricted: tc.any})
			if tc.want == 0 {
				if err != nil || rec.Code != 200 || rec.Body.Len() == 0 {
					t.Fatalf("err %v, HTTP %d, %d bytes; want the answer", err, rec.Code, rec.Body.Len())
				}
				return
			}
			e, ok := imagesource.AsError(err)
			if !ok || e.Status != tc.want || !errors.Is(err, imagesource.ErrForeignObject) {
				t.Fatalf("err = %v, want %d", err, tc.want)
			}
			if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
				t.Errorf("something was written: %v %d bytes", rec.Header(), rec.Body.Len())
			}
		})
	}
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
