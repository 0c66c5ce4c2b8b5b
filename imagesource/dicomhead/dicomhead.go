// Package dicomhead reads whose a DICOM object is from the first bytes of
// its Part 10 encoding: PatientID (0010,0020) and StudyInstanceUID
// (0020,000D), which come early, long before the pixel data. It works on a
// prefix of a stream, so a proxy can hold back the start of an object,
// check who it belongs to, and only then pass it on.
//
// It reads the file meta information (always explicit VR little endian)
// and then the data set in explicit or implicit VR little endian, the
// encodings of every transfer syntax but two: deflated data sets and
// explicit VR big endian, which cannot be read from a prefix cheaply (or
// at all) and are refused. Elements before the two wanted ones are skipped
// by their lengths; sequences of undefined length are walked item by item.
// Nothing is allocated but the returned values.
package dicomhead

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Errors Parse returns. Every failure but ErrShort wraps ErrUnreadable.
var (
	// ErrShort reports a prefix that ends before both wanted elements
	// (or the proof of their absence) were read: call again with more.
	ErrShort = errors.New("dicomhead: more bytes are needed")
	// ErrUnreadable is wrapped by every other failure: the object cannot
	// be checked from its header.
	ErrUnreadable = errors.New("dicomhead: the DICOM header cannot be read")
)

// Transfer syntaxes with an encoding of their own.
const (
	tsImplicitLE = "1.2.840.10008.1.2"
	tsDeflatedLE = "1.2.840.10008.1.2.1.99"
	tsExplicitBE = "1.2.840.10008.1.2.2"
)

// maxDepth bounds the nesting of sequences walked to find the end of one.
const maxDepth = 16

// Tags (group << 16 | element).
const (
	tagTransferSyntax = 0x00020010
	tagPatientID      = 0x00100020
	tagStudyUID       = 0x0020000D
	tagItem           = 0xFFFEE000
	tagItemDelim      = 0xFFFEE00D
	tagSeqDelim       = 0xFFFEE0DD
	undefinedLength   = 0xFFFFFFFF
)

// Identity is what a DICOM object's header says about whose it is.
type Identity struct {
	// TransferSyntax is the transfer syntax UID of the file meta.
	TransferSyntax string
	// StudyUIDs are the values of StudyInstanceUID (one, in a valid
	// object; none when the object has none).
	StudyUIDs []string
	// PatientIDs are the values of PatientID (none when the object has
	// none or it is empty).
	PatientIDs []string
	// HeaderLength is how many bytes were read: up to the end of
	// StudyInstanceUID, or to the tag of the first element after where it
	// would be.
	HeaderLength int
}

func unreadable(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnreadable, fmt.Sprintf(format, args...))
}

// Parse reads the identity from b, the first bytes of a DICOM Part 10
// object (128-byte preamble, "DICM", file meta, data set). It returns
// ErrShort while b ends too early; any other error means the object cannot
// be read (not Part 10, a transfer syntax it cannot read, malformed).
// Parse only reads b; it is safe to call again with a longer prefix.
func Parse(b []byte) (Identity, error) {
	var id Identity
	if len(b) < 132 {
		if len(b) > 128 && !strings.HasPrefix("DICM", string(b[128:])) {
			return id, unreadable("no DICM prefix at offset 128: not a Part 10 object")
		}
		return id, ErrShort
	}
	if string(b[128:132]) != "DICM" {
		return id, unreadable("no DICM prefix at offset 128: not a Part 10 object")
	}
	p := &parser{b: b, pos: 132}

	// File meta information: group 0002, explicit VR little endian.
	for {
		if p.pos+4 > len(b) {
			return id, ErrShort
		}
		if binary.LittleEndian.Uint16(b[p.pos:]) != 0x0002 {
			break
		}
		tag, vlen, start, err := p.header(false)
		if err != nil {
			return id, err
		}
		if vlen == undefinedLength {
			return id, unreadable("file meta element (%04X,%04X) has an undefined length", tag>>16, tag&0xFFFF)
		}
		end := start + int(vlen)
		if end > len(b) {
			return id, ErrShort
		}
		if tag == tagTransferSyntax {
			id.TransferSyntax = strings.TrimRight(string(b[start:end]), " \x00")
		}
		p.pos = end
	}
	implicit := false
	switch id.TransferSyntax {
	case "":
		return id, unreadable("the file meta names no transfer syntax")
	case tsDeflatedLE:
		return id, unreadable("a deflated data set cannot be read from its first bytes")
	case tsExplicitBE:
		return id, unreadable("explicit VR big endian is not read")
	case tsImplicitLE:
		implicit = true
	}

	// The data set, up to StudyInstanceUID. Tags must ascend, as PS3.5
	// requires: a repeated PatientID could otherwise say one thing here
	// and another to the client.
	prev, first := uint32(0), true
	for {
		if p.pos+4 > len(b) {
			return id, ErrShort
		}
		tag := p.peekTag()
		if tag > tagStudyUID {
			// Past the place where StudyInstanceUID would be: it is
			// missing. (Item and delimiter tags, group FFFE, land here too.)
			id.HeaderLength = p.pos + 4
			return id, nil
		}
		tag, vlen, start, err := p.header(implicit)
		if err != nil {
			return id, err
		}
		if !first && tag <= prev {
			return id, unreadable("(%04X,%04X) follows (%04X,%04X): tags out of order", tag>>16, tag&0xFFFF, prev>>16, prev&0xFFFF)
		}
		prev, first = tag, false
		if vlen == undefinedLength {
			if tag == tagPatientID || tag == tagStudyUID {
				return id, unreadable("(%04X,%04X) has an undefined length", tag>>16, tag&0xFFFF)
			}
			p.pos = start
			if err := p.skipSequence(p.nestedImplicit(implicit), 1); err != nil {
				return id, err
			}
			continue
		}
		end := start + int(vlen)
		if end < start {
			return id, unreadable("(%04X,%04X) is too long", tag>>16, tag&0xFFFF)
		}
		if end > len(b) {
			return id, ErrShort
		}
		switch tag {
		case tagPatientID:
			id.PatientIDs = values(b[start:end])
		case tagStudyUID:
			id.StudyUIDs = values(b[start:end])
			id.HeaderLength = end
			return id, nil
		}
		p.pos = end
	}
}

// values splits a string value on backslashes, dropping DICOM's padding
// (trailing NUL and spaces). An empty value gives none.
func values(v []byte) []string {
	s := strings.TrimRight(string(v), " \x00")
	if s == "" {
		return nil
	}
	return strings.Split(s, `\`)
}

type parser struct {
	b   []byte
	pos int
	// lastVR is the VR of the element header last read (explicit only).
	lastVR [2]byte
}

func (p *parser) peekTag() uint32 {
	return uint32(binary.LittleEndian.Uint16(p.b[p.pos:]))<<16 | uint32(binary.LittleEndian.Uint16(p.b[p.pos+2:]))
}

// header reads an element header at p.pos and returns its tag, value
// length and the offset of its value. Item and delimiter tags (group
// FFFE) have no VR in either encoding.
func (p *parser) header(implicit bool) (tag, vlen uint32, start int, err error) {
	b := p.b
	if p.pos+8 > len(b) {
		return 0, 0, 0, ErrShort
	}
	tag = p.peekTag()
	p.lastVR = [2]byte{}
	if implicit || tag>>16 == 0xFFFE {
		return tag, binary.LittleEndian.Uint32(b[p.pos+4:]), p.pos + 8, nil
	}
	vr := [2]byte{b[p.pos+4], b[p.pos+5]}
	p.lastVR = vr
	switch string(vr[:]) {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV":
		if p.pos+12 > len(b) {
			return 0, 0, 0, ErrShort
		}
		return tag, binary.LittleEndian.Uint32(b[p.pos+8:]), p.pos + 12, nil
	case "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN",
		"SH", "SL", "SS", "ST", "TM", "UI", "UL", "US":
		return tag, uint32(binary.LittleEndian.Uint16(b[p.pos+6:])), p.pos + 8, nil
	}
	// A VR PS3.5 does not define: its length field's size is a guess,
	// and another reader could guess otherwise.
	return 0, 0, 0, unreadable("element (%04X,%04X) has no valid VR", tag>>16, tag&0xFFFF)
}

// nestedImplicit says how the items of an element of undefined length just
// read are encoded: a UN of undefined length holds implicit VR little
// endian items (PS3.5 §6.2.2); SQ keeps the data set's encoding.
func (p *parser) nestedImplicit(implicit bool) bool {
	return implicit || string(p.lastVR[:]) == "UN"
}

// skipSequence walks the items of a sequence of undefined length whose
// first item starts at p.pos, up to and past its delimiter.
func (p *parser) skipSequence(implicit bool, depth int) error {
	if depth > maxDepth {
		return unreadable("sequences nest deeper than %d", maxDepth)
	}
	if !implicit && p.lastVR != [2]byte{} && string(p.lastVR[:]) != "SQ" && string(p.lastVR[:]) != "UN" {
		return unreadable("a %s element has an undefined length", p.lastVR[:])
	}
	for {
		tag, vlen, start, err := p.header(true)
		if err != nil {
			return err
		}
		switch tag {
		case tagSeqDelim:
			p.pos = start
			return nil
		case tagItem:
		default:
			return unreadable("a sequence holds (%04X,%04X) where an item belongs", tag>>16, tag&0xFFFF)
		}
		if vlen != undefinedLength {
			end := start + int(vlen)
			if end < start {
				return unreadable("an item is too long")
			}
			if end > len(p.b) {
				return ErrShort
			}
			p.pos = end
			continue
		}
		p.pos = start
		if err := p.skipItem(implicit, depth); err != nil {
			return err
		}
	}
}

// skipItem walks the elements of an item of undefined length starting at
// p.pos, up to and past its delimiter.
func (p *parser) skipItem(implicit bool, depth int) error {
	for {
		tag, vlen, start, err := p.header(implicit)
		if err != nil {
			return err
		}
		switch {
		case tag == tagItemDelim:
			p.pos = start
			return nil
		case tag>>16 == 0xFFFE:
			return unreadable("an item holds (%04X,%04X)", tag>>16, tag&0xFFFF)
		}
		if vlen == undefinedLength {
			p.pos = start
			if err := p.skipSequence(p.nestedImplicit(implicit), depth+1); err != nil {
				return err
			}
			continue
		}
		end := start + int(vlen)
		if end < start {
			return unreadable("(%04X,%04X) is too long", tag>>16, tag&0xFFFF)
		}
		if end > len(p.b) {
			return ErrShort
		}
		p.pos = end
	}
}
