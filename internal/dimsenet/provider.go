package dimsenet

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// Provider is a small query/retrieve SCP over a set of Part 10 files, for
// tests: a PACS that can be told to misbehave (refuse associations, answer
// slowly, drop the connection in the middle of a C-GET, send an instance
// of another study or patient). It answers C-ECHO, Study Root C-FIND at
// STUDY and SERIES level (exact matching only) and C-GET at STUDY level.
type Provider struct {
	// AE is the provider's AE title (associations naming another are
	// rejected).
	AE string
	// Files are Part 10 files in explicit VR little endian.
	Files []string

	mu sync.Mutex
	// Refuse rejects every association.
	Refuse bool
	// Delay is waited before each answer.
	Delay time.Duration
	// DropAfter, when positive, closes the connection after that many
	// instances of a C-GET were sent.
	DropAfter int
	// Extra, when set, names files sent in every C-GET in addition to the
	// study's own (an instance of another study or patient).
	Extra []string
	// Hold, when set, is waited on (until closed) after the first
	// instance of a C-GET was sent.
	Hold chan struct{}
	// Gets counts the C-GET requests served, Assocs the associations
	// accepted.
	Gets, Assocs int

	index []providerFile
	ln    net.Listener
	wg    sync.WaitGroup
}

type providerFile struct {
	path                               string
	study, series, sop, class, patient string
	modality, seriesNumber, date, time string
	dataset                            int64 // offset of the data set
}

// Set changes the provider's behaviour under its lock.
func (p *Provider) Set(f func(p *Provider)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

// Start indexes the files and serves on a free loopback port.
func (p *Provider) Start() (string, error) {
	for _, f := range p.Files {
		pf, err := indexProviderFile(f)
		if err != nil {
			return "", err
		}
		p.index = append(p.index, pf)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer c.Close()
				p.serve(c)
			}()
		}
	}()
	return ln.Addr().String(), nil
}

// Close stops the provider.
func (p *Provider) Close() {
	if p.ln != nil {
		p.ln.Close()
	}
	p.wg.Wait()
}

func indexProviderFile(path string) (providerFile, error) {
	ds, err := dicom.ParseFile(path, nil, dicom.SkipPixelData())
	if err != nil {
		return providerFile{}, fmt.Errorf("provider: %s: %w", path, err)
	}
	get := func(t tag.Tag) string {
		e, err := ds.FindElementByTag(t)
		if err != nil {
			return ""
		}
		v, _ := e.Value.GetValue().([]string)
		return strings.TrimRight(strings.Join(v, `\`), " \x00")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return providerFile{}, err
	}
	if len(b) < 144 || string(b[128:132]) != "DICM" {
		return providerFile{}, fmt.Errorf("provider: %s: not Part 10", path)
	}
	return providerFile{path: path, study: get(tag.StudyInstanceUID), series: get(tag.SeriesInstanceUID),
		sop: get(tag.SOPInstanceUID), class: get(tag.SOPClassUID), patient: get(tag.PatientID),
		modality: get(tag.Modality), seriesNumber: get(tag.SeriesNumber), date: get(tag.StudyDate), time: get(tag.StudyTime),
		dataset: 144 + int64(binary.LittleEndian.Uint32(b[140:144]))}, nil
}

func (p *Provider) state() (refuse bool, delay time.Duration, drop int, extra []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Refuse, p.Delay, p.DropAfter, append([]string(nil), p.Extra...)
}

// Counts returns the C-GETs served and associations accepted so far.
func (p *Provider) Counts() (gets, assocs int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Gets, p.Assocs
}

func (p *Provider) serve(conn net.Conn) {
	a := &Assoc{conn: conn, br: bufio.NewReader(conn), timeout: 10 * time.Second, maxRecv: defaultMaxPDU,
		contexts: map[byte]*PresentationContext{}}
	a.deadline()
	pdu, err := readPDU(a.br, a.maxRecv)
	if err != nil || pdu.typ != pduAssociateRQ {
		return
	}
	rq, err := decodeAssociate(pdu.body, false)
	if err != nil {
		return
	}
	refuse, delay, drop, extra := p.state()
	if refuse || rq.calledAE != p.AE {
		writePDU(conn, pduAssociateRJ, []byte{0, 1, 1, 7})
		return
	}
	p.mu.Lock()
	p.Assocs++
	hold := p.Hold
	p.mu.Unlock()
	ac := &associate{calledAE: rq.calledAE, callingAE: rq.callingAE, maxLength: a.maxRecv}
	for _, pc := range rq.contexts {
		out := PresentationContext{ID: pc.ID, AbstractSyntax: pc.AbstractSyntax, Accepted: ImplicitVRLittleEndian, Result: 4}
		for _, want := range []string{ExplicitVRLittleEndian, ImplicitVRLittleEndian} {
			if contains(pc.TransferSyntaxes, want) {
				out.Accepted, out.Result = want, 0
				break
			}
		}
		if out.Result == 0 {
			c := out
			a.contexts[pc.ID] = &c
		}
		ac.contexts = append(ac.contexts, out)
	}
	a.maxSend = rq.maxLength
	if err := writePDU(conn, pduAssociateAC, ac.encode(true)); err != nil {
		return
	}
	for {
		m, err := a.readMessage()
		if err != nil {
			return
		}
		f, _ := m.cmd.u16(tagCommandField)
		id, _ := m.cmd.u16(tagMessageID)
		var ident []byte
		if m.data != nil {
			if ident, err = m.data.readAll(maxIdentifier); err != nil {
				return
			}
			a.data = nil
		}
		time.Sleep(delay)
		rsp := func(field, status uint16, data []byte) error {
			c := command{}
			c.setStr(tagAffectedSOPClass, a.contexts[m.contextID].AbstractSyntax)
			c.setU16(tagCommandField, field)
			c.setU16(tagRespondedTo, id)
			c.setU16(tagStatus, status)
			if data == nil {
				return a.sendMessage(m.contextID, c, nil)
			}
			return a.sendMessage(m.contextID, c, bytes.NewReader(data))
		}
		switch f {
		case cEchoRQ:
			if rsp(cEchoRSP, StatusSuccess, nil) != nil {
				return
			}
		case cFindRQ:
			if p.find(a, m.contextID, ident, rsp) != nil {
				return
			}
		case cGetRQ:
			p.mu.Lock()
			p.Gets++
			p.mu.Unlock()
			if p.get(a, ident, id, drop, extra, hold) != nil {
				return
			}
		default:
			return
		}
	}
}

func (p *Provider) find(a *Assoc, ctxID byte, ident []byte, rsp func(uint16, uint16, []byte) error) error {
	ds, err := DecodeDataSet(ident, a.contexts[ctxID].Accepted)
	if err != nil {
		return err
	}
	q := func(t tag.Tag) string {
		e, err := ds.FindElementByTag(t)
		if err != nil {
			return ""
		}
		v, _ := e.Value.GetValue().([]string)
		return strings.TrimRight(strings.Join(v, `\`), " \x00")
	}
	level, pid, study := q(tag.QueryRetrieveLevel), q(tag.PatientID), q(tag.StudyInstanceUID)
	seen := map[string]bool{}
	implicit := a.contexts[ctxID].Accepted == ImplicitVRLittleEndian
	for _, f := range p.index {
		var keys []Key
		switch level {
		case "STUDY":
			if pid != "" && f.patient != pid || seen[f.study] {
				continue
			}
			seen[f.study] = true
			keys = []Key{{tag.QueryRetrieveLevel, "STUDY"}, {tag.StudyInstanceUID, f.study}, {tag.PatientID, f.patient},
				{tag.StudyDate, f.date}, {tag.StudyTime, f.time}}
		case "SERIES":
			if f.study != study || seen[f.series] {
				continue
			}
			seen[f.series] = true
			n := 0
			for _, g := range p.index {
				if g.series == f.series {
					n++
				}
			}
			keys = []Key{{tag.QueryRetrieveLevel, "SERIES"}, {tag.StudyInstanceUID, f.study}, {tag.SeriesInstanceUID, f.series},
				{tag.Modality, f.modality}, {tag.SeriesNumber, f.seriesNumber}, {tag.NumberOfSeriesRelatedInstances, strconv.Itoa(n)}}
		default:
			return rsp(cFindRSP, 0xA900, nil)
		}
		b, err := encodeIdentifier(keys, implicit)
		if err != nil {
			return err
		}
		if err := rsp(cFindRSP, StatusPending, b); err != nil {
			return err
		}
	}
	return rsp(cFindRSP, StatusSuccess, nil)
}

func (p *Provider) get(a *Assoc, ident []byte, msgID uint16, drop int, extra []string, hold chan struct{}) error {
	var getCtx byte
	for id, pc := range a.contexts {
		if pc.AbstractSyntax == StudyRootGet {
			getCtx = id
		}
	}
	ds, err := DecodeDataSet(ident, a.contexts[getCtx].Accepted)
	if err != nil {
		return err
	}
	study := ""
	if e, err := ds.FindElementByTag(tag.StudyInstanceUID); err == nil {
		if v, _ := e.Value.GetValue().([]string); len(v) > 0 {
			study = strings.TrimRight(v[0], " \x00")
		}
	}
	var send []providerFile
	for _, f := range p.index {
		if f.study == study {
			send = append(send, f)
		}
	}
	for _, x := range extra {
		f, err := indexProviderFile(x)
		if err != nil {
			return err
		}
		send = append(send, f)
	}
	failed := 0
	for i, f := range send {
		if drop > 0 && i == drop {
			a.conn.Close() // the PACS dies mid-study
			return fmt.Errorf("dropped")
		}
		var ctx *PresentationContext
		for _, pc := range a.contexts {
			if pc.AbstractSyntax == f.class && pc.Accepted == ExplicitVRLittleEndian {
				ctx = pc
			}
		}
		if ctx == nil {
			failed++
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return err
		}
		c := command{}
		c.setStr(tagAffectedSOPClass, f.class)
		c.setU16(tagCommandField, cStoreRQ)
		c.setU16(tagMessageID, uint16(100+i))
		c.setU16(tagPriority, 0)
		c.setStr(tagAffectedSOPInst, f.sop)
		if err := a.sendMessage(ctx.ID, c, bytes.NewReader(b[f.dataset:])); err != nil {
			return err
		}
		m, err := a.readMessage()
		if err != nil {
			return err
		}
		if st, _ := m.cmd.u16(tagStatus); st != StatusSuccess {
			failed++
		}
		if i == 0 && hold != nil {
			<-hold
		}
	}
	c := command{}
	c.setStr(tagAffectedSOPClass, StudyRootGet)
	c.setU16(tagCommandField, cGetRSP)
	c.setU16(tagRespondedTo, msgID)
	status := uint16(StatusSuccess)
	if failed > 0 {
		status = StatusSubOpsWarning
	}
	c.setU16(tagStatus, status)
	c.setU16(tagCompleted, uint16(len(send)-failed))
	c.setU16(tagFailed, uint16(failed))
	c.setU16(tagWarning, 0)
	c.setU16(tagRemaining, 0)
	return a.sendMessage(getCtx, c, nil)
}
