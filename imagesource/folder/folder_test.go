package folder

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/pacskey"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const (
	studyA   = "1.2.826.0.1.3680043.10.1.1"
	seriesA1 = studyA + ".1"
	seriesA2 = studyA + ".2"
	seriesA3 = studyA + ".3"
	seriesA4 = studyA + ".4"
	instA1a  = seriesA1 + ".1"
	instA1b  = seriesA1 + ".2"
	instA1c  = seriesA1 + ".3"
	instA2   = seriesA2 + ".1" // multi-frame, 3 frames
	instA3   = seriesA3 + ".1" // JPEG Baseline
	instA4   = seriesA4 + ".1" // Implicit VR Little Endian
	instA4b  = seriesA4 + ".2" // Explicit VR Big Endian

	studyB   = "1.2.826.0.1.3680043.10.1.2"
	seriesB1 = studyB + ".1"
	instB1   = seriesB1 + ".1"
	studyC   = "1.2.826.0.1.3680043.10.1.3"
	studyD   = "1.2.826.0.1.3680043.10.1.4" // files disagree on PatientID

	multiFrames = 3
)

// buildTree writes the shared fixture folder.
func buildTree(t testing.TB, dir string) {
	a := func(series string, n int, sop string) fixture {
		return fixture{PatientID: "PAT-1", StudyUID: studyA, StudyDate: "20240102", SeriesUID: series, SeriesNumber: n, SOPUID: sop}
	}
	f := a(seriesA1, 1, instA1b)
	f.InstanceNumber, f.ICCSize = 2, 2000
	writeInstance(t, dir, "a/ct2.dcm", f)
	f = a(seriesA1, 1, instA1a)
	f.InstanceNumber = 1
	writeInstance(t, dir, "a/ct1.dcm", f)
	f = a(seriesA1, 1, instA1c)
	f.InstanceNumber = 3
	writeInstance(t, dir, "a/deep/er/ct3.dcm", f)
	f = a(seriesA2, 2, instA2)
	f.Modality, f.InstanceNumber, f.Frames = "MR", 1, multiFrames
	writeInstance(t, dir, "a/mr.dcm", f)
	f = a(seriesA3, 3, instA3)
	f.Modality, f.InstanceNumber, f.JPEG = "OT", 1, true
	writeInstance(t, dir, "a/jpeg.dcm", f)
	f = a(seriesA4, 4, instA4)
	f.InstanceNumber, f.TS = 1, tsImplicitLE
	writeInstance(t, dir, "a/implicit.dcm", f)
	f = a(seriesA4, 4, instA4b)
	f.InstanceNumber, f.TS = 2, tsExplicitBE
	writeInstance(t, dir, "a/bigendian.dcm", f)

	writeInstance(t, dir, "b/1.dcm", fixture{PatientID: "PAT-10", StudyUID: studyB, StudyDate: "20230101", SeriesUID: seriesB1, SeriesNumber: 1, SOPUID: instB1, InstanceNumber: 1})
	writeInstance(t, dir, "c/1.dcm", fixture{PatientID: "pat-1", StudyUID: studyC, StudyDate: "20250101", SeriesUID: studyC + ".1", SeriesNumber: 1, SOPUID: studyC + ".1.1", InstanceNumber: 1})
	writeInstance(t, dir, "d/1.dcm", fixture{PatientID: "PAT-1", StudyUID: studyD, StudyDate: "20250101", SeriesUID: studyD + ".1", SeriesNumber: 1, SOPUID: studyD + ".1.1", InstanceNumber: 1})
	writeInstance(t, dir, "d/2.dcm", fixture{PatientID: "PAT-2", StudyUID: studyD, StudyDate: "20250101", SeriesUID: studyD + ".1", SeriesNumber: 1, SOPUID: studyD + ".1.2", InstanceNumber: 2})

	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "notes.txt"), []byte(strings.Repeat("not a DICOM file\n", 20)), 0o644))
	must(os.WriteFile(filepath.Join(dir, "empty.dcm"), nil, 0o644))
	whole, err := os.ReadFile(filepath.Join(dir, "b/1.dcm"))
	must(err)
	must(os.WriteFile(filepath.Join(dir, "truncated.dcm"), whole[:300], 0o644))
}

// openTree opens a Source on a fresh copy of the fixture folder.
func openTree(t testing.TB) (*Source, string) {
	t.Helper()
	dir := t.TempDir()
	buildTree(t, dir)
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s, dir
}

func TestOpenIndexesAndReportsProblems(t *testing.T) {
	s, _ := openTree(t)
	// Study A: 3 + 1 + 1 + 2 instances; B and C: 1 each; D is left out.
	if got := s.Count(); got != 9 {
		t.Errorf("Count = %d, want 9", got)
	}
	probs := strings.Join(s.Problems(), "\n")
	for _, want := range []string{"notes.txt: ", "empty.dcm: ", "truncated.dcm: ", "d/1.dcm: ", "d/2.dcm: "} {
		if !strings.Contains(probs, want) {
			t.Errorf("Problems lack %q:\n%s", want, probs)
		}
	}
	for _, p := range s.Problems() {
		if strings.HasPrefix(p, "a/") || strings.HasPrefix(p, "b/") || strings.HasPrefix(p, "c/") {
			t.Errorf("good file reported as a problem: %s", p)
		}
	}
}

func TestOpenMissingRoot(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "nope"), nil); err == nil {
		t.Fatal("Open of a missing root succeeded")
	}
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(f, nil); err == nil {
		t.Fatal("Open of a regular file succeeded")
	}
}

func TestOpenEmptyFolder(t *testing.T) {
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.FindStudies(context.Background(), imagesource.Query{All: true})
	if err != nil || len(got) != 0 {
		t.Fatalf("FindStudies on an empty folder = %v, %v", got, err)
	}
}

func studyUIDs(studies []imagesource.Study) []string {
	var out []string
	for _, st := range studies {
		out = append(out, st.Attributes.String(dicomjson.TagStudyInstanceUID))
	}
	return out
}

func TestFindStudiesExactPatientID(t *testing.T) {
	s, _ := openTree(t)
	ctx := context.Background()
	cases := []struct {
		name string
		q    imagesource.Query
		want []string
	}{
		{"all, by date", imagesource.Query{All: true}, []string{studyB, studyA, studyC}},
		{"exact id", imagesource.Query{PatientIDs: []pacskey.PatientKey{"PAT-1"}}, []string{studyA}},
		{"prefix does not match longer id", imagesource.Query{PatientIDs: []pacskey.PatientKey{"PAT"}}, nil},
		{"longer id only", imagesource.Query{PatientIDs: []pacskey.PatientKey{"PAT-10"}}, []string{studyB}},
		{"case variant", imagesource.Query{PatientIDs: []pacskey.PatientKey{"pat-1"}}, []string{studyC}},
		{"no ids", imagesource.Query{}, nil},
		{"several ids", imagesource.Query{PatientIDs: []pacskey.PatientKey{"PAT-10", "PAT-1"}}, []string{studyB, studyA}},
		{"study filter", imagesource.Query{PatientIDs: []pacskey.PatientKey{"PAT-1"}, StudyUIDs: []string{studyB}}, nil},
		{"study filter with all", imagesource.Query{All: true, StudyUIDs: []string{studyC}}, []string{studyC}},
		{"conflicting study never shown", imagesource.Query{PatientIDs: []pacskey.PatientKey{"PAT-2"}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.FindStudies(ctx, c.q)
			if err != nil {
				t.Fatal(err)
			}
			if g := studyUIDs(got); !slices.Equal(g, c.want) {
				t.Errorf("studies = %v, want %v", g, c.want)
			}
		})
	}
}

func TestFindStudiesAttributes(t *testing.T) {
	s, _ := openTree(t)
	got, err := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"PAT-1"}})
	if err != nil || len(got) != 1 {
		t.Fatalf("FindStudies = %v, %v", got, err)
	}
	st := got[0]
	a := st.Attributes
	checks := map[string]string{
		dicomjson.TagPatientID:              "PAT-1",
		dicomjson.TagPatientName:            "Doe^Jane",
		dicomjson.TagStudyDate:              "20240102",
		dicomjson.TagStudyTime:              "101500",
		dicomjson.TagAccessionNumber:        "ACC-PAT-1",
		dicomjson.TagStudyDescription:       "Study of PAT-1",
		dicomjson.TagReferringPhysicianName: "House^Gregory",
		dicomjson.TagPatientBirthDate:       "19700101",
		dicomjson.TagPatientSex:             "F",
		dicomjson.TagStudyID:                "S1",
	}
	for tg, want := range checks {
		if g := a.String(tg); g != want {
			t.Errorf("study %s = %q, want %q", tg, g, want)
		}
	}
	if e := a.Get(dicomjson.TagPatientName); e == nil || e.VR != "PN" {
		t.Errorf("PatientName element = %+v", e)
	}
	if n, _ := a.Int(dicomjson.TagNumberOfStudyRelatedSeries); n != 4 {
		t.Errorf("NumberOfStudyRelatedSeries = %d, want 4", n)
	}
	if n, _ := a.Int(dicomjson.TagNumberOfStudyRelatedInst); n != 7 {
		t.Errorf("NumberOfStudyRelatedInstances = %d, want 7", n)
	}
	if m := a.Strings(dicomjson.TagModalitiesInStudy); !slices.Equal(m, []string{"CT", "MR", "OT"}) {
		t.Errorf("ModalitiesInStudy = %v", m)
	}
	if len(st.Series) != 4 {
		t.Fatalf("series = %d, want 4", len(st.Series))
	}
	var order []string
	for _, se := range st.Series {
		order = append(order, se.Attributes.String(dicomjson.TagSeriesInstanceUID))
	}
	if want := []string{seriesA1, seriesA2, seriesA3, seriesA4}; !slices.Equal(order, want) {
		t.Errorf("series order = %v, want %v", order, want)
	}
	s1 := st.Series[0]
	if n, _ := s1.Attributes.Int(dicomjson.TagNumberOfSeriesRelatedInst); n != 3 {
		t.Errorf("NumberOfSeriesRelatedInstances = %d, want 3", n)
	}
	if g := s1.Attributes.String(dicomjson.TagModality); g != "CT" {
		t.Errorf("series Modality = %q", g)
	}
	if g := s1.Attributes.String(dicomjson.TagSeriesDescription); g != "Series 1" {
		t.Errorf("SeriesDescription = %q", g)
	}
	var insts []string
	for _, in := range s1.Instances {
		insts = append(insts, in.String(dicomjson.TagSOPInstanceUID))
		if in.String(dicomjson.TagSOPClassUID) != ctImageStorage {
			t.Errorf("instance SOPClassUID = %q", in.String(dicomjson.TagSOPClassUID))
		}
	}
	if want := []string{instA1a, instA1b, instA1c}; !slices.Equal(insts, want) {
		t.Errorf("instance order = %v, want %v (by InstanceNumber)", insts, want)
	}
	if n, _ := st.Series[1].Instances[0].Int(dicomjson.TagNumberOfFrames); n != multiFrames {
		t.Errorf("NumberOfFrames = %d, want %d", n, multiFrames)
	}

	// The answer is a copy: changing it does not change the next answer.
	a.SetString(dicomjson.TagPatientID, "LO", "CHANGED")
	st.Series[0].Attributes.Get(dicomjson.TagModality).Value[0] = "XX"
	again, _ := s.FindStudies(context.Background(), imagesource.Query{PatientIDs: []pacskey.PatientKey{"PAT-1"}})
	if len(again) != 1 || again[0].Series[0].Attributes.String(dicomjson.TagModality) != "CT" {
		t.Error("a caller's change to the answer leaked into the index")
	}
}

func TestFindStudiesCancelled(t *testing.T) {
	s, _ := openTree(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.FindStudies(ctx, imagesource.Query{All: true}); err == nil {
		t.Fatal("FindStudies with a cancelled context succeeded")
	}
}

func BenchmarkFindStudies(b *testing.B) {
	dir := b.TempDir()
	const studies = 200
	for i := 0; i < studies; i++ {
		st := studyA + ".9." + itoa(i+1)
		for j := 0; j < 3; j++ {
			writeInstance(b, dir, filepath.Join(itoa(i), itoa(j)+".dcm"), fixture{
				PatientID: "BENCH-" + itoa(i%50), StudyUID: st, StudyDate: "20240101",
				SeriesUID: st + ".1", SeriesNumber: 1, SOPUID: st + ".1." + itoa(j+1), InstanceNumber: j + 1,
				Rows: 8, Cols: 8,
			})
		}
	}
	s, err := Open(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	q := imagesource.Query{PatientIDs: []pacskey.PatientKey{"BENCH-7"}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got, err := s.FindStudies(ctx, q)
		if err != nil || len(got) != studies/50 {
			b.Fatalf("FindStudies = %d studies, %v", len(got), err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	for i := 0; i < 100; i++ {
		st := studyA + ".8." + itoa(i+1)
		writeInstance(b, dir, itoa(i)+".dcm", fixture{
			PatientID: "BENCH", StudyUID: st, SeriesUID: st + ".1", SOPUID: st + ".1.1",
			Rows: 256, Cols: 256,
		})
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, err := Open(dir, nil)
		if err != nil || s.Count() != 100 {
			b.Fatalf("Open = %v", err)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// A file that is not DICOM at all (notes, a manifest) is counted and logged
// at debug; a broken DICOM file is a warning an operator should see.
func TestOpenWarnsOnlyAboutBrokenDICOM(t *testing.T) {
	dir := t.TempDir()
	buildTree(t, dir)
	core, logs := observer.New(zapcore.DebugLevel)
	if _, err := Open(dir, zap.New(core)); err != nil {
		t.Fatalf("Open: %v", err)
	}
	var warned []string
	for _, e := range logs.FilterLevelExact(zapcore.WarnLevel).All() {
		warned = append(warned, e.ContextMap()["file"].(string))
	}
	got := strings.Join(warned, " ")
	if strings.Contains(got, "notes.txt") {
		t.Errorf("warned about a text file beside the images: %v", warned)
	}
	if !strings.Contains(got, "truncated.dcm") {
		t.Errorf("no warning about a truncated DICOM file: %v", warned)
	}
	idx := logs.FilterMessage("folder image source indexed").All()
	if len(idx) != 1 || idx[0].ContextMap()["not_dicom"] == int64(0) {
		t.Errorf("index line %v lacks the not_dicom count", idx)
	}
}
