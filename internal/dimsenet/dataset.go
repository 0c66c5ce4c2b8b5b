package dimsenet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// Transfer syntaxes.
const (
	ImplicitVRLittleEndian = "1.2.840.10008.1.2"
	ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"
	DeflatedExplicitVRLE   = "1.2.840.10008.1.2.1.99"
	ExplicitVRBigEndian    = "1.2.840.10008.1.2.2"
)

// maxIdentifier bounds a C-FIND identifier we read.
const maxIdentifier = 1 << 20

// Key is one attribute of a C-FIND identifier: a matching key when Value is
// set, a return key when it is empty.
type Key struct {
	Tag   tag.Tag
	Value string
}

// encodeIdentifier writes keys as a little endian data set (implicit or
// explicit VR) with the DICOM library's writer. Values are single-valued
// strings.
func encodeIdentifier(keys []Key, implicit bool) ([]byte, error) {
	var buf bytes.Buffer
	w, err := dicom.NewWriter(&buf, dicom.SkipVRVerification())
	if err != nil {
		return nil, err
	}
	w.SetTransferSyntax(binary.LittleEndian, implicit)
	sorted := append([]Key(nil), keys...)
	for i := 1; i < len(sorted); i++ { // insertion sort by tag: few keys
		for j := i; j > 0 && tagLess(sorted[j].Tag, sorted[j-1].Tag); j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	for _, k := range sorted {
		var vals any = []string{}
		if k.Value != "" {
			vals = []string{k.Value}
		}
		if info, err := tag.Find(k.Tag); err == nil && len(info.VRs) > 0 {
			switch info.VRs[0] {
			case "US", "UL", "SS", "SL", "UV", "SV":
				if k.Value != "" {
					return nil, fmt.Errorf("identifier key %v: only return keys of binary VRs", k.Tag)
				}
				vals = []int{}
			case "FL", "FD":
				if k.Value != "" {
					return nil, fmt.Errorf("identifier key %v: only return keys of binary VRs", k.Tag)
				}
				vals = []float64{}
			}
		}
		e, err := dicom.NewElement(k.Tag, vals)
		if err != nil {
			return nil, fmt.Errorf("identifier key %v: %w", k.Tag, err)
		}
		if err := w.WriteElement(e); err != nil {
			return nil, fmt.Errorf("identifier key %v: %w", k.Tag, err)
		}
	}
	return buf.Bytes(), nil
}

func tagLess(a, b tag.Tag) bool {
	if a.Group != b.Group {
		return a.Group < b.Group
	}
	return a.Element < b.Element
}

// DecodeDataSet parses a data set received in transfer syntax ts with the
// DICOM library. It never panics: malformed input is an error.
func DecodeDataSet(b []byte, ts string) (ds dicom.Dataset, err error) {
	defer func() {
		if r := recover(); r != nil {
			ds, err = dicom.Dataset{}, fmt.Errorf("%w: cannot parse data set: %v", ErrProtocol, r)
		}
	}()
	implicit, ok := Implicit(ts)
	if !ok {
		return dicom.Dataset{}, fmt.Errorf("%w: data set in unsupported transfer syntax %q", ErrProtocol, ts)
	}
	if _, err := Walk(bytes.NewReader(b), 0, int64(len(b)), implicit, nil); err != nil {
		return dicom.Dataset{}, fmt.Errorf("%w: malformed data set: %v", ErrProtocol, err)
	}
	var whole bytes.Buffer
	if err := WritePart10Header(&whole, "1.2.840.10008.5.1.4.1.2.2.1", "1.2.3", ts, ""); err != nil {
		return dicom.Dataset{}, err
	}
	whole.Write(b)
	ds, err = dicom.Parse(bytes.NewReader(whole.Bytes()), int64(whole.Len()), nil,
		dicom.SkipPixelData(), dicom.AllowUnknownSpecificCharacterSet())
	if err != nil && !errors.Is(err, io.EOF) {
		return dicom.Dataset{}, fmt.Errorf("%w: cannot parse data set: %v", ErrProtocol, err)
	}
	// Drop the synthetic file meta.
	out := dicom.Dataset{}
	for _, e := range ds.Elements {
		if e.Tag.Group != 0x0002 {
			out.Elements = append(out.Elements, e)
		}
	}
	return out, nil
}

// WritePart10Header writes the 128-byte preamble, "DICM" and a file meta
// group (explicit VR little endian) for an instance received over the
// network; the data set's bytes, as received, follow it to make a Part 10
// file. sourceAE, when set, is recorded as the Source Application Entity
// Title.
func WritePart10Header(w io.Writer, sopClass, sopInstance, ts, sourceAE string) error {
	var meta bytes.Buffer
	put := func(el uint16, vr string, v []byte) {
		var h [8]byte
		binary.LittleEndian.PutUint16(h[0:2], 0x0002)
		binary.LittleEndian.PutUint16(h[2:4], el)
		copy(h[4:6], vr)
		if vr == "OB" {
			meta.Write(h[:6])
			meta.Write([]byte{0, 0})
			var l [4]byte
			binary.LittleEndian.PutUint32(l[:], uint32(len(v)))
			meta.Write(l[:])
		} else {
			binary.LittleEndian.PutUint16(h[6:8], uint16(len(v)))
			meta.Write(h[:])
		}
		meta.Write(v)
	}
	uidv := func(s string) []byte {
		b := []byte(s)
		if len(b)%2 == 1 {
			b = append(b, 0)
		}
		return b
	}
	text := func(s string) []byte {
		b := []byte(s)
		if len(b)%2 == 1 {
			b = append(b, ' ')
		}
		return b
	}
	put(0x0001, "OB", []byte{0, 1})
	put(0x0002, "UI", uidv(sopClass))
	put(0x0003, "UI", uidv(sopInstance))
	put(0x0010, "UI", uidv(ts))
	put(0x0012, "UI", uidv(ImplementationClassUID))
	put(0x0013, "SH", text(ImplementationVersion))
	if sourceAE != "" {
		put(0x0016, "AE", text(sourceAE))
	}
	head := make([]byte, 128+4+12)
	copy(head[128:], "DICM")
	g := head[132:]
	binary.LittleEndian.PutUint16(g[0:2], 0x0002)
	binary.LittleEndian.PutUint16(g[2:4], 0x0000)
	copy(g[4:6], "UL")
	binary.LittleEndian.PutUint16(g[6:8], 4)
	binary.LittleEndian.PutUint32(g[8:12], uint32(meta.Len()))
	if _, err := w.Write(head); err != nil {
		return err
	}
	_, err := w.Write(meta.Bytes())
	return err
}
