package dimsenet

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/suyashkumar/dicom"
)

// SOP classes of the services.
const (
	Verification  = "1.2.840.10008.1.1"
	StudyRootFind = "1.2.840.10008.5.1.4.1.2.2.1"
	StudyRootMove = "1.2.840.10008.5.1.4.1.2.2.2"
	StudyRootGet  = "1.2.840.10008.5.1.4.1.2.2.3"
)

// StorageClasses are the storage SOP classes a C-GET requester offers to
// receive (each in several transfer syntaxes, so the PACS sends what it
// stores without transcoding). The C-STORE receiver of C-MOVE accepts any
// SOP class.
var StorageClasses = []string{
	"1.2.840.10008.5.1.4.1.1.2",     // CT Image
	"1.2.840.10008.5.1.4.1.1.4",     // MR Image
	"1.2.840.10008.5.1.4.1.1.1",     // Computed Radiography
	"1.2.840.10008.5.1.4.1.1.1.1",   // Digital X-Ray (presentation)
	"1.2.840.10008.5.1.4.1.1.1.2",   // Digital Mammography (presentation)
	"1.2.840.10008.5.1.4.1.1.6.1",   // Ultrasound Image
	"1.2.840.10008.5.1.4.1.1.3.1",   // Ultrasound Multi-frame
	"1.2.840.10008.5.1.4.1.1.7",     // Secondary Capture
	"1.2.840.10008.5.1.4.1.1.7.2",   // Multi-frame Grayscale Byte SC
	"1.2.840.10008.5.1.4.1.1.7.3",   // Multi-frame Grayscale Word SC
	"1.2.840.10008.5.1.4.1.1.7.4",   // Multi-frame True Color SC
	"1.2.840.10008.5.1.4.1.1.20",    // Nuclear Medicine
	"1.2.840.10008.5.1.4.1.1.128",   // PET
	"1.2.840.10008.5.1.4.1.1.12.1",  // X-Ray Angiographic
	"1.2.840.10008.5.1.4.1.1.2.1",   // Enhanced CT
	"1.2.840.10008.5.1.4.1.1.4.1",   // Enhanced MR
	"1.2.840.10008.5.1.4.1.1.481.1", // RT Image
}

// getTransferSyntaxes are offered, one presentation context each, for
// every storage class of a C-GET, so the PACS can send each instance as it
// stores it.
var getTransferSyntaxes = []string{
	ExplicitVRLittleEndian,
	ImplicitVRLittleEndian,
	"1.2.840.10008.1.2.4.50", // JPEG Baseline
	"1.2.840.10008.1.2.4.70", // JPEG Lossless SV1
	"1.2.840.10008.1.2.4.90", // JPEG 2000 lossless
	"1.2.840.10008.1.2.4.91", // JPEG 2000
	"1.2.840.10008.1.2.5",    // RLE Lossless
}

// QueryContexts are the presentation contexts for C-ECHO, C-FIND and
// C-MOVE.
func QueryContexts() []PresentationContext {
	ts := []string{ExplicitVRLittleEndian, ImplicitVRLittleEndian}
	return []PresentationContext{
		{AbstractSyntax: Verification, TransferSyntaxes: ts},
		{AbstractSyntax: StudyRootFind, TransferSyntaxes: ts},
		{AbstractSyntax: StudyRootMove, TransferSyntaxes: ts},
	}
}

// GetContexts are the presentation contexts for C-GET: the query class and
// every storage class in each transfer syntax, with the SCP role. They fit
// the protocol's 128 contexts.
func GetContexts() []PresentationContext {
	ts := []string{ExplicitVRLittleEndian, ImplicitVRLittleEndian}
	pcs := []PresentationContext{{AbstractSyntax: StudyRootGet, TransferSyntaxes: ts}}
	for _, sop := range StorageClasses {
		for _, t := range getTransferSyntaxes {
			pcs = append(pcs, PresentationContext{AbstractSyntax: sop, TransferSyntaxes: []string{t}, SCPRole: true})
		}
	}
	return pcs
}

// StatusError is a DIMSE response with a failure status.
type StatusError struct {
	Op      string
	Status  uint16
	Comment string
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("%s failed with status 0x%04X", e.Op, e.Status)
	if e.Comment != "" {
		s += ": " + e.Comment
	}
	return s
}

// ErrNoContext reports that the peer did not accept the SOP class an
// operation needs.
var ErrNoContext = errors.New("the PACS did not accept the presentation context this operation needs")

// Echo sends a C-ECHO and waits for its answer.
func (a *Assoc) Echo(ctx context.Context) (err error) {
	pc := a.Context(Verification)
	if pc == nil {
		return fmt.Errorf("C-ECHO: %w", ErrNoContext)
	}
	stop := a.watch(ctx)
	defer func() { err = ctxErr(ctx, stop(), err) }()
	cmd := command{}
	cmd.setStr(tagAffectedSOPClass, Verification)
	cmd.setU16(tagCommandField, cEchoRQ)
	id := a.nextID()
	cmd.setU16(tagMessageID, id)
	if err := a.sendMessage(pc.ID, cmd, nil); err != nil {
		return fmt.Errorf("C-ECHO: %w", err)
	}
	m, err := a.readMessage()
	if err != nil {
		return fmt.Errorf("C-ECHO: %w", err)
	}
	if f, _ := m.cmd.u16(tagCommandField); f != cEchoRSP {
		return protoErr("answer to C-ECHO-RQ is command 0x%04x", f)
	}
	if st, _ := m.cmd.u16(tagStatus); st != StatusSuccess {
		return &StatusError{Op: "C-ECHO", Status: st, Comment: m.cmd.str(tagErrorComment)}
	}
	return nil
}

// ctxErr prefers the context's error when it interrupted the operation.
func ctxErr(ctx context.Context, fired bool, err error) error {
	if err != nil && fired {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// Find runs a Study Root C-FIND and calls fn with every pending answer's
// identifier, decoded. An error from fn aborts the association.
func (a *Assoc) Find(ctx context.Context, keys []Key, fn func(dicom.Dataset) error) (err error) {
	pc := a.Context(StudyRootFind)
	if pc == nil {
		return fmt.Errorf("C-FIND: %w", ErrNoContext)
	}
	ident, err := encodeIdentifier(keys, pc.Accepted == ImplicitVRLittleEndian)
	if err != nil {
		return fmt.Errorf("C-FIND: %w", err)
	}
	stop := a.watch(ctx)
	defer func() { err = ctxErr(ctx, stop(), err) }()
	cmd := command{}
	cmd.setStr(tagAffectedSOPClass, StudyRootFind)
	cmd.setU16(tagCommandField, cFindRQ)
	cmd.setU16(tagMessageID, a.nextID())
	cmd.setU16(tagPriority, 0)
	if err := a.sendMessage(pc.ID, cmd, readerOf(ident)); err != nil {
		return fmt.Errorf("C-FIND: %w", err)
	}
	for {
		m, err := a.readMessage()
		if err != nil {
			return fmt.Errorf("C-FIND: %w", err)
		}
		if f, _ := m.cmd.u16(tagCommandField); f != cFindRSP {
			return protoErr("answer to C-FIND-RQ is command 0x%04x", f)
		}
		st, _ := m.cmd.u16(tagStatus)
		switch st {
		case StatusPending, StatusPendingWarn:
			if m.data == nil {
				return protoErr("pending C-FIND answer without an identifier")
			}
			b, err := m.data.readAll(maxIdentifier)
			if err != nil {
				return fmt.Errorf("C-FIND: %w", err)
			}
			ds, err := DecodeDataSet(b, a.contexts[m.contextID].Accepted)
			if err != nil {
				return fmt.Errorf("C-FIND: %w", err)
			}
			if err := fn(ds); err != nil {
				a.abort()
				return err
			}
		case StatusSuccess:
			return nil
		default:
			return &StatusError{Op: "C-FIND", Status: st, Comment: m.cmd.str(tagErrorComment)}
		}
	}
}

// StoreRequest is one instance the PACS sends (a C-STORE sub-operation of
// C-GET, or a C-STORE to the receiver of a C-MOVE).
type StoreRequest struct {
	// CallingAE is the AE title of the sender.
	CallingAE string
	// SOPClass and SOPInstance are from the C-STORE command.
	SOPClass, SOPInstance string
	// TransferSyntax is the negotiated transfer syntax of Data.
	TransferSyntax string
	// MoveOriginatorAE and MoveOriginatorID are set on C-STOREs that a
	// C-MOVE caused, when the PACS says so.
	MoveOriginatorAE string
	MoveOriginatorID uint16
	// Data streams the data set (no file meta). The handler reads it to
	// the end, or what it leaves is discarded.
	Data io.Reader
}

// StoreHandler receives an instance and returns the C-STORE status:
// StatusSuccess, or StatusRefused / StatusOutOfResources.
type StoreHandler func(StoreRequest) uint16

// Result counts the sub-operations of a C-GET or C-MOVE, as the PACS
// reported them in its final answer.
type Result struct {
	Completed, Failed, Warning int
	Status                     uint16
}

// Get runs a Study Root C-GET for keys; every instance is handed to store
// as it arrives. A final status other than success (including "warning:
// some sub-operations failed") is a *StatusError.
func (a *Assoc) Get(ctx context.Context, keys []Key, store StoreHandler) (res Result, err error) {
	pc := a.Context(StudyRootGet)
	if pc == nil {
		return res, fmt.Errorf("C-GET: %w", ErrNoContext)
	}
	return a.retrieve(ctx, "C-GET", pc, cGetRQ, cGetRSP, "", keys, store)
}

// Move runs a Study Root C-MOVE of keys to the AE dest; the instances
// arrive on other associations (see Listener).
func (a *Assoc) Move(ctx context.Context, dest string, keys []Key) (res Result, err error) {
	pc := a.Context(StudyRootMove)
	if pc == nil {
		return res, fmt.Errorf("C-MOVE: %w", ErrNoContext)
	}
	return a.retrieve(ctx, "C-MOVE", pc, cMoveRQ, cMoveRSP, dest, keys, nil)
}

func (a *Assoc) retrieve(ctx context.Context, op string, pc *PresentationContext, rq, rsp uint16, dest string, keys []Key, store StoreHandler) (res Result, err error) {
	ident, err := encodeIdentifier(keys, pc.Accepted == ImplicitVRLittleEndian)
	if err != nil {
		return res, fmt.Errorf("%s: %w", op, err)
	}
	stop := a.watch(ctx)
	defer func() { err = ctxErr(ctx, stop(), err) }()
	cmd := command{}
	cmd.setStr(tagAffectedSOPClass, pc.AbstractSyntax)
	cmd.setU16(tagCommandField, rq)
	id := a.nextID()
	cmd.setU16(tagMessageID, id)
	cmd.setU16(tagPriority, 0)
	if dest != "" {
		cmd.setStr(tagMoveDestination, dest)
	}
	if err := a.sendMessage(pc.ID, cmd, readerOf(ident)); err != nil {
		return res, fmt.Errorf("%s: %w", op, err)
	}
	for {
		m, err := a.readMessage()
		if err != nil {
			return res, fmt.Errorf("%s: %w", op, err)
		}
		f, _ := m.cmd.u16(tagCommandField)
		switch {
		case f == cStoreRQ && store != nil:
			if err := a.serveStore(m, "", store); err != nil {
				return res, fmt.Errorf("%s: %w", op, err)
			}
			continue
		case f != rsp:
			return res, protoErr("answer to %s-RQ is command 0x%04x", op, f)
		}
		st, _ := m.cmd.u16(tagStatus)
		n := func(el uint16) int { v, _ := m.cmd.u16(el); return int(v) }
		res = Result{Completed: n(tagCompleted), Failed: n(tagFailed), Warning: n(tagWarning), Status: st}
		switch st {
		case StatusPending, StatusPendingWarn:
			continue
		case StatusSuccess:
			return res, nil
		default:
			return res, &StatusError{Op: op, Status: st, Comment: m.cmd.str(tagErrorComment)}
		}
	}
}

// serveStore hands a C-STORE-RQ to store and answers it.
func (a *Assoc) serveStore(m *message, callingAE string, store StoreHandler) error {
	if m.data == nil {
		return protoErr("C-STORE-RQ without a data set")
	}
	pc := a.contexts[m.contextID]
	req := StoreRequest{
		CallingAE:        callingAE,
		SOPClass:         m.cmd.str(tagAffectedSOPClass),
		SOPInstance:      m.cmd.str(tagAffectedSOPInst),
		TransferSyntax:   pc.Accepted,
		MoveOriginatorAE: m.cmd.str(tagMoveOriginatorAE),
		Data:             m.data,
	}
	req.MoveOriginatorID, _ = m.cmd.u16(tagMoveOriginatorMsgI)
	status := store(req)
	// Drain what the handler left, so the next message starts clean.
	if _, err := io.Copy(io.Discard, m.data); err != nil {
		return err
	}
	a.data = nil
	id, _ := m.cmd.u16(tagMessageID)
	out := command{}
	out.setStr(tagAffectedSOPClass, req.SOPClass)
	out.setU16(tagCommandField, cStoreRSP)
	out.setU16(tagRespondedTo, id)
	out.setU16(tagStatus, status)
	out.setStr(tagAffectedSOPInst, req.SOPInstance)
	return a.sendMessage(m.contextID, out, nil)
}
