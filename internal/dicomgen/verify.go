package dicomgen

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// Verify parses every file of m under dir with the DICOM library and checks
// that its identifying attributes (patient, study, series, SOP instance, SOP
// class, transfer syntax, size, frame count) match the manifest. For the
// first instance of each series it also decodes the pixel data and checks the
// frame count, size, and that consecutive frames differ.
func Verify(dir string, m Manifest) error {
	seenSeries := map[string]bool{}
	for _, in := range m {
		withPixels := !seenSeries[in.SeriesUID]
		seenSeries[in.SeriesUID] = true
		if err := verifyFile(filepath.Join(dir, filepath.FromSlash(in.File)), in, withPixels); err != nil {
			return fmt.Errorf("dicomgen: verify %s: %w", in.File, err)
		}
	}
	return nil
}

func verifyFile(name string, in Instance, withPixels bool) error {
	var opts []dicom.ParseOption
	if !withPixels {
		opts = append(opts, dicom.SkipPixelData())
	}
	ds, err := dicom.ParseFile(name, nil, opts...)
	if err != nil {
		return err
	}
	str := func(t tag.Tag) string {
		e, err := ds.FindElementByTag(t)
		if err != nil {
			return "<missing>"
		}
		v, ok := e.Value.GetValue().([]string)
		if !ok || len(v) == 0 {
			return "<not a string>"
		}
		return v[0]
	}
	num := func(t tag.Tag) int {
		e, err := ds.FindElementByTag(t)
		if err != nil {
			return -1
		}
		v, ok := e.Value.GetValue().([]int)
		if !ok || len(v) == 0 {
			return -1
		}
		return v[0]
	}
	want := []struct {
		t        tag.Tag
		got, exp string
	}{
		{tag.PatientID, str(tag.PatientID), in.PatientID},
		{tag.PatientName, str(tag.PatientName), in.PatientName},
		{tag.StudyInstanceUID, str(tag.StudyInstanceUID), in.StudyUID},
		{tag.SeriesInstanceUID, str(tag.SeriesInstanceUID), in.SeriesUID},
		{tag.SOPInstanceUID, str(tag.SOPInstanceUID), in.SOPInstanceUID},
		{tag.MediaStorageSOPInstanceUID, str(tag.MediaStorageSOPInstanceUID), in.SOPInstanceUID},
		{tag.SOPClassUID, str(tag.SOPClassUID), in.SOPClassUID},
		{tag.Modality, str(tag.Modality), in.Modality},
		{tag.TransferSyntaxUID, str(tag.TransferSyntaxUID), ExplicitVRLittleEndian},
		{tag.InstanceNumber, str(tag.InstanceNumber), strconv.Itoa(in.InstanceNumber)},
	}
	for _, w := range want {
		if w.got != w.exp {
			return fmt.Errorf("%s is %q, want %q", tag.DebugString(w.t), w.got, w.exp)
		}
	}
	if r, c := num(tag.Rows), num(tag.Columns); r != in.Rows || c != in.Cols {
		return fmt.Errorf("size %dx%d, want %dx%d", r, c, in.Rows, in.Cols)
	}
	if in.Frames > 1 && str(tag.NumberOfFrames) != strconv.Itoa(in.Frames) {
		return fmt.Errorf("NumberOfFrames %q, want %d", str(tag.NumberOfFrames), in.Frames)
	}
	if !withPixels {
		return nil
	}
	pe, err := ds.FindElementByTag(tag.PixelData)
	if err != nil {
		return fmt.Errorf("pixel data: %w", err)
	}
	info, ok := pe.Value.GetValue().(dicom.PixelDataInfo)
	if !ok {
		return errors.New("pixel data has an unexpected value type")
	}
	if info.ParseErr != nil {
		return fmt.Errorf("pixel data: %w", info.ParseErr)
	}
	if info.IsEncapsulated || len(info.Frames) != in.Frames {
		return fmt.Errorf("pixel data has %d frames (encapsulated %v), want %d native", len(info.Frames), info.IsEncapsulated, in.Frames)
	}
	var prev []uint16
	for i, f := range info.Frames {
		nf := f.NativeData
		if nf == nil || nf.Rows() != in.Rows || nf.Cols() != in.Cols || nf.BitsPerSample() != 16 {
			return fmt.Errorf("frame %d is not a %dx%d 16-bit native frame", i+1, in.Rows, in.Cols)
		}
		px, ok := nf.RawDataSlice().([]uint16)
		if !ok || len(px) != in.Rows*in.Cols {
			return fmt.Errorf("frame %d: unexpected sample slice", i+1)
		}
		if prev != nil && slices.Equal(prev, px) {
			return fmt.Errorf("frame %d equals frame %d", i+1, i)
		}
		prev = px
	}
	return nil
}
