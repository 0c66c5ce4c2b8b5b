package dimsenet

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// The parsers that see network input: PDUs, A-ASSOCIATE items, PDVs,
// command sets, data sets. None may panic or allocate beyond its bounds.

func seedPDUs(f *testing.F) {
	rq := &associate{calledAE: "PACS", callingAE: "GW", maxLength: 16384, roles: map[string][2]bool{"1.2.3": {false, true}}}
	for _, pc := range GetContexts()[:3] {
		rq.contexts = append(rq.contexts, pc)
	}
	body := rq.encode(false)
	var b bytes.Buffer
	writePDU(&b, pduAssociateRQ, body)
	f.Add(b.Bytes())
	ac := &associate{calledAE: "PACS", callingAE: "GW", maxLength: 16384,
		contexts: []PresentationContext{{ID: 1, Accepted: ExplicitVRLittleEndian}}}
	b.Reset()
	writePDU(&b, pduAssociateAC, ac.encode(true))
	f.Add(b.Bytes())
	cmd := command{}
	cmd.setStr(tagAffectedSOPClass, Verification)
	cmd.setU16(tagCommandField, cEchoRSP)
	cmd.setU16(tagStatus, 0)
	cmd.setU16(tagDataSetType, noDataSet)
	enc := cmd.encode()
	pd := append([]byte{0, 0, 0, byte(len(enc) + 2), 1, 3}, enc...)
	b.Reset()
	writePDU(&b, pduData, pd)
	f.Add(b.Bytes())
	f.Add([]byte{pduAbort, 0, 0, 0, 0, 4, 0, 0, 2, 1})
	f.Add([]byte{pduAssociateRJ, 0, 0, 0, 0, 4, 0, 1, 1, 7})
}

func FuzzPDU(f *testing.F) {
	seedPDUs(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			p, err := readPDU(r, 1<<16)
			if err != nil {
				return
			}
			switch p.typ {
			case pduAssociateRQ, pduAssociateAC:
				a, err := decodeAssociate(p.body, p.typ == pduAssociateAC)
				if err == nil {
					// What decodes encodes again.
					_ = a.encode(p.typ == pduAssociateAC)
				}
			case pduData:
				pdvs, err := decodePData(p.body)
				if err != nil {
					continue
				}
				for _, v := range pdvs {
					if v.command {
						decodeCommand(v.data)
					} else {
						DecodeDataSet(v.data, ImplicitVRLittleEndian)
					}
				}
			}
		}
	})
}

// byteConn is a net.Conn that reads from a fixed byte slice and discards
// writes.
type byteConn struct{ r io.Reader }

func (c *byteConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *byteConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *byteConn) Close() error                     { return nil }
func (c *byteConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *byteConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *byteConn) SetDeadline(time.Time) error      { return nil }
func (c *byteConn) SetReadDeadline(time.Time) error  { return nil }
func (c *byteConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzAnswers feeds arbitrary PDUs to a C-FIND and a C-GET in progress, as
// a hostile or broken PACS would send them.
func FuzzAnswers(f *testing.F) {
	seedPDUs(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, op := range []string{"find", "get"} {
			conn := &byteConn{r: bytes.NewReader(b)}
			a := &Assoc{conn: conn, br: bufio.NewReader(conn), timeout: time.Second, maxRecv: 1 << 16,
				contexts: map[byte]*PresentationContext{
					1: {ID: 1, AbstractSyntax: StudyRootFind, Accepted: ImplicitVRLittleEndian},
					3: {ID: 3, AbstractSyntax: StudyRootGet, Accepted: ExplicitVRLittleEndian},
					5: {ID: 5, AbstractSyntax: StorageClasses[0], Accepted: ExplicitVRLittleEndian},
				}}
			keys := []Key{{tag.QueryRetrieveLevel, "STUDY"}, {tag.StudyInstanceUID, "1.2.3"}}
			if op == "find" {
				a.Find(context.Background(), keys, func(dicom.Dataset) error { return nil })
				continue
			}
			a.Get(context.Background(), keys, func(req StoreRequest) uint16 {
				io.Copy(io.Discard, io.LimitReader(req.Data, 1<<20))
				return StatusSuccess
			})
		}
	})
}
