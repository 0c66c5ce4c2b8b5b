package integration

import (
	"bytes"
	"encoding/binary"
)

// dicomHead is the start of a DICOM Part 10 object (explicit VR little
// endian) of study and patient, up to and including the header of a
// Pixel Data element of pixels bytes: what a PACS's answer must begin
// with for the gateway to pass it on. The pixel bytes are the caller's.
func dicomHead(study, patient string, pixels int) []byte {
	var b bytes.Buffer
	el := func(group, element uint16, vr string, v string) {
		if len(v)%2 == 1 {
			v += map[bool]string{true: "\x00", false: " "}[vr == "UI"]
		}
		binary.Write(&b, binary.LittleEndian, [2]uint16{group, element})
		b.WriteString(vr)
		binary.Write(&b, binary.LittleEndian, uint16(len(v)))
		b.WriteString(v)
	}
	b.Write(make([]byte, 128))
	b.WriteString("DICM")
	el(0x0002, 0x0010, "UI", "1.2.840.10008.1.2.1")
	el(0x0008, 0x0016, "UI", "1.2.840.10008.5.1.4.1.1.7")
	el(0x0010, 0x0020, "LO", patient)
	el(0x0020, 0x000D, "UI", study)
	binary.Write(&b, binary.LittleEndian, [2]uint16{0x7FE0, 0x0010})
	b.WriteString("OB\x00\x00")
	binary.Write(&b, binary.LittleEndian, uint32(pixels))
	return b.Bytes()
}
