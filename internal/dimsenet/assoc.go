package dimsenet

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"time"
)

// Config names the two application entities of an association and bounds
// its waits.
type Config struct {
	// CallingAE is our AE title; CalledAE the peer's.
	CallingAE, CalledAE string
	// Timeout bounds the connection, each wait for the peer's next PDU and
	// each write. Default 30s.
	Timeout time.Duration
	// MaxPDU is the largest P-DATA-TF body we accept. Default 256 KiB.
	MaxPDU uint32
}

const (
	defaultTimeout = 30 * time.Second
	defaultMaxPDU  = 256 << 10
	// sendChunk is the PDV size we send when the peer sets no maximum.
	sendChunk = 64 << 10
)

func (c Config) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return defaultTimeout
}

func (c Config) maxPDU() uint32 {
	if c.MaxPDU >= 4096 {
		return c.MaxPDU
	}
	return defaultMaxPDU
}

// ErrReleased reports that the peer released the association.
var ErrReleased = errors.New("the peer released the association")

// Assoc is an established association. It is not safe for concurrent use:
// one DIMSE operation at a time.
type Assoc struct {
	conn    net.Conn
	br      *bufio.Reader
	timeout time.Duration
	maxRecv uint32
	maxSend uint32
	// contexts are the accepted presentation contexts by ID.
	contexts map[byte]*PresentationContext
	pending  []pdv
	data     *dataReader // the data set being read, if any
	msgID    uint16
	closed   bool
	mu       sync.Mutex // guards closed against the context watcher
}

// Dial opens a TCP connection to addr and negotiates an association
// proposing pcs (odd IDs are assigned when zero). It fails with a
// *RejectError when the peer refuses, and when no context was accepted.
func Dial(ctx context.Context, addr string, cfg Config, pcs []PresentationContext) (*Assoc, error) {
	d := net.Dialer{Timeout: cfg.timeout()}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	a := &Assoc{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), timeout: cfg.timeout(), maxRecv: cfg.maxPDU(),
		contexts: map[byte]*PresentationContext{}}
	stop := a.watch(ctx)
	err = a.request(cfg, pcs)
	if stop() && err != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return a, nil
}

func (a *Assoc) request(cfg Config, pcs []PresentationContext) error {
	rq := &associate{calledAE: cfg.CalledAE, callingAE: cfg.CallingAE, maxLength: a.maxRecv, roles: map[string][2]bool{}}
	proposed := map[byte]PresentationContext{}
	next := byte(1)
	for _, pc := range pcs {
		if pc.ID == 0 {
			pc.ID = next
		}
		next = pc.ID + 2
		if pc.SCPRole {
			rq.roles[pc.AbstractSyntax] = [2]bool{false, true}
		}
		rq.contexts = append(rq.contexts, pc)
		proposed[pc.ID] = pc
	}
	a.deadline()
	if err := writePDU(a.conn, pduAssociateRQ, rq.encode(false)); err != nil {
		return fmt.Errorf("send A-ASSOCIATE-RQ: %w", err)
	}
	p, err := readPDU(a.br, a.maxRecv)
	if err != nil {
		return fmt.Errorf("read the answer to A-ASSOCIATE-RQ: %w", err)
	}
	switch p.typ {
	case pduAssociateAC:
	case pduAssociateRJ:
		if len(p.body) < 4 {
			return protoErr("short A-ASSOCIATE-RJ")
		}
		return &RejectError{Result: p.body[1], Source: p.body[2], Reason: p.body[3]}
	case pduAbort:
		return abortFrom(p.body)
	default:
		return protoErr("answer to A-ASSOCIATE-RQ is PDU type 0x%02x", p.typ)
	}
	ac, err := decodeAssociate(p.body, true)
	if err != nil {
		return err
	}
	a.maxSend = ac.maxLength
	for _, got := range ac.contexts {
		want, ok := proposed[got.ID]
		if !ok || got.Result != 0 {
			continue
		}
		if !contains(want.TransferSyntaxes, got.Accepted) {
			return protoErr("the peer accepted context %d with transfer syntax %q, which was not proposed", got.ID, got.Accepted)
		}
		pc := want
		pc.Accepted, pc.Result = got.Accepted, 0
		a.contexts[got.ID] = &pc
	}
	if len(a.contexts) == 0 {
		a.abort()
		return errors.New("the PACS accepted none of the proposed presentation contexts")
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func abortFrom(body []byte) error {
	if len(body) >= 4 {
		return &AbortError{Source: body[2], Reason: body[3]}
	}
	return &AbortError{}
}

// watch makes ctx's end interrupt the connection; the returned stop
// reports whether ctx ended.
func (a *Assoc) watch(ctx context.Context) (stop func() bool) {
	if ctx.Done() == nil {
		return func() bool { return false }
	}
	done := make(chan struct{})
	var fired bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			fired = true
			a.conn.SetDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()
	return func() bool {
		close(done)
		wg.Wait()
		return fired
	}
}

func (a *Assoc) deadline() {
	a.conn.SetDeadline(time.Now().Add(a.timeout))
}

// Context returns the accepted presentation context for a SOP class, or
// nil.
func (a *Assoc) Context(abstract string) *PresentationContext {
	ids := make([]int, 0, len(a.contexts))
	for id := range a.contexts {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	for _, id := range ids {
		if pc := a.contexts[byte(id)]; pc.AbstractSyntax == abstract {
			return pc
		}
	}
	return nil
}

// nextPDV returns the next PDV, reading PDUs as needed.
func (a *Assoc) nextPDV() (pdv, error) {
	for len(a.pending) == 0 {
		a.deadline()
		if a.br.Buffered() == 0 {
			quickAck(a.conn)
		}
		p, err := readPDU(a.br, a.maxRecv)
		if err != nil {
			return pdv{}, err
		}
		switch p.typ {
		case pduData:
			pdvs, err := decodePData(p.body)
			if err != nil {
				return pdv{}, err
			}
			a.pending = pdvs
		case pduReleaseRQ:
			a.deadline()
			writePDU(a.conn, pduReleaseRP, make([]byte, 4))
			a.close()
			return pdv{}, ErrReleased
		case pduAbort:
			a.close()
			return pdv{}, abortFrom(p.body)
		default:
			return pdv{}, protoErr("unexpected PDU type 0x%02x during data transfer", p.typ)
		}
	}
	v := a.pending[0]
	a.pending = a.pending[1:]
	return v, nil
}

// message is a received DIMSE message. Data, when the message carries a
// data set, streams it; it must be read to the end or left to the next
// readMessage, which drains it.
type message struct {
	contextID byte
	cmd       command
	data      *dataReader
}

// readMessage reads the next command set and sets up its data set reader.
func (a *Assoc) readMessage() (*message, error) {
	if a.data != nil {
		if _, err := io.Copy(io.Discard, a.data); err != nil {
			return nil, err
		}
		a.data = nil
	}
	var buf []byte
	var ctxID byte
	for {
		v, err := a.nextPDV()
		if err != nil {
			return nil, err
		}
		if !v.command {
			return nil, protoErr("data set fragment where a command was expected")
		}
		if len(buf) > 0 && v.contextID != ctxID {
			return nil, protoErr("command fragments on two presentation contexts")
		}
		ctxID = v.contextID
		if len(buf)+len(v.data) > maxCommand {
			return nil, protoErr("command set larger than %d bytes", maxCommand)
		}
		buf = append(buf, v.data...)
		if v.last {
			break
		}
	}
	if a.contexts[ctxID] == nil {
		return nil, protoErr("message on presentation context %d, which was not accepted", ctxID)
	}
	cmd, err := decodeCommand(buf)
	if err != nil {
		return nil, err
	}
	m := &message{contextID: ctxID, cmd: cmd}
	if cmd.hasDataSet() {
		a.data = &dataReader{a: a, contextID: ctxID}
		m.data = a.data
	}
	return m, nil
}

// dataReader streams the data set PDVs of one message.
type dataReader struct {
	a         *Assoc
	contextID byte
	cur       []byte
	done      bool
}

func (d *dataReader) Read(p []byte) (int, error) {
	for len(d.cur) == 0 {
		if d.done {
			return 0, io.EOF
		}
		v, err := d.a.nextPDV()
		if err != nil {
			return 0, err
		}
		if v.command || v.contextID != d.contextID {
			return 0, protoErr("a command or another context's data inside a data set")
		}
		d.cur, d.done = v.data, v.last
	}
	n := copy(p, d.cur)
	d.cur = d.cur[n:]
	return n, nil
}

// readAll reads a whole (small) data set, refusing more than limit bytes.
func (d *dataReader) readAll(limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(d, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, protoErr("data set larger than %d bytes", limit)
	}
	return b, nil
}

// sendMessage sends a command set and, when data is not nil, its data set,
// in PDVs that fit the peer's maximum.
func (a *Assoc) sendMessage(contextID byte, cmd command, data io.Reader) error {
	if data == nil {
		cmd.setU16(tagDataSetType, noDataSet)
	} else {
		cmd.setU16(tagDataSetType, 0x0001)
	}
	if err := a.sendPDVs(contextID, true, readerOf(cmd.encode())); err != nil {
		return fmt.Errorf("send command: %w", err)
	}
	if data != nil {
		if err := a.sendPDVs(contextID, false, data); err != nil {
			return fmt.Errorf("send data set: %w", err)
		}
	}
	return nil
}

func (a *Assoc) chunk() int {
	if a.maxSend == 0 || a.maxSend > sendChunk+6 {
		return sendChunk
	}
	if a.maxSend < 64 {
		return 58
	}
	return int(a.maxSend) - 6
}

// sendPDVs sends r as PDVs, one per P-DATA-TF PDU, the last one marked.
func (a *Assoc) sendPDVs(contextID byte, isCommand bool, r io.Reader) error {
	size := a.chunk()
	buf := make([]byte, 12+size)
	ctrl := byte(0)
	if isCommand {
		ctrl = 1
	}
	// Read one chunk ahead so the last one can be marked.
	cur, err := io.ReadFull(r, buf[12:12+size])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return err
	}
	for {
		last := cur < size
		var next []byte
		n2 := 0
		if !last {
			next = make([]byte, size)
			n2, err = io.ReadFull(r, next)
			if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
				return err
			}
			last = n2 == 0
		}
		c := ctrl
		if last {
			c |= 2
		}
		buf[0] = pduData
		buf[1] = 0
		binary.BigEndian.PutUint32(buf[2:6], uint32(6+cur))
		binary.BigEndian.PutUint32(buf[6:10], uint32(2+cur))
		buf[10], buf[11] = contextID, c
		a.deadline()
		if _, err := a.conn.Write(buf[:12+cur]); err != nil {
			return err
		}
		if last {
			return nil
		}
		copy(buf[12:], next[:n2])
		cur = n2
	}
}

type byteReader struct {
	b []byte
}

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func readerOf(b []byte) io.Reader { return &byteReader{b: b} }

func (a *Assoc) nextID() uint16 {
	a.msgID++
	if a.msgID == 0 {
		a.msgID = 1
	}
	return a.msgID
}

// Release ends the association politely (A-RELEASE-RQ, wait for the RP)
// and closes the connection.
func (a *Assoc) Release() error {
	if a.isClosed() {
		return nil
	}
	defer a.close()
	a.deadline()
	if err := writePDU(a.conn, pduReleaseRQ, make([]byte, 4)); err != nil {
		return fmt.Errorf("send A-RELEASE-RQ: %w", err)
	}
	for {
		p, err := readPDU(a.br, a.maxRecv)
		if err != nil {
			return fmt.Errorf("wait for A-RELEASE-RP: %w", err)
		}
		switch p.typ {
		case pduReleaseRP:
			return nil
		case pduAbort:
			return abortFrom(p.body)
		case pduData:
			continue // late answers of a cancelled operation
		default:
			return protoErr("answer to A-RELEASE-RQ is PDU type 0x%02x", p.typ)
		}
	}
}

// Abort sends an A-ABORT and closes the connection.
func (a *Assoc) Abort() { a.abort() }

func (a *Assoc) abort() {
	if a.isClosed() {
		return
	}
	a.conn.SetWriteDeadline(time.Now().Add(time.Second))
	writePDU(a.conn, pduAbort, []byte{0, 0, 0, 0})
	a.close()
}

func (a *Assoc) isClosed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

func (a *Assoc) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.closed = true
		a.conn.Close()
	}
}
