package dicomweb

import (
	"bytes"
	"encoding/binary"
)

// testPatient is the PatientID the test gateway's caller may see.
const testPatient = "PAT-1"

// dicomObject is a small DICOM Part 10 object (explicit VR little endian,
// or the given transfer syntax) of study and patient, with pixels bytes
// of pixel data.
func dicomObject(study, patient string, pixels int) []byte {
	return dicomObjectTS("1.2.840.10008.1.2.1", study, patient, pixels)
}

func dicomObjectTS(ts, study, patient string, pixels int) []byte {
	el := func(b *bytes.Buffer, group, element uint16, vr string, v []byte) {
		if len(v)%2 == 1 {
			pad := byte(' ')
			if vr == "UI" {
				pad = 0
			}
			v = append(v, pad)
		}
		binary.Write(b, binary.LittleEndian, group)
		binary.Write(b, binary.LittleEndian, element)
		b.WriteString(vr)
		switch vr {
		case "OB", "OW", "UN", "SQ", "UT":
			b.Write([]byte{0, 0})
			binary.Write(b, binary.LittleEndian, uint32(len(v)))
		default:
			binary.Write(b, binary.LittleEndian, uint16(len(v)))
		}
		b.Write(v)
	}
	var b bytes.Buffer
	b.Write(make([]byte, 128))
	b.WriteString("DICM")
	el(&b, 0x0002, 0x0010, "UI", []byte(ts))
	el(&b, 0x0008, 0x0016, "UI", []byte("1.2.840.10008.5.1.4.1.1.7"))
	el(&b, 0x0008, 0x0018, "UI", []byte(study+".9.9"))
	el(&b, 0x0010, 0x0010, "PN", []byte("Test^Patient"))
	el(&b, 0x0010, 0x0020, "LO", []byte(patient))
	el(&b, 0x0020, 0x000D, "UI", []byte(study))
	el(&b, 0x0020, 0x000E, "UI", []byte(study+".9"))
	px := make([]byte, pixels)
	for i := range px {
		px[i] = byte(i * 7)
	}
	el(&b, 0x7FE0, 0x0010, "OW", px)
	return b.Bytes()
}
