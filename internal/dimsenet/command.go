package dimsenet

import (
	"bytes"
	"encoding/binary"
	"sort"
	"strings"
)

// Command fields (PS3.7 §E.1).
const (
	cStoreRQ  = 0x0001
	cStoreRSP = 0x8001
	cGetRQ    = 0x0010
	cGetRSP   = 0x8010
	cFindRQ   = 0x0020
	cFindRSP  = 0x8020
	cMoveRQ   = 0x0021
	cMoveRSP  = 0x8021
	cEchoRQ   = 0x0030
	cEchoRSP  = 0x8030
	cCancelRQ = 0x0FFF
)

// Command set elements (group 0000) this package reads or writes.
const (
	tagGroupLength        = 0x0000
	tagAffectedSOPClass   = 0x0002
	tagRequestedSOPClass  = 0x0003
	tagCommandField       = 0x0100
	tagMessageID          = 0x0110
	tagRespondedTo        = 0x0120
	tagMoveDestination    = 0x0600
	tagPriority           = 0x0700
	tagDataSetType        = 0x0800
	tagStatus             = 0x0900
	tagErrorComment       = 0x0902
	tagAffectedSOPInst    = 0x1000
	tagRemaining          = 0x1020
	tagCompleted          = 0x1021
	tagFailed             = 0x1022
	tagWarning            = 0x1023
	tagMoveOriginatorAE   = 0x1030
	tagMoveOriginatorMsgI = 0x1031
)

// noDataSet is the CommandDataSetType value meaning "no data set follows".
const noDataSet = 0x0101

// Status codes (PS3.7 Annex C).
const (
	StatusSuccess       = 0x0000
	StatusPending       = 0xFF00
	StatusPendingWarn   = 0xFF01
	StatusCancel        = 0xFE00
	StatusSubOpsWarning = 0xB000
	// StatusRefused is what the C-STORE receiver answers for an instance
	// it will not keep ("cannot understand").
	StatusRefused = 0xC000
	// StatusOutOfResources is answered when the receiver cannot store.
	StatusOutOfResources = 0xA700
)

// command is a decoded command set: element number → raw value.
type command map[uint16][]byte

var commandVRs = map[uint16]byte{ // 'U' UI/AE/LO strings, 'S' US, 'L' UL
	tagGroupLength: 'L', tagAffectedSOPClass: 'U', tagRequestedSOPClass: 'U',
	tagCommandField: 'S', tagMessageID: 'S', tagRespondedTo: 'S', tagMoveDestination: 'A',
	tagPriority: 'S', tagDataSetType: 'S', tagStatus: 'S', tagErrorComment: 'A',
	tagAffectedSOPInst: 'U', tagRemaining: 'S', tagCompleted: 'S', tagFailed: 'S', tagWarning: 'S',
	tagMoveOriginatorAE: 'A', tagMoveOriginatorMsgI: 'S',
}

func (c command) u16(el uint16) (uint16, bool) {
	v, ok := c[el]
	if !ok || len(v) != 2 {
		return 0, false
	}
	return binary.LittleEndian.Uint16(v), true
}

func (c command) str(el uint16) string {
	return strings.TrimRight(string(c[el]), "\x00 ")
}

func (c command) setU16(el uint16, v uint16) {
	b := make([]byte, 2)
	binary.LittleEndian.PutUint16(b, v)
	c[el] = b
}

func (c command) setStr(el uint16, s string) {
	b := []byte(s)
	if len(b)%2 == 1 {
		if commandVRs[el] == 'U' {
			b = append(b, 0)
		} else {
			b = append(b, ' ')
		}
	}
	c[el] = b
}

func (c command) hasDataSet() bool {
	t, ok := c.u16(tagDataSetType)
	return ok && t != noDataSet
}

// encode writes the command set in implicit VR little endian with its group
// length first.
func (c command) encode() []byte {
	els := make([]int, 0, len(c))
	for el := range c {
		if el != tagGroupLength {
			els = append(els, int(el))
		}
	}
	sort.Ints(els)
	var body bytes.Buffer
	var h [8]byte
	for _, el := range els {
		v := c[uint16(el)]
		binary.LittleEndian.PutUint16(h[0:2], 0)
		binary.LittleEndian.PutUint16(h[2:4], uint16(el))
		binary.LittleEndian.PutUint32(h[4:8], uint32(len(v)))
		body.Write(h[:])
		body.Write(v)
	}
	out := make([]byte, 12, 12+body.Len())
	binary.LittleEndian.PutUint32(out[4:8], 4)
	binary.LittleEndian.PutUint32(out[8:12], uint32(body.Len()))
	return append(out, body.Bytes()...)
}

// maxCommand bounds a command set (they hold a few dozen bytes).
const maxCommand = 64 << 10

// decodeCommand parses an implicit VR little endian command set. Elements
// outside group 0000 are a protocol error; unknown group 0000 elements are
// kept.
func decodeCommand(b []byte) (command, error) {
	c := command{}
	for len(b) > 0 {
		if len(b) < 8 {
			return nil, protoErr("truncated command element")
		}
		g := binary.LittleEndian.Uint16(b[0:2])
		el := binary.LittleEndian.Uint16(b[2:4])
		n := binary.LittleEndian.Uint32(b[4:8])
		if g != 0 {
			return nil, protoErr("command set holds element (%04x,%04x)", g, el)
		}
		if uint64(n) > uint64(len(b)-8) {
			return nil, protoErr("command element (0000,%04x) of %d bytes runs past the command", el, n)
		}
		c[el] = b[8 : 8+n]
		b = b[8+n:]
	}
	if _, ok := c.u16(tagCommandField); !ok {
		return nil, protoErr("command set without a command field")
	}
	return c, nil
}
