package folder

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"image"
	"image/color"
	"image/jpeg"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/frame"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// fixture describes one synthetic instance written by writeInstance.
type fixture struct {
	PatientID      string
	PatientName    string
	StudyUID       string
	StudyDate      string
	SeriesUID      string
	SeriesNumber   int
	Modality       string
	SOPUID         string
	InstanceNumber int
	Rows, Cols     int
	Frames         int    // 0 or 1: single frame, no NumberOfFrames
	TS             string // default Explicit VR Little Endian
	JPEG           bool   // 8-bit JPEG Baseline pixel data (TS set accordingly)
	ICCSize        int    // when > 0, an ICC Profile (OB) of this many bytes
}

const ctImageStorage = "1.2.840.10008.5.1.4.1.1.2"

// pixelValue is the stored value of pixel (x, y) of frame f (0-based): it
// varies across the image and between frames, within 12 bits.
func pixelValue(x, y, f int) uint16 {
	return uint16((x*170 + y*60 + f*500) % 4096)
}

// expectedFrame gives the little-endian bytes of frame f (0-based).
func expectedFrame(rows, cols, f int) []byte {
	b := make([]byte, rows*cols*2)
	for y := 0; y < rows; y++ {
		for x := 0; x < cols; x++ {
			binary.LittleEndian.PutUint16(b[2*(y*cols+x):], pixelValue(x, y, f))
		}
	}
	return b
}

func mustElement(t testing.TB, tg tag.Tag, v any) *dicom.Element {
	t.Helper()
	e, err := dicom.NewElement(tg, v)
	if err != nil {
		t.Fatalf("element %v: %v", tg, err)
	}
	return e
}

// writeInstance writes a Part 10 file at dir/name and returns its path.
func writeInstance(t testing.TB, dir, name string, f fixture) string {
	t.Helper()
	if f.TS == "" {
		f.TS = tsExplicitLE
	}
	if f.JPEG {
		f.TS = tsJPEGBase
	}
	if f.Rows == 0 {
		f.Rows, f.Cols = 16, 24
	}
	if f.Modality == "" {
		f.Modality = "CT"
	}
	if f.PatientName == "" {
		f.PatientName = "Doe^Jane"
	}
	frames := max(f.Frames, 1)
	el := func(tg tag.Tag, v any) *dicom.Element { return mustElement(t, tg, v) }
	elems := []*dicom.Element{
		el(tag.FileMetaInformationVersion, []byte{0, 1}),
		el(tag.MediaStorageSOPClassUID, []string{ctImageStorage}),
		el(tag.MediaStorageSOPInstanceUID, []string{f.SOPUID}),
		el(tag.TransferSyntaxUID, []string{f.TS}),
		el(tag.SpecificCharacterSet, []string{"ISO_IR 192"}),
		el(tag.SOPClassUID, []string{ctImageStorage}),
		el(tag.SOPInstanceUID, []string{f.SOPUID}),
		el(tag.StudyDate, []string{f.StudyDate}),
		el(tag.StudyTime, []string{"101500"}),
		el(tag.AccessionNumber, []string{"ACC-" + f.PatientID}),
		el(tag.Modality, []string{f.Modality}),
		el(tag.ReferringPhysicianName, []string{"House^Gregory"}),
		el(tag.StudyDescription, []string{"Study of " + f.PatientID}),
		el(tag.SeriesDescription, []string{"Series " + strconv.Itoa(f.SeriesNumber)}),
		el(tag.ProcedureCodeSequence, [][]*dicom.Element{{
			el(tag.CodeValue, []string{"P-1"}),
			el(tag.CodingSchemeDesignator, []string{"LOCAL"}),
			el(tag.CodeMeaning, []string{"CT chest"}),
		}}),
		el(tag.PatientName, []string{f.PatientName}),
		el(tag.PatientID, []string{f.PatientID}),
		el(tag.PatientBirthDate, []string{"19700101"}),
		el(tag.PatientSex, []string{"F"}),
		el(tag.SliceThickness, []string{"2.50"}),
		el(tag.StudyInstanceUID, []string{f.StudyUID}),
		el(tag.SeriesInstanceUID, []string{f.SeriesUID}),
		el(tag.StudyID, []string{"S1"}),
		el(tag.SeriesNumber, []string{strconv.Itoa(f.SeriesNumber)}),
		el(tag.InstanceNumber, []string{strconv.Itoa(f.InstanceNumber)}),
		el(tag.ImageType, []string{"ORIGINAL", "PRIMARY", "AXIAL"}),
		el(tag.ImageComments, []string{`left \ right`}),
		el(tag.SamplesPerPixel, []int{1}),
		el(tag.PhotometricInterpretation, []string{"MONOCHROME2"}),
	}
	if f.Frames > 1 {
		elems = append(elems, el(tag.NumberOfFrames, []string{strconv.Itoa(f.Frames)}))
	}
	bits := 16
	if f.JPEG {
		bits = 8
	}
	elems = append(elems,
		el(tag.Rows, []int{f.Rows}),
		el(tag.Columns, []int{f.Cols}),
		el(tag.BitsAllocated, []int{bits}),
		el(tag.BitsStored, []int{min(bits, 12)}),
		el(tag.HighBit, []int{min(bits, 12) - 1}),
		el(tag.PixelRepresentation, []int{0}),
	)
	if !f.JPEG {
		elems = append(elems,
			el(tag.WindowCenter, []string{"1024"}),
			el(tag.WindowWidth, []string{"4096"}),
			el(tag.RescaleIntercept, []string{"-1024"}),
			el(tag.RescaleSlope, []string{"1"}),
		)
	}
	if f.ICCSize > 0 {
		icc := make([]byte, f.ICCSize)
		for i := range icc {
			icc[i] = byte(i)
		}
		elems = append(elems, el(tag.ICCProfile, icc))
	}
	if f.JPEG {
		img := image.NewGray(image.Rect(0, 0, f.Cols, f.Rows))
		for y := 0; y < f.Rows; y++ {
			for x := 0; x < f.Cols; x++ {
				img.SetGray(x, y, color.Gray{Y: uint8(x * 255 / f.Cols)})
			}
		}
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, img, nil); err != nil {
			t.Fatal(err)
		}
		data := buf.Bytes()
		if len(data)%2 == 1 {
			data = append(data, 0)
		}
		elems = append(elems, &dicom.Element{
			Tag:                    tag.PixelData,
			ValueRepresentation:    tag.VRPixelData,
			RawValueRepresentation: "OB",
			ValueLength:            tag.VLUndefinedLength,
			Value: mustValue(t, dicom.PixelDataInfo{IsEncapsulated: true, Frames: []*frame.Frame{{
				Encapsulated: true, EncapsulatedData: frame.EncapsulatedFrame{Data: data},
			}}}),
		})
	} else {
		var frs []*frame.Frame
		for fi := 0; fi < frames; fi++ {
			nf := &frame.NativeFrame[uint16]{
				RawData: make([]uint16, f.Rows*f.Cols), InternalSamplesPerPixel: 1,
				InternalRows: f.Rows, InternalCols: f.Cols, InternalBitsPerSample: 16,
			}
			for y := 0; y < f.Rows; y++ {
				for x := 0; x < f.Cols; x++ {
					nf.RawData[y*f.Cols+x] = pixelValue(x, y, fi)
				}
			}
			frs = append(frs, &frame.Frame{NativeData: nf})
		}
		elems = append(elems, el(tag.PixelData, dicom.PixelDataInfo{Frames: frs}))
	}
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := dicom.Write(out, dicom.Dataset{Elements: elems}); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	return path
}

func mustValue(t testing.TB, v any) dicom.Value {
	t.Helper()
	val, err := dicom.NewValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return val
}

// writeDeflated writes an instance in Deflated Explicit VR Little Endian,
// which the DICOM library cannot write: an explicit little-endian file is
// written first, then its dataset is deflated behind a hand-made file meta.
func writeDeflated(t testing.TB, dir, name string, f fixture) string {
	t.Helper()
	plain, err := os.ReadFile(writeInstance(t, t.TempDir(), "plain.dcm", f))
	if err != nil {
		t.Fatal(err)
	}
	metaLen := binary.LittleEndian.Uint32(plain[140:144])
	body := plain[144+metaLen:]

	var meta bytes.Buffer
	elem := func(el uint16, vr string, val []byte) {
		if len(val)%2 == 1 {
			val = append(val, 0)
		}
		binary.Write(&meta, binary.LittleEndian, [2]uint16{2, el})
		meta.WriteString(vr)
		if vr == "OB" {
			binary.Write(&meta, binary.LittleEndian, uint16(0))
			binary.Write(&meta, binary.LittleEndian, uint32(len(val)))
		} else {
			binary.Write(&meta, binary.LittleEndian, uint16(len(val)))
		}
		meta.Write(val)
	}
	elem(0x0001, "OB", []byte{0, 1})
	elem(0x0002, "UI", []byte(ctImageStorage))
	elem(0x0003, "UI", []byte(f.SOPUID))
	elem(0x0010, "UI", []byte(tsDeflatedLE))

	var out bytes.Buffer
	out.Write(make([]byte, 128))
	out.WriteString("DICM")
	binary.Write(&out, binary.LittleEndian, [2]uint16{2, 0})
	out.WriteString("UL")
	binary.Write(&out, binary.LittleEndian, uint16(4))
	binary.Write(&out, binary.LittleEndian, uint32(meta.Len()))
	out.Write(meta.Bytes())
	fw, err := flate.NewWriter(&out, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(body)
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
