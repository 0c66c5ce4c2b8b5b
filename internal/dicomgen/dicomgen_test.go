package dicomgen

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// committedDir is the bundled demo set, relative to this package.
const committedDir = "../../examples/demo/studies"

// readTree returns every regular file under dir, keyed by slash path.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWriteDemoIsDeterministicAndMatchesCommittedFiles(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if _, err := WriteDemo(a); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteDemo(b); err != nil {
		t.Fatal(err)
	}
	ta, tb := readTree(t, a), readTree(t, b)
	if len(ta) != len(tb) {
		t.Fatalf("two runs wrote %d and %d files", len(ta), len(tb))
	}
	for name, data := range ta {
		if !bytes.Equal(data, tb[name]) {
			t.Errorf("%s differs between two runs", name)
		}
	}

	committed := readTree(t, committedDir)
	for name, data := range ta {
		got, ok := committed[name]
		switch {
		case !ok:
			t.Errorf("%s missing from %s: run go run ./examples/demo/gen -out examples/demo/studies", name, committedDir)
		case !bytes.Equal(got, data):
			t.Errorf("%s in %s is stale: run go run ./examples/demo/gen -out examples/demo/studies", name, committedDir)
		}
	}
	for name := range committed {
		if _, ok := ta[name]; !ok {
			t.Errorf("%s in %s is not produced by the generator (remove it, or regenerate with -clean)", name, committedDir)
		}
	}
}

func TestDemoDataSet(t *testing.T) {
	dir := t.TempDir()
	m, err := WriteDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(dir, m); err != nil {
		t.Fatal(err)
	}
	if got := len(m.StudyUIDs()); got != 6 {
		t.Errorf("%d studies, want 6", got)
	}
	if got := len(m.SeriesUIDs()); got != 9 {
		t.Errorf("%d series, want 9", got)
	}
	if len(m) != 22 {
		t.Errorf("%d instances, want 22", len(m))
	}

	// Exact patient matching: the decoys must not leak into each other.
	for id, wantStudies := range map[string]int{
		DemoPatientSmart:       2,
		DemoPatientMRN:         2,
		DemoPatientPrefixDecoy: 1,
		DemoPatientCaseDecoy:   1,
	} {
		if got := len(m.ForPatient(id).StudyUIDs()); got != wantStudies {
			t.Errorf("patient %q has %d studies, want %d", id, got, wantStudies)
		}
	}
	if !strings.HasPrefix(DemoPatientPrefixDecoy, DemoPatientMRN) || !strings.EqualFold(DemoPatientCaseDecoy, DemoPatientMRN) || DemoPatientCaseDecoy == DemoPatientMRN {
		t.Error("decoy patient IDs no longer decoy SIA-MRN-0001")
	}

	var modalities, classes []string
	var total int64
	for _, in := range m {
		modalities = append(modalities, in.Modality)
		classes = append(classes, in.SOPClassUID)
		fi, err := os.Stat(filepath.Join(dir, in.File))
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
		if filepath.Ext(in.File) != ".dcm" {
			t.Errorf("%s: extension is not .dcm", in.File)
		}
	}
	for _, want := range []string{"CT", "MR"} {
		if !slices.Contains(modalities, want) {
			t.Errorf("no %s instance", want)
		}
	}
	for _, want := range []string{CTImageStorage, MRImageStorage, MultiFrameGrayscaleWordSCImageStorage} {
		if !slices.Contains(classes, want) {
			t.Errorf("no instance of SOP class %s", want)
		}
	}
	if total > 1<<20 {
		t.Errorf("demo set is %d bytes, want under 1 MiB", total)
	}

	manifest, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(manifest), "\n"), "\n")
	if len(lines) != len(m)+1 || lines[0] != strings.Join(manifestHeader, "\t") {
		t.Fatalf("manifest has %d lines (header %q), want header + %d", len(lines), lines[0], len(m))
	}
	first := strings.Split(lines[1], "\t")
	if want := []string{DemoPatientSmart, "Kshlerin^Danae", m[0].StudyUID, m[0].SeriesUID, "CT", "4", m[0].SOPInstanceUID, "1", m[0].File}; !slices.Equal(first, want) {
		t.Errorf("manifest row 1 = %q, want %q", first, want)
	}
}

// parse reads one file of the demo set (pixel data skipped) and returns a
// lookup of its string attributes; absent attributes read as "<absent>".
func parse(t *testing.T, name string) func(tag.Tag) string {
	t.Helper()
	ds, err := dicom.ParseFile(name, nil, dicom.SkipPixelData())
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	return func(tg tag.Tag) string {
		e, err := ds.FindElementByTag(tg)
		if err != nil {
			return "<absent>"
		}
		if v, ok := e.Value.GetValue().([]string); ok {
			return strings.Join(v, `\`)
		}
		return e.Value.String()
	}
}

func TestDemoAttributes(t *testing.T) {
	dir := t.TempDir()
	m, err := WriteDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	byStudy := map[string]Instance{}
	for _, in := range m {
		if _, ok := byStudy[in.StudyUID]; !ok {
			byStudy[in.StudyUID] = in
		}
	}
	var withTZ, withoutDescription, multiFrame int
	for uid, in := range byStudy {
		get := parse(t, filepath.Join(dir, in.File))
		if get(tag.TimezoneOffsetFromUTC) == "+0200" {
			withTZ++
		}
		if get(tag.StudyDescription) == "<absent>" {
			withoutDescription++
		}
		for _, tg := range []tag.Tag{tag.StudyDate, tag.StudyTime, tag.AccessionNumber, tag.SeriesNumber, tag.InstanceNumber, tag.WindowCenter, tag.WindowWidth, tag.PhotometricInterpretation} {
			if v := get(tg); v == "<absent>" || v == "" {
				t.Errorf("study %s: %s is empty", uid, tag.DebugString(tg))
			}
		}
		if get(tag.TransferSyntaxUID) != ExplicitVRLittleEndian {
			t.Errorf("study %s: transfer syntax %s", uid, get(tag.TransferSyntaxUID))
		}
	}
	if withTZ != 1 || withoutDescription != 1 {
		t.Errorf("studies with TimezoneOffsetFromUTC: %d, without StudyDescription: %d; want 1 and 1", withTZ, withoutDescription)
	}

	smart := m.ForPatient(DemoPatientSmart)[0]
	get := parse(t, filepath.Join(dir, smart.File))
	for tg, want := range map[tag.Tag]string{
		tag.PatientName:          "Kshlerin^Danae",
		tag.PatientBirthDate:     "19640513",
		tag.IssuerOfPatientID:    DemoIssuer,
		tag.ImagePositionPatient: `-125\-125\0`,
		tag.PixelSpacing:         `3.90625\3.90625`,
		tag.RescaleIntercept:     "-1024",
		tag.BitsStored:           "[12]",
	} {
		if got := get(tg); got != want {
			t.Errorf("%s = %q, want %q", tag.DebugString(tg), got, want)
		}
	}

	for _, in := range m {
		if in.Frames > 1 {
			multiFrame++
			get := parse(t, filepath.Join(dir, in.File))
			if get(tag.NumberOfFrames) != "8" || get(tag.SOPClassUID) != MultiFrameGrayscaleWordSCImageStorage {
				t.Errorf("multi-frame instance: NumberOfFrames %s, SOP class %s", get(tag.NumberOfFrames), get(tag.SOPClassUID))
			}
		}
	}
	if multiFrame != 1 {
		t.Errorf("%d multi-frame instances, want 1", multiFrame)
	}
}

// framesOf decodes the pixel data of one file into per-frame samples.
func framesOf(t *testing.T, name string) [][]uint16 {
	t.Helper()
	ds, err := dicom.ParseFile(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ds.FindElementByTag(tag.PixelData)
	if err != nil {
		t.Fatal(err)
	}
	info := dicom.MustGetPixelDataInfo(e.Value)
	var out [][]uint16
	for _, f := range info.Frames {
		px, ok := f.NativeData.RawDataSlice().([]uint16)
		if !ok {
			t.Fatalf("%s: frame is not 16-bit", name)
		}
		out = append(out, px)
	}
	return out
}

func TestDemoPixelsReadBack(t *testing.T) {
	dir := t.TempDir()
	m, err := WriteDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Expected pixels come from the same definitions the files were made from.
	series := map[string]Series{}
	for _, st := range DemoStudies() {
		st, err := normalizeStudy(st)
		if err != nil {
			t.Fatal(err)
		}
		for _, se := range st.Series {
			series[se.UID] = se
		}
	}
	var firstImages [][]uint16
	done := map[string]bool{}
	for _, in := range m {
		if done[in.SeriesUID] {
			continue
		}
		done[in.SeriesUID] = true
		se := series[in.SeriesUID]
		frames := framesOf(t, filepath.Join(dir, in.File))
		if len(frames) != in.Frames {
			t.Fatalf("%s: %d frames, want %d", in.File, len(frames), in.Frames)
		}
		lo, hi, _ := valueRange(se)
		for f, px := range frames {
			want := Pattern(se.Pattern, se.Rows, se.Cols, f, se.Instances*se.Frames, lo, hi)
			if !slices.Equal(px, want) {
				t.Errorf("%s frame %d: pixels differ from the pattern", in.File, f+1)
			}
			if slices.Max(px) > 4095 {
				t.Errorf("%s frame %d: value above 12 bits", in.File, f+1)
			}
			if slices.Min(px) == slices.Max(px) {
				t.Errorf("%s frame %d: flat image", in.File, f+1)
			}
			if f > 0 && slices.Equal(px, frames[f-1]) {
				t.Errorf("%s: frame %d equals frame %d", in.File, f+1, f)
			}
		}
		firstImages = append(firstImages, frames[0])
	}
	for i := range firstImages {
		for j := i + 1; j < len(firstImages); j++ {
			if slices.Equal(firstImages[i], firstImages[j]) {
				t.Errorf("series %d and %d start with the same image", i+1, j+1)
			}
		}
	}
}

func TestWriteStudySpec(t *testing.T) {
	dir := t.TempDir()
	spec := StudySpec{
		PatientID: "BENCH-1", StudyUID: "2.25.1234.7",
		Series: 2, InstancesPerSeries: 3, Rows: 32, Cols: 48, Frames: 3,
	}
	m, err := WriteStudy(dir, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 6 || len(m.SeriesUIDs()) != 2 || len(m.StudyUIDs()) != 1 {
		t.Fatalf("got %d instances in %d series, want 6 in 2", len(m), len(m.SeriesUIDs()))
	}
	if err := Verify(dir, m); err != nil {
		t.Fatal(err)
	}
	if m[5].SOPInstanceUID != "2.25.1234.7.2.3" || m[5].File != "2.25.1234.7/se02/0003.dcm" {
		t.Errorf("last instance %s in %s", m[5].SOPInstanceUID, m[5].File)
	}
	var pixels int64
	for _, in := range m {
		fi, err := os.Stat(filepath.Join(dir, in.File))
		if err != nil {
			t.Fatal(err)
		}
		px := int64(in.Rows * in.Cols * in.Frames * 2)
		if fi.Size() < px || fi.Size() > px+2048 {
			t.Errorf("%s is %d bytes for %d bytes of pixels", in.File, fi.Size(), px)
		}
		pixels += px
	}
	if pixels != spec.PixelBytes() {
		t.Errorf("PixelBytes() = %d, files hold %d", spec.PixelBytes(), pixels)
	}
	get := parse(t, filepath.Join(dir, m[0].File))
	if get(tag.PatientID) != "BENCH-1" || get(tag.Modality) != "OT" || get(tag.NumberOfFrames) != "3" {
		t.Errorf("PatientID %s, Modality %s, NumberOfFrames %s", get(tag.PatientID), get(tag.Modality), get(tag.NumberOfFrames))
	}

	// Single-frame MR with defaults: 64x64, one instance.
	m, err = WriteStudy(dir, StudySpec{PatientID: "BENCH-2", StudyUID: "2.25.1234.8", Modality: "MR", Dir: "mr"})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || m[0].SOPClassUID != MRImageStorage || m[0].Rows != 64 || m[0].File != "mr/se01/0001.dcm" {
		t.Errorf("default MR study: %+v", m)
	}
	if err := Verify(dir, m); err != nil {
		t.Fatal(err)
	}
}

func TestWriteStudyRejectsBadSpecs(t *testing.T) {
	long := "2.25." + strings.Repeat("1", 57) // 62 chars: no room for .<series>.<instance>
	for name, spec := range map[string]StudySpec{
		"no patient":            {StudyUID: "2.25.1"},
		"no study uid":          {PatientID: "P"},
		"letters in uid":        {PatientID: "P", StudyUID: "2.25.abc"},
		"leading zero":          {PatientID: "P", StudyUID: "2.25.01"},
		"empty component":       {PatientID: "P", StudyUID: "2.25..1"},
		"instance uid too long": {PatientID: "P", StudyUID: long},
		"negative rows":         {PatientID: "P", StudyUID: "2.25.1", Rows: -1},
		"escaping dir":          {PatientID: "P", StudyUID: "2.25.1", Dir: "../out"},
		"absolute dir":          {PatientID: "P", StudyUID: "2.25.1", Dir: "/tmp/x"},
		"unclean dir":           {PatientID: "P", StudyUID: "2.25.1", Dir: "a//b"},
		"single-frame US":       {PatientID: "P", StudyUID: "2.25.1", Modality: "US"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := WriteStudy(dir, spec); err == nil {
				t.Fatal("no error")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("wrote %d entries despite the error", len(entries))
			}
		})
	}
}

func TestManifestTSVRefusesTabs(t *testing.T) {
	m := Manifest{{PatientID: "A\tB", File: "x.dcm"}}
	var buf bytes.Buffer
	if err := m.WriteTSV(&buf); err == nil {
		t.Fatal("a tab inside a field was written")
	}
}

func TestVerifyDetectsMismatch(t *testing.T) {
	dir := t.TempDir()
	m, err := WriteStudy(dir, StudySpec{PatientID: "P1", StudyUID: "2.25.99"})
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(m)
	bad[0].PatientID = "P2"
	if err := Verify(dir, bad); err == nil || !strings.Contains(err.Error(), "P2") {
		t.Errorf("Verify with a wrong patient ID: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, m[0].File), []byte("not dicom"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Verify(dir, m); err == nil {
		t.Error("Verify accepted a file that is not DICOM")
	}
}

// BenchmarkWriteStudy reports generation throughput for a 64 MiB study
// (512×512, 128 frames), the building block of gigabyte benchmark studies.
func BenchmarkWriteStudy(b *testing.B) {
	spec := StudySpec{PatientID: "BENCH", StudyUID: "2.25.4242", Series: 2, InstancesPerSeries: 16, Rows: 512, Cols: 512, Frames: 4}
	b.SetBytes(spec.PixelBytes())
	for i := 0; i < b.N; i++ {
		if _, err := WriteStudy(b.TempDir(), spec); err != nil {
			b.Fatal(err)
		}
	}
}
