package dicomweb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// Study-level counts QIDO-RS returns (PS3.18 Table 10.6.3-2).
const (
	tagNumberOfStudyRelatedSeries    = "00201206"
	tagNumberOfStudyRelatedInstances = "00201208"
)

// errNoVersion is wrapped when the PACS's study query does not give the
// counts a version is made of.
var errNoVersion = errors.New("the PACS's study query has no instance count")

// StudyVersion asks the PACS with one QIDO-RS study query for what changes
// when the study gains or loses an instance: its PatientID and its series
// and instance counts. It is the metadata cache's revalidation
// (metacache.Versioner): much cheaper than the study's metadata, which the
// PACS builds from every instance.
func (s *Source) StudyVersion(ctx context.Context, studyUID string) (string, error) {
	if err := wadopath.CheckUID(studyUID); err != nil {
		return "", imagesource.Errorf(http.StatusBadRequest, "invalid", "study UID is not a valid DICOM UID: %v", err)
	}
	q := url.Values{}
	q.Set("StudyInstanceUID", studyUID)
	q.Set("includefield", strings.Join([]string{dicomjson.TagPatientID, tagNumberOfStudyRelatedSeries, tagNumberOfStudyRelatedInstances}, ","))
	list, err := s.qido(ctx, "studies", q)
	if err != nil {
		return "", err
	}
	if len(list) != 1 || list[0].String(dicomjson.TagStudyInstanceUID) != studyUID {
		return "", fmt.Errorf("dicomweb: study version: %d answers for one study UID", len(list))
	}
	ds := list[0]
	instances := ds.String(tagNumberOfStudyRelatedInstances)
	if instances == "" {
		return "", fmt.Errorf("dicomweb: study version: %w", errNoVersion)
	}
	return strings.Join([]string{ds.String(dicomjson.TagPatientID), ds.String(tagNumberOfStudyRelatedSeries), instances}, "\x00"), nil
}
