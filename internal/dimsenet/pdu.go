// Package dimsenet speaks the DICOM upper layer protocol (PS3.8) and the
// DIMSE-C services (PS3.7) a gateway needs to read from a PACS: an
// association (A-ASSOCIATE, P-DATA, A-RELEASE, A-ABORT), C-ECHO, C-FIND,
// C-GET with its C-STORE sub-operations, and C-MOVE into an in-process
// C-STORE receiver (Listener). Data sets are encoded and decoded with
// github.com/suyashkumar/dicom; command sets (always implicit VR little
// endian, a handful of fixed tags) with the small codec in command.go.
//
// Everything read from the network is bounded: a PDU longer than the
// negotiated maximum, a command set or identifier larger than 1 MiB, a
// malformed item: each is an error (ErrProtocol), never a panic or an
// unbounded allocation.
package dimsenet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// PDU types (PS3.8 §9.3).
const (
	pduAssociateRQ = 0x01
	pduAssociateAC = 0x02
	pduAssociateRJ = 0x03
	pduData        = 0x04
	pduReleaseRQ   = 0x05
	pduReleaseRP   = 0x06
	pduAbort       = 0x07
)

// Item types inside A-ASSOCIATE PDUs.
const (
	itemAppContext    = 0x10
	itemPresContextRQ = 0x20
	itemPresContextAC = 0x21
	itemAbstract      = 0x30
	itemTransfer      = 0x40
	itemUserInfo      = 0x50
	subMaxLength      = 0x51
	subImplClass      = 0x52
	subAsyncOps       = 0x53
	subRoleSelection  = 0x54
	subImplVersion    = 0x55
)

// applicationContext is the DICOM application context name.
const applicationContext = "1.2.840.10008.3.1.1.1"

// ErrProtocol marks input that breaks the DICOM upper layer protocol.
var ErrProtocol = errors.New("dicom protocol error")

// maxAssociatePDU bounds an A-ASSOCIATE PDU we read (they are small; 128
// presentation contexts with a few transfer syntaxes each stay far below).
const maxAssociatePDU = 1 << 20

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// rawPDU is a PDU as read from the wire: its type and body.
type rawPDU struct {
	typ  byte
	body []byte
}

// readPDU reads one PDU. Bodies longer than limit are refused before any
// allocation.
func readPDU(r io.Reader, limit uint32) (rawPDU, error) {
	var h [6]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return rawPDU{}, err
	}
	n := binary.BigEndian.Uint32(h[2:6])
	max := limit
	if h[0] == pduAssociateRQ || h[0] == pduAssociateAC {
		max = maxAssociatePDU
	}
	if h[0] < pduAssociateRQ || h[0] > pduAbort {
		return rawPDU{}, protoErr("unknown PDU type 0x%02x", h[0])
	}
	if n > max {
		return rawPDU{}, protoErr("PDU of %d bytes exceeds the limit of %d", n, max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return rawPDU{}, fmt.Errorf("read PDU body: %w", err)
	}
	return rawPDU{typ: h[0], body: body}, nil
}

// writePDU writes one PDU.
func writePDU(w io.Writer, typ byte, body []byte) error {
	b := make([]byte, 6, 6+len(body))
	b[0] = typ
	binary.BigEndian.PutUint32(b[2:6], uint32(len(body)))
	b = append(b, body...)
	_, err := w.Write(b)
	return err
}

// PresentationContext is one abstract syntax offered with its transfer
// syntaxes. After negotiation Accepted holds the one transfer syntax the
// acceptor chose ("" when it refused the context).
type PresentationContext struct {
	ID               byte
	AbstractSyntax   string
	TransferSyntaxes []string
	// SCPRole, in a request, asks for the SCP role for this SOP class (the
	// C-GET requester stores what the PACS sends back).
	SCPRole  bool
	Accepted string
	Result   byte
}

// associate is an A-ASSOCIATE-RQ or -AC.
type associate struct {
	calledAE, callingAE string
	contexts            []PresentationContext
	maxLength           uint32
	implClass           string
	implVersion         string
	roles               map[string][2]bool // SOP class → SCU role, SCP role
}

// ImplementationClassUID names this implementation in associations.
const ImplementationClassUID = "1.2.826.0.1.3680043.10.1392.1"

// ImplementationVersion is the implementation version name (at most 16 chars).
const ImplementationVersion = "SMART_IMAGING_1"

func padAE(s string) []byte {
	b := []byte(fmt.Sprintf("%-16s", s))
	return b[:16]
}

func putItem(buf *bytes.Buffer, typ byte, value []byte) {
	buf.WriteByte(typ)
	buf.WriteByte(0)
	var l [2]byte
	binary.BigEndian.PutUint16(l[:], uint16(len(value)))
	buf.Write(l[:])
	buf.Write(value)
}

// encode builds the PDU body of an A-ASSOCIATE-RQ (ac false) or -AC.
func (a *associate) encode(ac bool) []byte {
	var buf bytes.Buffer
	buf.Write([]byte{0x00, 0x01, 0x00, 0x00}) // protocol version, reserved
	buf.Write(padAE(a.calledAE))
	buf.Write(padAE(a.callingAE))
	buf.Write(make([]byte, 32))
	putItem(&buf, itemAppContext, []byte(applicationContext))
	for _, pc := range a.contexts {
		var sub bytes.Buffer
		if ac {
			sub.Write([]byte{pc.ID, 0, pc.Result, 0})
			putItem(&sub, itemTransfer, []byte(pc.Accepted))
			putItem(&buf, itemPresContextAC, sub.Bytes())
			continue
		}
		sub.Write([]byte{pc.ID, 0, 0, 0})
		putItem(&sub, itemAbstract, []byte(pc.AbstractSyntax))
		for _, ts := range pc.TransferSyntaxes {
			putItem(&sub, itemTransfer, []byte(ts))
		}
		putItem(&buf, itemPresContextRQ, sub.Bytes())
	}
	var ui bytes.Buffer
	var ml [4]byte
	binary.BigEndian.PutUint32(ml[:], a.maxLength)
	putItem(&ui, subMaxLength, ml[:])
	putItem(&ui, subImplClass, []byte(ImplementationClassUID))
	for _, sop := range sortedKeys(a.roles) {
		r := a.roles[sop]
		var rs bytes.Buffer
		var l [2]byte
		binary.BigEndian.PutUint16(l[:], uint16(len(sop)))
		rs.Write(l[:])
		rs.WriteString(sop)
		rs.WriteByte(boolByte(r[0]))
		rs.WriteByte(boolByte(r[1]))
		putItem(&ui, subRoleSelection, rs.Bytes())
	}
	putItem(&ui, subImplVersion, []byte(ImplementationVersion))
	putItem(&buf, itemUserInfo, ui.Bytes())
	return buf.Bytes()
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// trimUID drops the NUL and space padding a UID may carry on the wire.
func trimUID(b []byte) string {
	return strings.TrimRight(string(b), "\x00 ")
}

// decodeAssociate parses an A-ASSOCIATE-RQ or -AC body.
func decodeAssociate(body []byte, ac bool) (*associate, error) {
	if len(body) < 68 {
		return nil, protoErr("A-ASSOCIATE PDU of %d bytes is too short", len(body))
	}
	a := &associate{
		calledAE:  strings.TrimSpace(string(body[4:20])),
		callingAE: strings.TrimSpace(string(body[20:36])),
		roles:     map[string][2]bool{},
	}
	items := body[68:]
	for len(items) > 0 {
		typ, value, rest, err := nextItem(items)
		if err != nil {
			return nil, err
		}
		items = rest
		switch typ {
		case itemAppContext:
			if trimUID(value) != applicationContext {
				return nil, protoErr("unknown application context %q", trimUID(value))
			}
		case itemPresContextRQ, itemPresContextAC:
			if len(value) < 4 {
				return nil, protoErr("presentation context item too short")
			}
			pc := PresentationContext{ID: value[0], Result: value[2]}
			subs := value[4:]
			for len(subs) > 0 {
				st, sv, srest, err := nextItem(subs)
				if err != nil {
					return nil, err
				}
				subs = srest
				switch st {
				case itemAbstract:
					pc.AbstractSyntax = trimUID(sv)
				case itemTransfer:
					pc.TransferSyntaxes = append(pc.TransferSyntaxes, trimUID(sv))
				}
			}
			if ac && len(pc.TransferSyntaxes) > 0 {
				pc.Accepted = pc.TransferSyntaxes[0]
			}
			a.contexts = append(a.contexts, pc)
		case itemUserInfo:
			subs := value
			for len(subs) > 0 {
				st, sv, srest, err := nextItem(subs)
				if err != nil {
					return nil, err
				}
				subs = srest
				switch st {
				case subMaxLength:
					if len(sv) != 4 {
						return nil, protoErr("maximum length item of %d bytes", len(sv))
					}
					a.maxLength = binary.BigEndian.Uint32(sv)
				case subImplClass:
					a.implClass = trimUID(sv)
				case subImplVersion:
					a.implVersion = strings.TrimSpace(string(sv))
				case subRoleSelection:
					if len(sv) < 2 {
						return nil, protoErr("role selection item too short")
					}
					n := int(binary.BigEndian.Uint16(sv[:2]))
					if len(sv) != 2+n+2 {
						return nil, protoErr("role selection item of the wrong length")
					}
					a.roles[trimUID(sv[2:2+n])] = [2]bool{sv[2+n] == 1, sv[3+n] == 1}
				}
			}
		}
	}
	return a, nil
}

// nextItem splits one item (type, reserved, 2-byte length, value) off b.
func nextItem(b []byte) (byte, []byte, []byte, error) {
	if len(b) < 4 {
		return 0, nil, nil, protoErr("truncated item header")
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if len(b) < 4+n {
		return 0, nil, nil, protoErr("item 0x%02x of %d bytes runs past its PDU", b[0], n)
	}
	return b[0], b[4 : 4+n], b[4+n:], nil
}

// pdv is one presentation data value of a P-DATA-TF PDU.
type pdv struct {
	contextID byte
	command   bool
	last      bool
	data      []byte
}

// decodePData splits a P-DATA-TF body into its PDVs.
func decodePData(body []byte) ([]pdv, error) {
	var out []pdv
	for len(body) > 0 {
		if len(body) < 6 {
			return nil, protoErr("truncated PDV header")
		}
		n := binary.BigEndian.Uint32(body[:4])
		if n < 2 || uint64(n) > uint64(len(body)-4) {
			return nil, protoErr("PDV of %d bytes does not fit its PDU", n)
		}
		ctrl := body[5]
		out = append(out, pdv{contextID: body[4], command: ctrl&1 != 0, last: ctrl&2 != 0, data: body[6 : 4+n]})
		body = body[4+n:]
	}
	if len(out) == 0 {
		return nil, protoErr("P-DATA-TF without a PDV")
	}
	return out, nil
}

// RejectError is an A-ASSOCIATE-RJ: the PACS refused the association.
type RejectError struct {
	Result, Source, Reason byte
}

func (e *RejectError) Error() string {
	why := map[[2]byte]string{
		{1, 1}: "no reason given", {1, 2}: "application context name not supported",
		{1, 3}: "calling AE title not recognized", {1, 7}: "called AE title not recognized",
		{2, 1}: "no reason given", {2, 2}: "protocol version not supported",
		{3, 1}: "temporary congestion", {3, 2}: "local limit exceeded",
	}[[2]byte{e.Source, e.Reason}]
	if why == "" {
		why = fmt.Sprintf("source %d reason %d", e.Source, e.Reason)
	}
	kind := "permanently"
	if e.Result == 2 {
		kind = "transiently"
	}
	return fmt.Sprintf("the PACS %s rejected the association: %s", kind, why)
}

// AbortError is an A-ABORT received from the peer.
type AbortError struct{ Source, Reason byte }

func (e *AbortError) Error() string {
	return fmt.Sprintf("the peer aborted the association (source %d, reason %d)", e.Source, e.Reason)
}
