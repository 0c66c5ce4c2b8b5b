package folder

import (
	"errors"
	"fmt"
	"mime/multipart"
	"net/http"
	"os"
	"strings"

	"github.com/suyashkumar/dicom"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// What other sources reuse of this package: a source that receives Part 10
// files into a directory (the dimse source's cache) identifies each file
// with Identify, streams files still arriving with PartWriter, and serves a
// complete directory with Open and Retrieve, the same code that serves a
// folder.

// Identity is what a Part 10 file says it is.
type Identity struct {
	StudyUID, SeriesUID, SOPUID string
	// PatientID is the file's PatientID, its values joined with `\`.
	PatientID string
	// IssuerOfPatientID likewise.
	IssuerOfPatientID string
	// TransferSyntax is the file meta's transfer syntax.
	TransferSyntax string
}

// Identify reads the header of the Part 10 file at path.
func Identify(path string) (Identity, error) {
	inst, err := indexFile(path)
	if err != nil {
		return Identity{}, fmt.Errorf("folder image source: %s: %w", path, err)
	}
	return Identity{
		StudyUID: inst.studyUID, SeriesUID: inst.seriesUID, SOPUID: inst.sopUID,
		PatientID:         strings.Join(inst.attrs.Strings(dicomjson.TagPatientID), `\`),
		IssuerOfPatientID: strings.Join(inst.attrs.Strings(dicomjson.TagIssuerOfPatientID), `\`),
		TransferSyntax:    inst.ts,
	}, nil
}

// JSONFromElements converts parsed elements (a C-FIND answer, say) to
// DICOM JSON, the way metadata is converted. Binary values are inline.
func JSONFromElements(elems []*dicom.Element) dicomjson.Dataset {
	return converter{}.dataset(elems, false)
}

// ErrCannotStream reports that an object retrieve cannot be answered
// before its files are known: the client named a transfer syntax (the
// source does not transcode, so the files' own must match) or asked for a
// bare application/dicom instance.
var ErrCannotStream = errors.New("the answer depends on the files: wait for them")

// NegotiateStream checks that an object retrieve at level accepts a
// multipart/related; type="application/dicom" answer in the stored
// transfer syntaxes, whatever they are. It returns an *imagesource.Error
// (406) when the Accept header allows no such answer, and ErrCannotStream
// when the answer must wait for the files.
func NegotiateStream(r *http.Request, level wadopath.Level) error {
	ranges := parseAccept(r)
	for _, m := range ranges {
		if ts := m.param("transfer-syntax"); ts != "" && ts != "*" {
			return ErrCannotStream
		}
	}
	c, err := negotiateObjects(ranges, level, nil)
	if err != nil {
		return err
	}
	if c.single {
		return ErrCannotStream
	}
	return nil
}

// PartWriter streams Part 10 files as one multipart/related;
// type="application/dicom" answer. The status and headers leave with the
// first file, so a failure before it can still be answered cleanly.
type PartWriter struct {
	w       http.ResponseWriter
	mw      *multipart.Writer
	started bool
}

// NewPartWriter prepares an answer on w.
func NewPartWriter(w http.ResponseWriter) *PartWriter {
	return &PartWriter{w: w, mw: multipart.NewWriter(w)}
}

// Started reports whether the answer has begun.
func (p *PartWriter) Started() bool { return p.started }

// WriteFile sends the file at path as the next part and flushes.
func (p *PartWriter) WriteFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("folder image source: stat: %w", err)
	}
	if !p.started {
		h := p.w.Header()
		h.Set("Cache-Control", "private")
		h.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+p.mw.Boundary())
		p.w.WriteHeader(http.StatusOK)
		p.started = true
	}
	if err := copyPart(p.mw, f, fi.Size()); err != nil {
		return fmt.Errorf("folder image source: send %s: %w", path, err)
	}
	flush(p.w)
	return nil
}

// Close ends the multipart answer. Call it only when every part was sent:
// a stream that failed is left unterminated.
func (p *PartWriter) Close() error {
	if err := p.mw.Close(); err != nil {
		return fmt.Errorf("folder image source: finish multipart: %w", err)
	}
	return nil
}
