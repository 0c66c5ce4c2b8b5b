// Package imagesource says where images come from: the Source interface that
// every image back end implements (a folder of Part 10 files, a DICOMweb
// PACS), the lookup modes that decide which studies a search may see, and the
// errors a source reports.
package imagesource

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/httpproblem"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// Lookup names how a route finds the studies a search may return.
type Lookup string

const (
	// LookupStudiesByMRN returns only the studies whose PatientID equals one
	// of the caller's PACS keys exactly.
	LookupStudiesByMRN Lookup = "studies-by-mrn"
	// LookupAllStudies returns every study the source holds (open demos).
	LookupAllStudies Lookup = "all-studies"
)

// ParseLookup checks a lookup mode name.
func ParseLookup(s string) (Lookup, error) {
	switch Lookup(s) {
	case LookupStudiesByMRN, LookupAllStudies:
		return Lookup(s), nil
	}
	return "", fmt.Errorf("unknown lookup mode %q (use %q or %q)", s, LookupStudiesByMRN, LookupAllStudies)
}

// Query asks a source for studies.
type Query struct {
	// All lists every study; PatientIDs is then ignored.
	All bool
	// PatientIDs are exact PACS PatientID values (from pacskey.Parse). A
	// study matches when its PatientID equals one of them.
	PatientIDs []pacskey.PatientKey
	// StudyUIDs, when not empty, restricts the answer to these studies.
	StudyUIDs []string
	// StudiesOnly says the caller needs the studies' attributes only (a
	// QIDO-RS study list, an ownership check): a source may then leave
	// Study.Series empty and save its series queries.
	StudiesOnly bool
}

// Study is one study as a source found it.
type Study struct {
	// Attributes are the study-level attributes (a QIDO-RS study result).
	Attributes dicomjson.Dataset
	// Series are the study's series, each with its own attributes.
	Series []Series
}

// Series is one series of a Study.
type Series struct {
	// Attributes are the series-level attributes (a QIDO-RS series result).
	Attributes dicomjson.Dataset
	// Instances are instance-level attributes when the source lists them
	// cheaply; nil otherwise.
	Instances []dicomjson.Dataset
}

// Retrieval is one validated WADO-RS request for a study the caller may see.
type Retrieval struct {
	// Path is the parsed, allow-listed DICOMweb path.
	Path wadopath.Path
	// PublicBase is the gateway URL that stands for the source's DICOMweb
	// root for this study token (".../wado/{token}"); URLs in answers
	// (BulkDataURI, RetrieveURL, Content-Location) are rewritten onto it.
	PublicBase string
	// MaxRenderSize bounds rendered and thumbnail sizes (CheckRender); 0:
	// DefaultMaxRenderSize.
	MaxRenderSize int
	// StudyUID is the study the caller's study token grants. Every object
	// a source serves must carry it as its StudyInstanceUID.
	StudyUID string
	// PatientIDs are the caller's PACS keys. Every object a source serves
	// must carry one of them as its PatientID. Empty (without Unrestricted)
	// lets nothing through.
	PatientIDs []pacskey.PatientKey
	// Unrestricted is set for routes without patient binding
	// (disable_authz_checks): only the study UID is checked.
	Unrestricted bool
}

// ErrForeignObject is wrapped by CheckObject's refusals: the source was
// about to serve an object of another study or another patient than the
// request's.
var ErrForeignObject = errors.New("an object of another study or patient")

// CheckObject reports whether an object whose StudyInstanceUID and
// PatientID hold the given values may be served for r: exactly one study
// UID, r's; exactly one PatientID, one of r.PatientIDs (unless
// r.Unrestricted). DICOM padding (spaces, and NUL after a UID) is not
// significant. The error names what disagreed, never the values, so it can
// be logged and shown without leaking another patient's identifiers.
func (r Retrieval) CheckObject(studyUIDs, patientIDs []string) error {
	if len(studyUIDs) != 1 || r.StudyUID == "" || strings.TrimRight(studyUIDs[0], " \x00") != r.StudyUID {
		return fmt.Errorf("%w: its StudyInstanceUID is not the study asked for", ErrForeignObject)
	}
	if r.Unrestricted {
		return nil
	}
	if len(patientIDs) != 1 {
		return fmt.Errorf("%w: it has no single PatientID", ErrForeignObject)
	}
	id := strings.Trim(patientIDs[0], " ")
	for _, k := range r.PatientIDs {
		if id != "" && id == strings.Trim(string(k), " ") {
			return nil
		}
	}
	return fmt.Errorf("%w: its PatientID is not one of the patient's", ErrForeignObject)
}

// Source is an image back end.
type Source interface {
	// FindStudies returns the studies matching q, each checked again by the
	// source for an exact PatientID match when q.All is false.
	FindStudies(ctx context.Context, q Query) ([]Study, error)
	// Retrieve answers a WADO-RS request. It writes the answer to w or
	// returns an *Error before writing anything.
	Retrieve(w http.ResponseWriter, r *http.Request, req Retrieval) error
}

// Error is a failure a source reports, carrying the HTTP status the client
// should see: 400, 404, 406 for the request; 502, 503, 504 for the
// upstream. It is the one problem type every part of the gateway reports
// (httpproblem.Problem).
type Error = httpproblem.Problem

// Errorf builds an *Error with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return httpproblem.Errorf(status, code, format, args...)
}

// AsError finds an *Error in err's chain.
func AsError(err error) (*Error, bool) { return httpproblem.As(err) }
