package dimsenet

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"
)

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ListenerConfig configures a C-STORE receiver.
type ListenerConfig struct {
	// AE is the receiver's AE title: associations calling another title
	// are rejected.
	AE string
	// AcceptCalling, when set, decides which calling AE titles may
	// associate (the PACS's); others are rejected.
	AcceptCalling func(callingAE string) bool
	// Store receives every instance.
	Store StoreHandler
	// Timeout bounds each wait for the peer. Default 30s.
	Timeout time.Duration
	// MaxPDU is the largest P-DATA-TF body accepted. Default 256 KiB.
	MaxPDU uint32
	// MaxAssociations bounds the associations served at once. Default 16.
	MaxAssociations int
	// OnError, when set, is told about associations that ended in error.
	OnError func(error)
}

// Listener is an in-process C-STORE SCP (and Verification SCP): the
// destination of C-MOVE.
type Listener struct {
	cfg   ListenerConfig
	ln    net.Listener
	sem   chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
	done  bool
}

// Listen starts a receiver on addr ("127.0.0.1:11112", ":0").
func Listen(addr string, cfg ListenerConfig) (*Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dimse listener: %w", err)
	}
	return Serve(ln, cfg)
}

// Serve runs a receiver on ln (which Close closes).
func Serve(ln net.Listener, cfg ListenerConfig) (*Listener, error) {
	if cfg.Store == nil {
		ln.Close()
		return nil, errors.New("dimse listener: no store handler")
	}
	if cfg.MaxAssociations <= 0 {
		cfg.MaxAssociations = 16
	}
	l := &Listener{cfg: cfg, ln: ln, sem: make(chan struct{}, cfg.MaxAssociations), conns: map[net.Conn]bool{}}
	l.wg.Add(1)
	go l.serve()
	return l, nil
}

// Addr is the address the receiver listens on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops accepting, closes the associations in progress and waits for
// their goroutines.
func (l *Listener) Close() error {
	l.mu.Lock()
	l.done = true
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	err := l.ln.Close()
	l.wg.Wait()
	return err
}

func (l *Listener) serve() {
	defer l.wg.Done()
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		select {
		case l.sem <- struct{}{}:
		default:
			// Too many associations: reject transiently (local limit).
			conn.SetDeadline(time.Now().Add(time.Second))
			writePDU(conn, pduAssociateRJ, []byte{0, 2, 3, 2})
			conn.Close()
			continue
		}
		l.mu.Lock()
		if l.done {
			l.mu.Unlock()
			conn.Close()
			<-l.sem
			return
		}
		l.conns[conn] = true
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() { <-l.sem }()
			err := l.handle(conn)
			l.mu.Lock()
			delete(l.conns, conn)
			l.mu.Unlock()
			conn.Close()
			if err != nil && l.cfg.OnError != nil {
				l.cfg.OnError(err)
			}
		}()
	}
}

// acceptTransferSyntax picks, from what the sender offers, explicit VR
// little endian, then implicit, then the first one offered (a compressed
// instance is kept as the PACS stores it).
func acceptTransferSyntax(offered []string) string {
	for _, want := range []string{ExplicitVRLittleEndian, ImplicitVRLittleEndian} {
		if contains(offered, want) {
			return want
		}
	}
	for _, ts := range offered {
		if _, ok := Implicit(ts); ok {
			return ts
		}
	}
	return ""
}

// handle serves one association.
func (l *Listener) handle(conn net.Conn) error {
	cfg := Config{CalledAE: l.cfg.AE, Timeout: l.cfg.Timeout, MaxPDU: l.cfg.MaxPDU}
	a := &Assoc{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), timeout: cfg.timeout(), maxRecv: cfg.maxPDU(),
		contexts: map[byte]*PresentationContext{}}
	a.deadline()
	p, err := readPDU(a.br, a.maxRecv)
	if err != nil {
		return fmt.Errorf("dimse listener: read A-ASSOCIATE-RQ: %w", err)
	}
	if p.typ != pduAssociateRQ {
		a.abort()
		return protoErr("dimse listener: first PDU is type 0x%02x", p.typ)
	}
	rq, err := decodeAssociate(p.body, false)
	if err != nil {
		a.abort()
		return fmt.Errorf("dimse listener: %w", err)
	}
	reject := func(reason byte) error {
		writePDU(conn, pduAssociateRJ, []byte{0, 1, 1, reason})
		return fmt.Errorf("dimse listener: rejected an association from %q to %q", rq.callingAE, rq.calledAE)
	}
	if !strings.EqualFold(strings.TrimSpace(rq.calledAE), strings.TrimSpace(l.cfg.AE)) {
		return reject(7)
	}
	if l.cfg.AcceptCalling != nil && !l.cfg.AcceptCalling(rq.callingAE) {
		return reject(3)
	}
	ac := &associate{calledAE: rq.calledAE, callingAE: rq.callingAE, maxLength: a.maxRecv, roles: map[string][2]bool{}}
	for _, pc := range rq.contexts {
		out := PresentationContext{ID: pc.ID, AbstractSyntax: pc.AbstractSyntax}
		switch {
		case pc.AbstractSyntax == "":
			out.Result = 1
		case isQueryClass(pc.AbstractSyntax):
			out.Result = 3 // abstract syntax not supported: we store only
		default:
			out.Accepted = acceptTransferSyntax(pc.TransferSyntaxes)
			if out.Accepted == "" {
				out.Result = 4
			}
		}
		if out.Result == 0 {
			c := out
			a.contexts[pc.ID] = &c
		} else {
			out.Accepted = ImplicitVRLittleEndian // the AC item needs one
		}
		ac.contexts = append(ac.contexts, out)
	}
	a.maxSend = rq.maxLength
	a.deadline()
	if err := writePDU(conn, pduAssociateAC, ac.encode(true)); err != nil {
		return fmt.Errorf("dimse listener: send A-ASSOCIATE-AC: %w", err)
	}
	for {
		m, err := a.readMessage()
		if errors.Is(err, ErrReleased) {
			return nil
		}
		if err != nil {
			a.abort()
			return fmt.Errorf("dimse listener: association from %s: %w", rq.callingAE, err)
		}
		f, _ := m.cmd.u16(tagCommandField)
		switch f {
		case cEchoRQ:
			id, _ := m.cmd.u16(tagMessageID)
			out := command{}
			out.setStr(tagAffectedSOPClass, Verification)
			out.setU16(tagCommandField, cEchoRSP)
			out.setU16(tagRespondedTo, id)
			out.setU16(tagStatus, StatusSuccess)
			if err := a.sendMessage(m.contextID, out, nil); err != nil {
				return fmt.Errorf("dimse listener: %w", err)
			}
		case cStoreRQ:
			if err := a.serveStore(m, rq.callingAE, l.cfg.Store); err != nil {
				a.abort()
				return fmt.Errorf("dimse listener: %w", err)
			}
		default:
			a.abort()
			return protoErr("dimse listener: unsupported command 0x%04x", f)
		}
	}
}

func isQueryClass(sop string) bool {
	return strings.HasPrefix(sop, "1.2.840.10008.5.1.4.1.2.") || strings.HasPrefix(sop, "1.2.840.10008.5.1.4.31")
}
