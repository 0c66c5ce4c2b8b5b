// Package dicomgen writes synthetic DICOM Part 10 studies: the bundled demo
// set under examples/demo/studies and, for tests and benchmarks, studies of
// any size generated on the fly.
//
// Output is deterministic: the same input gives byte-identical files (fixed
// UIDs, fixed dates, no clock, no randomness). Every instance is written in
// Explicit VR Little Endian with 16-bit MONOCHROME2 native pixels (12 bits
// stored) that carry a pattern which differs per series and per slice or
// frame, so a viewer shows something and tests can tell frames apart.
//
// Typical uses:
//
//	m, err := dicomgen.WriteDemo(t.TempDir())          // the bundled demo set
//	m, err := dicomgen.WriteStudy(dir, dicomgen.StudySpec{ // a large study
//		PatientID: "BENCH-1", StudyUID: "2.25.1234.1",
//		Series: 4, InstancesPerSeries: 128, Rows: 512, Cols: 512, Frames: 4,
//	}) // 4*128*4 frames of 512 KiB each: 1 GiB of pixel data
//
// The richer Study/Series model (WriteStudies) controls every attribute the
// demo varies; StudySpec is the short form for uniform synthetic studies.
package dicomgen

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// UIDs of the SOP classes and transfer syntax the generator writes.
const (
	// CTImageStorage is the SOP class of single-frame CT instances.
	CTImageStorage = "1.2.840.10008.5.1.4.1.1.2"
	// MRImageStorage is the SOP class of single-frame MR instances.
	MRImageStorage = "1.2.840.10008.5.1.4.1.1.4"
	// MultiFrameGrayscaleWordSCImageStorage is the SOP class of multi-frame
	// instances (any series with Frames > 1).
	MultiFrameGrayscaleWordSCImageStorage = "1.2.840.10008.5.1.4.1.1.7.3"
	// ExplicitVRLittleEndian is the transfer syntax of every file.
	ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"

	// UIDRoot is the fixed root of every UID the demo set uses, and of the
	// implementation class UID in each file's meta header.
	UIDRoot = "2.25.2718281828459045235360287"
	// ImplementationClassUID identifies this generator in the file meta
	// header (0002,0012).
	ImplementationClassUID = UIDRoot + ".0.1"
	// ImplementationVersionName is written to (0002,0013).
	ImplementationVersionName = "SIA_DICOMGEN_1"

	// ManifestFile is the name of the manifest WriteDemo writes next to the
	// studies.
	ManifestFile = "MANIFEST.tsv"
)

// Patient holds the patient-level attributes written to every instance.
type Patient struct {
	// ID is PatientID (0010,0020). Required.
	ID string
	// Name is PatientName (0010,0010) in DICOM PN form ("Family^Given").
	Name string
	// BirthDate is PatientBirthDate (0010,0030), YYYYMMDD; may be empty.
	BirthDate string
	// Sex is PatientSex (0010,0040): "F", "M", "O" or empty.
	Sex string
	// Issuer is IssuerOfPatientID (0010,0021); omitted when empty. When set,
	// TypeOfPatientID (0010,0022) is written as "TEXT".
	Issuer string
}

// Study is one study to write.
type Study struct {
	Patient Patient
	// UID is StudyInstanceUID. Required; series UIDs default to UID.<n>.
	UID string
	// Dir is the study's directory, slash-separated and relative to the
	// output directory (e.g. "p1-kshlerin/ct-chest"). Defaults to UID.
	Dir string
	// ID is StudyID (0020,0010), at most 16 characters.
	ID string
	// AccessionNumber is (0008,0050), at most 16 characters.
	AccessionNumber string
	// Date and Time are StudyDate (YYYYMMDD) and StudyTime (HHMMSS[.F]).
	// They default to 20240101 and 120000.
	Date, Time string
	// TimezoneOffset is TimezoneOffsetFromUTC (0008,0201), e.g. "+0200";
	// omitted when empty.
	TimezoneOffset string
	// Description is StudyDescription (0008,1030); omitted when empty.
	Description string
	// BodyPart is BodyPartExamined (0018,0015); omitted when empty.
	BodyPart string
	// ProcedureCode, when its Value is set, is written as a one-item
	// ProcedureCodeSequence (0008,1032).
	ProcedureCode Code
	// Series are the study's series, in order.
	Series []Series
}

// Code is a coded entry (CodeValue, CodingSchemeDesignator, CodeMeaning).
type Code struct {
	Value, Scheme, Meaning string
}

// Series is one series of a Study.
type Series struct {
	// UID is SeriesInstanceUID; defaults to <study UID>.<Number>.
	UID string
	// Number is SeriesNumber; defaults to the 1-based position in the study.
	Number int
	// Modality is (0008,0060): "CT", "MR", or for multi-frame series any
	// code (default "OT").
	Modality string
	// Description is SeriesDescription (0008,103E); omitted when empty.
	Description string
	// Laterality is (0020,0060), "R" or "L"; needed when the body part is
	// paired (a knee). Omitted when empty.
	Laterality string
	// Instances is the number of instances (default 1).
	Instances int
	// Rows and Cols are the image size (default 64 each).
	Rows, Cols int
	// Frames is the number of frames per instance (default 1). With more than
	// one frame the series is written as Multi-frame Grayscale Word Secondary
	// Capture instances.
	Frames int
	// Pattern picks the image pattern (0-4; values wrap). Series differ when
	// their patterns differ.
	Pattern int
}

// Instance is one row of a Manifest: one written file.
type Instance struct {
	PatientID   string
	PatientName string
	StudyUID    string
	SeriesUID   string
	Modality    string
	// SeriesInstances is the number of instances in this instance's series.
	SeriesInstances int
	SOPInstanceUID  string
	SOPClassUID     string
	InstanceNumber  int
	Frames          int
	Rows, Cols      int
	// File is the path of the file, slash-separated, relative to the
	// output directory.
	File string
}

// Manifest lists written instances in the order they were written.
type Manifest []Instance

// ForPatient returns the instances whose PatientID equals id exactly
// (case-sensitive, no wildcards).
func (m Manifest) ForPatient(id string) Manifest {
	var out Manifest
	for _, in := range m {
		if in.PatientID == id {
			out = append(out, in)
		}
	}
	return out
}

// StudyUIDs returns the distinct study UIDs, in manifest order.
func (m Manifest) StudyUIDs() []string {
	return m.distinct(func(in Instance) string { return in.StudyUID })
}

// SeriesUIDs returns the distinct series UIDs, in manifest order.
func (m Manifest) SeriesUIDs() []string {
	return m.distinct(func(in Instance) string { return in.SeriesUID })
}

func (m Manifest) distinct(key func(Instance) string) []string {
	seen := map[string]bool{}
	var out []string
	for _, in := range m {
		k := key(in)
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// manifestHeader names the MANIFEST.tsv columns.
var manifestHeader = []string{
	"patient_id", "patient_name", "study_uid", "series_uid", "modality",
	"series_instances", "sop_instance_uid", "frames", "file",
}

// WriteTSV writes the manifest as tab-separated values with a header row:
// patient_id, patient_name, study_uid, series_uid, modality,
// series_instances, sop_instance_uid, frames, file.
func (m Manifest) WriteTSV(w io.Writer) error {
	bw := bufio.NewWriter(w)
	bw.WriteString(strings.Join(manifestHeader, "\t") + "\n")
	for _, in := range m {
		row := []string{
			in.PatientID, in.PatientName, in.StudyUID, in.SeriesUID, in.Modality,
			strconv.Itoa(in.SeriesInstances), in.SOPInstanceUID, strconv.Itoa(in.Frames), in.File,
		}
		for _, f := range row {
			if strings.ContainsAny(f, "\t\n") {
				return fmt.Errorf("dicomgen: manifest field %q contains a tab or newline", f)
			}
		}
		bw.WriteString(strings.Join(row, "\t") + "\n")
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("dicomgen: write manifest: %w", err)
	}
	return nil
}

// StudySpec is the short description of a uniform synthetic study, for tests
// and benchmarks that need a study of a given size.
type StudySpec struct {
	// PatientID is required.
	PatientID string
	// PatientName defaults to "Synthetic^Patient".
	PatientName string
	// StudyUID is required. Series are <StudyUID>.<n>, instances
	// <StudyUID>.<n>.<m>; the whole must fit in 64 characters.
	StudyUID string
	// Dir is the study directory relative to the output directory; defaults
	// to StudyUID.
	Dir string
	// Modality is "CT" (default) or "MR" for single-frame series; with
	// Frames > 1 the instances are multi-frame Secondary Capture and the
	// modality defaults to "OT".
	Modality string
	// Description is StudyDescription; omitted when empty.
	Description string
	// Series is the number of series (default 1).
	Series int
	// InstancesPerSeries defaults to 1.
	InstancesPerSeries int
	// Rows and Cols default to 64.
	Rows, Cols int
	// Frames per instance; defaults to 1.
	Frames int
}

// PixelBytes is the total pixel data the spec produces, in bytes (2 bytes
// per pixel). File sizes add about 1.5 KiB of header per instance.
func (s StudySpec) PixelBytes() int64 {
	s = s.withDefaults()
	return int64(s.Series) * int64(s.InstancesPerSeries) * int64(s.Frames) * int64(s.Rows) * int64(s.Cols) * 2
}

func (s StudySpec) withDefaults() StudySpec {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&s.Series, 1)
	def(&s.InstancesPerSeries, 1)
	def(&s.Rows, 64)
	def(&s.Cols, 64)
	def(&s.Frames, 1)
	if s.PatientName == "" {
		s.PatientName = "Synthetic^Patient"
	}
	return s
}

// Study expands the spec into the full model WriteStudies takes.
func (s StudySpec) Study() Study {
	s = s.withDefaults()
	st := Study{
		Patient:         Patient{ID: s.PatientID, Name: s.PatientName, Sex: "O"},
		UID:             s.StudyUID,
		Dir:             s.Dir,
		ID:              "1",
		AccessionNumber: "SYN-1",
		Description:     s.Description,
	}
	for i := 0; i < s.Series; i++ {
		st.Series = append(st.Series, Series{
			Modality:    s.Modality,
			Description: fmt.Sprintf("Synthetic series %d", i+1),
			Instances:   s.InstancesPerSeries,
			Rows:        s.Rows,
			Cols:        s.Cols,
			Frames:      s.Frames,
			Pattern:     i,
		})
	}
	return st
}

// WriteStudy writes one uniform synthetic study under dir and returns its
// manifest. No manifest file is written.
func WriteStudy(dir string, spec StudySpec) (Manifest, error) {
	return WriteStudies(dir, []Study{spec.Study()})
}

// WriteStudies writes every instance of studies under dir as
// <study Dir>/se<NN>/<NNNN>.dcm, creating directories as needed, and returns
// the manifest. Every study is checked before anything is written. Existing
// files with the same names are overwritten; other files are left alone. No
// manifest file is written.
func WriteStudies(dir string, studies []Study) (Manifest, error) {
	norm := make([]Study, len(studies))
	for i := range studies {
		st, err := normalizeStudy(studies[i])
		if err != nil {
			return nil, err
		}
		norm[i] = st
	}
	var m Manifest
	for _, st := range norm {
		for si := range st.Series {
			se := st.Series[si]
			seDir := path.Join(st.Dir, fmt.Sprintf("se%02d", se.Number))
			if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(seDir)), 0o755); err != nil {
				return nil, fmt.Errorf("dicomgen: %w", err)
			}
			for n := 1; n <= se.Instances; n++ {
				in := Instance{
					PatientID:       st.Patient.ID,
					PatientName:     st.Patient.Name,
					StudyUID:        st.UID,
					SeriesUID:       se.UID,
					Modality:        se.Modality,
					SeriesInstances: se.Instances,
					SOPInstanceUID:  se.UID + "." + strconv.Itoa(n),
					SOPClassUID:     sopClass(se),
					InstanceNumber:  n,
					Frames:          se.Frames,
					Rows:            se.Rows,
					Cols:            se.Cols,
					File:            path.Join(seDir, fmt.Sprintf("%04d.dcm", n)),
				}
				if err := writeFile(filepath.Join(dir, filepath.FromSlash(in.File)), st, se, in); err != nil {
					return nil, err
				}
				m = append(m, in)
			}
		}
	}
	return m, nil
}

func sopClass(se Series) string {
	switch {
	case se.Frames > 1:
		return MultiFrameGrayscaleWordSCImageStorage
	case se.Modality == "MR":
		return MRImageStorage
	default:
		return CTImageStorage
	}
}

// normalizeStudy applies defaults and checks the study.
func normalizeStudy(st Study) (Study, error) {
	if st.Patient.ID == "" {
		return st, errors.New("dicomgen: study has no patient ID")
	}
	if len(st.Patient.ID) > 64 {
		return st, fmt.Errorf("dicomgen: patient ID %q longer than 64 characters", st.Patient.ID)
	}
	if err := checkUID(st.UID); err != nil {
		return st, fmt.Errorf("dicomgen: study UID: %w", err)
	}
	if st.Dir == "" {
		st.Dir = st.UID
	}
	if path.IsAbs(st.Dir) || path.Clean(st.Dir) != st.Dir || st.Dir == "." || strings.HasPrefix(st.Dir, "../") || st.Dir == ".." || strings.Contains(st.Dir, `\`) {
		return st, fmt.Errorf("dicomgen: study dir %q must be a clean relative slash path", st.Dir)
	}
	if st.Date == "" {
		st.Date = "20240101"
	}
	if st.Time == "" {
		st.Time = "120000"
	}
	if len(st.ID) > 16 || len(st.AccessionNumber) > 16 {
		return st, errors.New("dicomgen: StudyID and AccessionNumber are limited to 16 characters")
	}
	if len(st.Series) == 0 {
		return st, fmt.Errorf("dicomgen: study %s has no series", st.UID)
	}
	series := make([]Series, len(st.Series))
	numbers := map[int]bool{}
	for i, se := range st.Series {
		if se.Number == 0 {
			se.Number = i + 1
		}
		if se.Number < 0 || numbers[se.Number] {
			return st, fmt.Errorf("dicomgen: study %s: series number %d invalid or repeated", st.UID, se.Number)
		}
		numbers[se.Number] = true
		if se.UID == "" {
			se.UID = st.UID + "." + strconv.Itoa(se.Number)
		}
		if se.Instances == 0 {
			se.Instances = 1
		}
		if se.Rows == 0 {
			se.Rows = 64
		}
		if se.Cols == 0 {
			se.Cols = 64
		}
		if se.Frames == 0 {
			se.Frames = 1
		}
		if se.Modality == "" {
			se.Modality = "CT"
			if se.Frames > 1 {
				se.Modality = "OT"
			}
		}
		if se.Frames == 1 && se.Modality != "CT" && se.Modality != "MR" {
			return st, fmt.Errorf("dicomgen: single-frame series must be CT or MR, not %q", se.Modality)
		}
		if se.Instances < 0 || se.Rows < 1 || se.Cols < 1 || se.Rows > 65535 || se.Cols > 65535 || se.Frames < 1 {
			return st, fmt.Errorf("dicomgen: series %d of study %s has an invalid size", se.Number, st.UID)
		}
		// The longest instance UID must still be a valid UID.
		if err := checkUID(se.UID + "." + strconv.Itoa(se.Instances)); err != nil {
			return st, fmt.Errorf("dicomgen: instance UIDs of series %d: %w", se.Number, err)
		}
		if int64(se.Rows)*int64(se.Cols)*int64(se.Frames)*2 > math.MaxUint32-1 {
			return st, fmt.Errorf("dicomgen: series %d: pixel data over 4 GiB per instance", se.Number)
		}
		series[i] = se
	}
	st.Series = series
	return st, nil
}

// checkUID reports whether s is a valid DICOM UID: at most 64 characters,
// digits and dots, no empty component, no leading zero in a component.
func checkUID(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("UID %q must be 1-64 characters", s)
	}
	for _, c := range strings.Split(s, ".") {
		if c == "" || (len(c) > 1 && c[0] == '0') || strings.Trim(c, "0123456789") != "" {
			return fmt.Errorf("UID %q is not digits and dots without leading zeros", s)
		}
	}
	return nil
}

// writeFile writes one instance.
func writeFile(name string, st Study, se Series, in Instance) error {
	elems, err := elements(st, se, in)
	if err != nil {
		return fmt.Errorf("dicomgen: %s: %w", in.File, err)
	}
	f, err := os.Create(name)
	if err != nil {
		return fmt.Errorf("dicomgen: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<16)
	err = dicom.Write(bw, dicom.Dataset{Elements: elems})
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("dicomgen: write %s: %w", in.File, err)
	}
	return nil
}

// elements builds the meta header and data set of one instance, in
// ascending tag order.
func elements(st Study, se Series, in Instance) ([]*dicom.Element, error) {
	var (
		elems []*dicom.Element
		err   error
	)
	add := func(t tag.Tag, v any) {
		if err != nil {
			return
		}
		var e *dicom.Element
		e, err = dicom.NewElement(t, v)
		if err != nil {
			err = fmt.Errorf("element %s: %w", tag.DebugString(t), err)
			return
		}
		elems = append(elems, e)
	}
	s := func(t tag.Tag, v ...string) { add(t, v) }
	opt := func(t tag.Tag, v string) {
		if v != "" {
			s(t, v)
		}
	}
	ds := func(f float64) string { return strconv.FormatFloat(f, 'g', 10, 64) } // DS: at most 16 characters

	multi := se.Frames > 1
	mr := !multi && se.Modality == "MR"
	ct := !multi && !mr

	// File meta information.
	add(tag.FileMetaInformationVersion, []byte{0, 1})
	s(tag.MediaStorageSOPClassUID, in.SOPClassUID)
	s(tag.MediaStorageSOPInstanceUID, in.SOPInstanceUID)
	s(tag.TransferSyntaxUID, ExplicitVRLittleEndian)
	s(tag.ImplementationClassUID, ImplementationClassUID)
	s(tag.ImplementationVersionName, ImplementationVersionName)

	// SOP common, general study/series/image, patient, equipment.
	s(tag.SpecificCharacterSet, "ISO_IR 192")
	switch {
	case multi:
		s(tag.ImageType, "DERIVED", "SECONDARY")
	case ct:
		s(tag.ImageType, "ORIGINAL", "PRIMARY", "AXIAL")
	default:
		s(tag.ImageType, "ORIGINAL", "PRIMARY", "OTHER")
	}
	s(tag.SOPClassUID, in.SOPClassUID)
	s(tag.SOPInstanceUID, in.SOPInstanceUID)
	s(tag.StudyDate, st.Date)
	s(tag.SeriesDate, st.Date)
	s(tag.ContentDate, st.Date)
	s(tag.StudyTime, st.Time)
	s(tag.SeriesTime, st.Time)
	s(tag.ContentTime, st.Time)
	s(tag.AccessionNumber, st.AccessionNumber)
	s(tag.Modality, se.Modality)
	if multi {
		s(tag.ConversionType, "WSD")
	}
	s(tag.Manufacturer, "SMART Imaging synthetic")
	s(tag.ReferringPhysicianName, "")
	opt(tag.TimezoneOffsetFromUTC, st.TimezoneOffset)
	opt(tag.StudyDescription, st.Description)
	if c := st.ProcedureCode; c.Value != "" {
		var item []*dicom.Element
		for _, kv := range []struct {
			t tag.Tag
			v string
		}{{tag.CodeValue, c.Value}, {tag.CodingSchemeDesignator, c.Scheme}, {tag.CodeMeaning, c.Meaning}} {
			e, cerr := dicom.NewElement(kv.t, []string{kv.v})
			if cerr != nil && err == nil {
				err = fmt.Errorf("element %s: %w", tag.DebugString(kv.t), cerr)
			}
			item = append(item, e)
		}
		add(tag.ProcedureCodeSequence, [][]*dicom.Element{item})
	}
	opt(tag.SeriesDescription, se.Description)
	s(tag.PatientName, st.Patient.Name)
	s(tag.PatientID, st.Patient.ID)
	if st.Patient.Issuer != "" {
		s(tag.IssuerOfPatientID, st.Patient.Issuer)
		s(tag.TypeOfPatientID, "TEXT")
	}
	s(tag.PatientBirthDate, st.Patient.BirthDate)
	s(tag.PatientSex, st.Patient.Sex)
	opt(tag.BodyPartExamined, st.BodyPart)

	// Acquisition.
	spacing := 250.0 / float64(max(se.Rows, se.Cols)) // a 250 mm field of view
	thickness := 5.0
	switch {
	case ct:
		s(tag.SliceThickness, ds(thickness))
		s(tag.KVP, "120")
	case mr:
		s(tag.ScanningSequence, "SE")
		s(tag.SequenceVariant, "NONE")
		s(tag.ScanOptions, "")
		s(tag.MRAcquisitionType, "2D")
		s(tag.SliceThickness, ds(thickness))
		s(tag.RepetitionTime, "500")
		s(tag.EchoTime, "15")
		s(tag.EchoTrainLength, "1")
	}
	if multi {
		s(tag.FrameTime, "100")
	}
	if !multi {
		s(tag.PatientPosition, "HFS")
	}

	// Relationship, plane.
	s(tag.StudyInstanceUID, st.UID)
	s(tag.SeriesInstanceUID, se.UID)
	s(tag.StudyID, st.ID)
	s(tag.SeriesNumber, strconv.Itoa(se.Number))
	opt(tag.Laterality, se.Laterality)
	s(tag.AcquisitionNumber, "1")
	s(tag.InstanceNumber, strconv.Itoa(in.InstanceNumber))
	if multi {
		s(tag.PatientOrientation, "")
	} else {
		z := float64(in.InstanceNumber-1) * thickness
		s(tag.ImagePositionPatient, ds(-spacing*float64(se.Cols)/2), ds(-spacing*float64(se.Rows)/2), ds(z))
		s(tag.ImageOrientationPatient, "1", "0", "0", "0", "1", "0")
		s(tag.FrameOfReferenceUID, se.UID+".0")
		s(tag.PositionReferenceIndicator, "")
		s(tag.SliceLocation, ds(z))
	}

	// Image pixel, VOI, rescale.
	lo, hi, intercept := valueRange(se)
	add(tag.SamplesPerPixel, []int{1})
	s(tag.PhotometricInterpretation, "MONOCHROME2")
	if multi {
		s(tag.NumberOfFrames, strconv.Itoa(se.Frames))
		add(tag.FrameIncrementPointer, []int{0x0018, 0x1063}) // FrameTime
	}
	add(tag.Rows, []int{se.Rows})
	add(tag.Columns, []int{se.Cols})
	if !multi {
		s(tag.PixelSpacing, ds(spacing), ds(spacing))
	}
	add(tag.BitsAllocated, []int{16})
	add(tag.BitsStored, []int{12})
	add(tag.HighBit, []int{11})
	add(tag.PixelRepresentation, []int{0})
	if multi {
		s(tag.BurnedInAnnotation, "NO")
	}
	s(tag.WindowCenter, ds(float64(lo+hi)/2+intercept))
	s(tag.WindowWidth, ds(float64(hi-lo)))
	if !mr {
		s(tag.RescaleIntercept, ds(intercept))
		s(tag.RescaleSlope, "1")
	}
	switch {
	case ct:
		s(tag.RescaleType, "HU")
	case multi:
		s(tag.RescaleType, "US")
		s(tag.PresentationLUTShape, "IDENTITY")
	}
	add(tag.PixelData, dicom.PixelDataInfo{
		// The pixels are encoded here rather than as frame.NativeFrame
		// values: the library encodes native frames one sample at a time,
		// which is slow for the gigabyte studies benchmarks ask for.
		IntentionallyUnprocessed: true,
		UnprocessedValueData:     pixelBytes(se, in.InstanceNumber),
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(elems, func(i, j int) bool {
		a, b := elems[i].Tag, elems[j].Tag
		return a.Group < b.Group || a.Group == b.Group && a.Element < b.Element
	})
	return elems, nil
}

// valueRange returns the stored pixel range a series uses and its rescale
// intercept (CT stores HU+1024).
func valueRange(se Series) (lo, hi int, intercept float64) {
	switch {
	case se.Frames > 1:
		return 0, 4000, 0
	case se.Modality == "MR":
		return 0, 1000, 0
	default:
		return 0, 2000, -1024
	}
}

// pixelBytes returns the little-endian pixel data of one instance (all its
// frames).
func pixelBytes(se Series, instance int) []byte {
	lo, hi, _ := valueRange(se)
	n := se.Rows * se.Cols
	out := make([]byte, 2*n*se.Frames)
	// Slices of a series and frames of an instance are positions along one
	// axis, so a series' pattern moves smoothly through its images.
	total := se.Instances * se.Frames
	for f := 0; f < se.Frames; f++ {
		pos := (instance-1)*se.Frames + f
		px := Pattern(se.Pattern, se.Rows, se.Cols, pos, total, lo, hi)
		buf := out[2*n*f:]
		for i, v := range px {
			binary.LittleEndian.PutUint16(buf[2*i:], v)
		}
	}
	return out
}

// Pattern returns one rows×cols image, row by row, with values in [lo, hi].
// kind picks the pattern (wrapping modulo 5); pos in [0, total) is the
// position of the image in its stack (slice or frame), which moves the
// pattern so neighbouring images differ.
//
//	0: a sphere cut at pos (a disc whose radius follows the slice), shaded
//	1: a diagonal gradient with a bright band that travels with pos
//	2: concentric rings whose phase follows pos
//	3: a checkerboard over a gradient, square size following pos
//	4: a vertical bar sweeping across (a cine loop)
//
// Every image also has a small bright marker whose column encodes pos.
func Pattern(kind, rows, cols, pos, total, lo, hi int) []uint16 {
	if total < 1 {
		total = 1
	}
	kind = ((kind % 5) + 5) % 5
	out := make([]uint16, rows*cols)
	t := (float64(pos) + 0.5) / float64(total) // in (0, 1)
	cy, cx := float64(rows-1)/2, float64(cols-1)/2
	rmax := math.Min(float64(rows), float64(cols)) / 2
	span := float64(hi - lo)
	for y := 0; y < rows; y++ {
		for x := 0; x < cols; x++ {
			dy, dx := float64(y)-cy, float64(x)-cx
			var v float64 // in [0, 1]
			switch kind {
			case 0:
				z := 2*t - 1
				r := rmax * 0.9 * math.Sqrt(1-z*z)
				d := math.Hypot(dx, dy)
				if d <= r {
					v = 0.55 + 0.45*(1-d/(r+1))
				} else {
					v = 0.05
				}
			case 1:
				g := (float64(x) + float64(y)) / float64(rows+cols)
				band := math.Abs(g - t)
				v = 0.7 * g
				if band < 0.06 {
					v = 1
				}
			case 2:
				d := math.Hypot(dx, dy) / rmax
				v = 0.5 + 0.5*math.Cos(2*math.Pi*(3*d-t))
			case 3:
				sq := 2 + int(t*float64(min(rows, cols))/4)
				g := float64(y) / float64(rows)
				if (x/sq+y/sq)%2 == 0 {
					v = 0.2 + 0.6*g
				} else {
					v = 0.1 * g
				}
			case 4:
				bar := t * float64(cols)
				w := math.Max(2, float64(cols)/10)
				if math.Abs(float64(x)-bar) < w {
					v = 0.95
				} else {
					v = 0.25 + 0.25*float64(y)/float64(rows)
				}
			}
			out[y*cols+x] = uint16(float64(lo) + v*span + 0.5)
		}
	}
	// Position marker: a short bright segment along the top rows.
	if rows >= 4 && cols >= 4 {
		mx := int(t * float64(cols-2))
		for y := 1; y < min(4, rows); y++ {
			for x := mx; x < mx+2 && x < cols; x++ {
				out[y*cols+x] = uint16(hi)
			}
		}
	}
	return out
}
