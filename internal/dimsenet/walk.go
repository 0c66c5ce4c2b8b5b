package dimsenet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/suyashkumar/dicom/pkg/tag"
)

// The DICOM library allocates an element's declared length before it
// reads the value, so a data set that declares a 4 GiB value costs 4 GiB
// however short it is. Every data set from the network is therefore walked
// first: element headers only, every length checked against the bytes
// that are there, before the library parses it.

// ErrTruncated reports an element whose value runs past the bytes given.
var ErrTruncated = errors.New("a data set element runs past the end of the data")

const maxDepth = 16

var longVRs = map[string]bool{"OB": true, "OD": true, "OF": true, "OL": true, "OV": true, "OW": true,
	"SQ": true, "SV": true, "UC": true, "UN": true, "UR": true, "UT": true, "UV": true}

// Implicit reports whether a transfer syntax this package accepts data
// sets in is implicit VR; ok is false for big endian and deflated ones,
// which it does not accept.
func Implicit(ts string) (implicit, ok bool) {
	switch ts {
	case ImplicitVRLittleEndian:
		return true, true
	case ExplicitVRBigEndian, DeflatedExplicitVRLE, "":
		return false, false
	}
	return false, true
}

// Walk checks the structure of a little endian data set held in r between
// off and end (implicit or explicit VR): every defined length fits, and
// sequences and items of undefined length are delimited, nested at most 16
// deep. visit, when set, is called with each top-level element's tag and
// offset before the element is checked; returning false stops the walk
// there. Walk returns the offset where it stopped.
func Walk(r io.ReaderAt, off, end int64, implicit bool, visit func(group, element uint16, at int64) bool) (int64, error) {
	w := walker{r: r, implicit: implicit}
	return w.elements(off, end, 0, visit)
}

type walker struct {
	r        io.ReaderAt
	implicit bool
	hdr      [12]byte
}

// header reads an element header at off: tag, VR ("" when implicit),
// value length and header size.
func (w *walker) header(off, end int64) (g, e uint16, vr string, vl uint32, n int64, err error) {
	if end-off < 8 {
		return 0, 0, "", 0, 0, ErrTruncated
	}
	if _, err := w.r.ReadAt(w.hdr[:8], off); err != nil {
		return 0, 0, "", 0, 0, ErrTruncated
	}
	g = binary.LittleEndian.Uint16(w.hdr[0:2])
	e = binary.LittleEndian.Uint16(w.hdr[2:4])
	if g == 0xFFFE || w.implicit {
		return g, e, "", binary.LittleEndian.Uint32(w.hdr[4:8]), 8, nil
	}
	vr = string(w.hdr[4:6])
	if !longVRs[vr] {
		return g, e, vr, uint32(binary.LittleEndian.Uint16(w.hdr[6:8])), 8, nil
	}
	if end-off < 12 {
		return 0, 0, "", 0, 0, ErrTruncated
	}
	if _, err := w.r.ReadAt(w.hdr[8:12], off+8); err != nil {
		return 0, 0, "", 0, 0, ErrTruncated
	}
	return g, e, vr, binary.LittleEndian.Uint32(w.hdr[8:12]), 12, nil
}

// elements walks the elements from off to end.
func (w *walker) elements(off, end int64, depth int, visit func(uint16, uint16, int64) bool) (int64, error) {
	if depth > maxDepth {
		return off, fmt.Errorf("%w: sequences nested deeper than %d", ErrProtocol, maxDepth)
	}
	for off < end {
		if visit != nil {
			g, e, _, _, _, err := w.header(off, end)
			if err != nil {
				return off, err
			}
			if !visit(g, e, off) {
				return off, nil
			}
		}
		next, err := w.elementAt(off, end, depth)
		if err != nil {
			return next, err
		}
		off = next
	}
	return off, nil
}

// items walks the items of a sequence (elements inside) or of
// encapsulated pixel data (fragments, raw bytes) from off. A delimited
// list ends with its sequence delimiter (the offset after it is
// returned); a list of defined length ends at end.
func (w *walker) items(off, end int64, depth int, delimited, elements bool) (int64, error) {
	if depth > maxDepth {
		return off, fmt.Errorf("%w: sequences nested deeper than %d", ErrProtocol, maxDepth)
	}
	for {
		if !delimited && off == end {
			return off, nil
		}
		g, e, _, vl, n, err := w.header(off, end)
		if err != nil {
			return off, err
		}
		if g != 0xFFFE {
			return off, fmt.Errorf("%w: element (%04x,%04x) where an item was expected", ErrProtocol, g, e)
		}
		off += n
		switch {
		case e == 0xE0DD && delimited:
			return off, nil
		case e != 0xE000:
			return off, fmt.Errorf("%w: item tag (fffe,%04x)", ErrProtocol, e)
		case vl == 0xFFFFFFFF:
			if !elements {
				return off, fmt.Errorf("%w: a pixel data fragment of undefined length", ErrProtocol)
			}
			if off, err = w.delimitedItem(off, end, depth); err != nil {
				return off, err
			}
		default:
			if int64(vl) > end-off {
				return off, ErrTruncated
			}
			if elements {
				if _, err := w.elements(off, off+int64(vl), depth, nil); err != nil {
					if errors.Is(err, ErrTruncated) {
						err = fmt.Errorf("%w: an item's elements run past its length", ErrProtocol)
					}
					return off, err
				}
			}
			off += int64(vl)
		}
	}
}

// delimitedItem walks the elements of an item of undefined length and
// returns the offset after its delimiter.
func (w *walker) delimitedItem(off, end int64, depth int) (int64, error) {
	for {
		g, e, _, _, n, err := w.header(off, end)
		if err != nil {
			return off, err
		}
		if g == 0xFFFE && e == 0xE00D {
			return off + n, nil
		}
		next, err := w.elementAt(off, end, depth)
		if err != nil {
			return next, err
		}
		off = next
	}
}

// elementAt walks the one element at off and returns the offset after it.
func (w *walker) elementAt(off, end int64, depth int) (int64, error) {
	g, e, vr, vl, n, err := w.header(off, end)
	if err != nil {
		return off, err
	}
	if g == 0xFFFE {
		return off, fmt.Errorf("%w: item tag (fffe,%04x) among elements", ErrProtocol, e)
	}
	body := off + n
	if vr == "" {
		vr = dictionaryVR(g, e)
	}
	if vl == 0xFFFFFFFF {
		if vr != "SQ" && !(g == 0x7FE0 && e == 0x0010) && vr != "OB" && vr != "OW" {
			return off, fmt.Errorf("%w: undefined length on (%04x,%04x) %s", ErrProtocol, g, e, vr)
		}
		next, err := w.items(body, end, depth+1, true, vr == "SQ")
		if errors.Is(err, ErrTruncated) {
			return off, err
		}
		return next, err
	}
	if int64(vl) > end-body {
		return off, ErrTruncated
	}
	if vr == "SQ" {
		if _, err := w.items(body, body+int64(vl), depth+1, false, true); err != nil {
			if errors.Is(err, ErrTruncated) {
				err = fmt.Errorf("%w: a sequence's items run past its length", ErrProtocol)
			}
			return off, err
		}
	}
	return body + int64(vl), nil
}

// dictionaryVR is the VR the DICOM library will assume for an implicit VR
// element.
func dictionaryVR(g, e uint16) string {
	if info, err := tag.Find(tag.Tag{Group: g, Element: e}); err == nil && len(info.VRs) > 0 {
		return info.VRs[0]
	}
	return "UN"
}
