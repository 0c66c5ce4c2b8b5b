package dimse

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/dimsenet"
)

// StudyVersion asks the PACS over one association for the study's
// PatientID and, per series, its instance count (metacache.Versioner): a
// study C-FIND, a series C-FIND and, when the PACS gives no series counts,
// one image C-FIND per series. Far cheaper than the study's metadata,
// which this source builds by retrieving every instance.
func (s *Source) StudyVersion(ctx context.Context, studyUID string) (string, error) {
	if err := wadopath.CheckUID(studyUID); err != nil {
		return "", imagesource.Errorf(http.StatusBadRequest, "invalid", "study UID is not a valid DICOM UID: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*s.timeout)
	defer cancel()
	a, err := dimsenet.Dial(ctx, s.cfg.Addr, s.netConfig(), dimsenet.QueryContexts())
	if err != nil {
		return "", pacsError("C-FIND", err)
	}
	ok := false
	defer func() {
		if ok {
			a.Release()
		} else {
			a.Abort()
		}
	}()
	var found []dicomjson.Dataset
	err = a.Find(ctx, keysFor("STUDY", map[tag.Tag]string{tag.StudyInstanceUID: studyUID}, studyKeys),
		func(ds dicom.Dataset) error {
			// A PACS may match loosely: only this study's answers count.
			if js := toJSON(ds); js.String(dicomjson.TagStudyInstanceUID) == studyUID && len(found) < 2 {
				found = append(found, js)
			}
			return nil
		})
	if err != nil {
		return "", pacsError("C-FIND", err)
	}
	if len(found) != 1 {
		ok = true
		return "", fmt.Errorf("dimse: study version: %d answers for one study UID", len(found))
	}
	st, err := s.findSeries(ctx, a, studyUID, found[0])
	if err != nil {
		return "", pacsError("C-FIND", err)
	}
	ok = true
	var b strings.Builder
	b.WriteString(patientIDOf(found[0]))
	for _, se := range st.Series {
		n, has := se.Attributes.Int(dicomjson.TagNumberOfSeriesRelatedInst)
		if !has {
			n = len(se.Instances)
		}
		b.WriteString("\x00" + se.Attributes.String(dicomjson.TagSeriesInstanceUID) + "=" + strconv.Itoa(n))
	}
	return b.String(), nil
}
