package dimse

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/imagesource/folder"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/dimsenet"
)

// identity is what the start of a received data set says it is.
type identity struct {
	studyUID, seriesUID, sopUID string
	patientID, issuer           string
}

// peekLimit bounds the bytes read to find the identifying attributes
// (they all come before group 0x0028 in any real instance).
const peekLimit = 4 << 20

var errNoIdentity = errors.New("the data set does not start with its identifying attributes")

// peekIdentity reads the start of a data set until its study, series,
// instance and patient attributes are parsed (all in groups 0008 to 0020),
// and returns them with the bytes read, which the caller must keep.
func peekIdentity(r io.Reader, ts string) (identity, []byte, error) {
	var buf []byte
	size := 16 << 10
	for {
		chunk := make([]byte, size-len(buf))
		n, err := io.ReadFull(r, chunk)
		buf = append(buf, chunk[:n]...)
		eof := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !eof {
			return identity{}, buf, err
		}
		id, complete, perr := parseIdentity(buf, ts)
		if perr != nil {
			return id, buf, perr
		}
		if complete || eof {
			if id.studyUID == "" || id.sopUID == "" {
				return id, buf, errNoIdentity
			}
			return id, buf, nil
		}
		if size >= peekLimit {
			return id, buf, errNoIdentity
		}
		size *= 4
	}
}

// parseIdentity parses what it can of a data set's start; complete is set
// once an element past (0020,000E) begins, so no identifying attribute can
// follow. The start is walked first (dimsenet.Walk) and only whole,
// length-checked elements reach the DICOM library.
func parseIdentity(b []byte, ts string) (id identity, complete bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			complete, err = false, fmt.Errorf("%w: cannot parse data set: %v", dimsenet.ErrProtocol, r)
		}
	}()
	implicit, ok := dimsenet.Implicit(ts)
	if !ok {
		return id, false, fmt.Errorf("%w: transfer syntax %q is not accepted", dimsenet.ErrProtocol, ts)
	}
	cut, werr := dimsenet.Walk(bytes.NewReader(b), 0, int64(len(b)), implicit, func(g, e uint16, _ int64) bool {
		if g > 0x0020 || g == 0x0020 && e > 0x000E {
			complete = true
			return false
		}
		return true
	})
	switch {
	case werr == nil:
	case errors.Is(werr, dimsenet.ErrTruncated):
		complete = false
	default:
		return id, false, werr
	}
	var whole bytes.Buffer
	if err := dimsenet.WritePart10Header(&whole, "1.2.840.10008.5.1.4.1.1.7", "1.2.3", ts, ""); err != nil {
		return id, false, err
	}
	whole.Write(b[:cut])
	p, err := dicom.NewParser(bytes.NewReader(whole.Bytes()), int64(whole.Len()), nil,
		dicom.SkipPixelData(), dicom.AllowUnknownSpecificCharacterSet())
	if err != nil {
		return id, false, fmt.Errorf("%w: %v", dimsenet.ErrProtocol, err)
	}
	for {
		e, err := p.Next()
		if err != nil {
			break
		}
		switch e.Tag {
		case tag.StudyInstanceUID:
			id.studyUID = firstString(e)
		case tag.SeriesInstanceUID:
			id.seriesUID = firstString(e)
		case tag.SOPInstanceUID:
			id.sopUID = firstString(e)
		case tag.PatientID:
			id.patientID = allStrings(e)
		case tag.IssuerOfPatientID:
			id.issuer = allStrings(e)
		}
	}
	return id, complete, nil
}

func firstString(e *dicom.Element) string {
	v, _ := e.Value.GetValue().([]string)
	if len(v) == 0 {
		return ""
	}
	return strings.TrimRight(v[0], " \x00")
}

func allStrings(e *dicom.Element) string {
	v, _ := e.Value.GetValue().([]string)
	out := make([]string, len(v))
	for i, s := range v {
		out[i] = strings.TrimRight(s, " \x00")
	}
	return strings.Join(out, `\`)
}

// reservingWriter reserves cache room for every byte before writing it.
type reservingWriter struct {
	ctx   context.Context
	c     *cache
	e     *entry
	w     io.Writer
	total int64
}

func (r *reservingWriter) Write(p []byte) (int, error) {
	if err := r.c.reserve(r.ctx, r.e, int64(len(p))); err != nil {
		return 0, err
	}
	r.total += int64(len(p))
	n, err := r.w.Write(p)
	if n < len(p) {
		r.c.unreserve(r.e, int64(len(p)-n))
		r.total -= int64(len(p) - n)
	}
	return n, err
}

// receive checks an arriving instance against e (its study and patient)
// before storing it, stores it, checks the stored file again and adds it.
// An instance that does not belong is dropped and logged (by UIDs, never
// by patient identifiers).
func (s *Source) receive(e *entry, req dimsenet.StoreRequest, id identity, prefix []byte) uint16 {
	drop := func(why string) uint16 {
		s.cache.refuse(e)
		s.log.Warn("dimse image source: dropped an instance the PACS sent",
			zap.String("reason", why), zap.String("study", e.uid), zap.String("instance", req.SOPInstance))
		return dimsenet.StatusRefused
	}
	switch {
	case wadopath.CheckUID(req.SOPInstance) != nil || id.sopUID != req.SOPInstance:
		return drop("its SOP Instance UID is invalid or differs from the C-STORE command's")
	case id.studyUID != e.uid:
		return drop("it belongs to another study than the one asked for")
	case wadopath.CheckUID(id.seriesUID) != nil:
		return drop("its Series Instance UID is invalid")
	case !s.cache.allowPatient(e, id.patientID, id.issuer):
		return drop("its PatientID is not the patient's the study was asked for")
	}

	tmp, err := os.CreateTemp(e.dir, ".incoming-*")
	if err != nil {
		s.log.Warn("dimse image source: cache", zap.Error(err))
		return dimsenet.StatusOutOfResources
	}
	rw := &reservingWriter{ctx: e.ctx, c: s.cache, e: e, w: tmp}
	fail := func(status uint16, err error) uint16 {
		tmp.Close()
		os.Remove(tmp.Name())
		s.cache.unreserve(e, rw.total)
		if err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("dimse image source: storing an instance failed", zap.String("study", e.uid), zap.Error(err))
		}
		return status
	}
	err = dimsenet.WritePart10Header(rw, req.SOPClass, req.SOPInstance, req.TransferSyntax, req.CallingAE)
	if err == nil {
		_, err = rw.Write(prefix)
	}
	if err == nil {
		_, err = io.CopyBuffer(rw, req.Data, make([]byte, 256<<10))
	}
	if err == nil {
		err = tmp.Close()
	}
	if err != nil {
		return fail(dimsenet.StatusOutOfResources, err)
	}
	// The whole stored data set must be well formed (no length the DICOM
	// library would allocate blindly), and, read as the folder source
	// reads it, say the same.
	if err := checkStored(tmp.Name(), req.TransferSyntax); err != nil {
		s.cache.refuse(e)
		return fail(dimsenet.StatusRefused, fmt.Errorf("instance %s: %w", req.SOPInstance, err))
	}
	got, err := folder.Identify(tmp.Name())
	if err != nil || got.StudyUID != id.studyUID || got.SOPUID != id.sopUID || got.SeriesUID != id.seriesUID ||
		got.PatientID != id.patientID || got.IssuerOfPatientID != id.issuer {
		s.cache.refuse(e)
		return fail(dimsenet.StatusRefused, fmt.Errorf("instance %s: the stored file does not read as it arrived: %v", req.SOPInstance, err))
	}
	final := e.filePath(req.SOPInstance)
	if err := os.Rename(tmp.Name(), final); err != nil {
		return fail(dimsenet.StatusOutOfResources, err)
	}
	f := &file{path: final, seriesUID: id.seriesUID, sopUID: id.sopUID, patientID: id.patientID, size: rw.total}
	if !s.cache.add(e, f) {
		// A duplicate replaced the first copy's file: same instance.
		s.cache.unreserve(e, rw.total)
	}
	return dimsenet.StatusSuccess
}

// checkStored walks the data set of a stored Part 10 file.
func checkStored(path, ts string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	var hdr [144]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return err
	}
	start := int64(144) + int64(binary.LittleEndian.Uint32(hdr[140:144]))
	implicit, _ := dimsenet.Implicit(ts)
	end, err := dimsenet.Walk(f, start, fi.Size(), implicit, nil)
	if err == nil && end != fi.Size() {
		err = fmt.Errorf("%w: trailing bytes after the data set", dimsenet.ErrProtocol)
	}
	return err
}

// storeGot receives a C-STORE sub-operation of this entry's C-GET.
func (s *Source) storeGot(e *entry) dimsenet.StoreHandler {
	return func(req dimsenet.StoreRequest) uint16 {
		id, prefix, err := peekIdentity(req.Data, req.TransferSyntax)
		if err != nil {
			s.cache.refuse(e)
			s.log.Warn("dimse image source: unreadable instance", zap.String("study", e.uid), zap.Error(err))
			return dimsenet.StatusRefused
		}
		return s.receive(e, req, id, prefix)
	}
}

// storeMoved receives a C-STORE on the C-MOVE receiver: it goes to the
// C-MOVE in progress for its study, and is refused when there is none.
func (s *Source) storeMoved(req dimsenet.StoreRequest) uint16 {
	id, prefix, err := peekIdentity(req.Data, req.TransferSyntax)
	if err != nil {
		s.log.Warn("dimse image source: unreadable instance on the C-STORE receiver", zap.Error(err))
		return dimsenet.StatusRefused
	}
	s.mu.Lock()
	e := s.moving[id.studyUID]
	if e == nil {
		s.stray++
	}
	s.mu.Unlock()
	if e == nil {
		s.log.Warn("dimse image source: refused an instance no C-MOVE asked for",
			zap.String("study", id.studyUID), zap.String("instance", req.SOPInstance), zap.String("from", req.CallingAE))
		return dimsenet.StatusRefused
	}
	return s.receive(e, req, id, prefix)
}
