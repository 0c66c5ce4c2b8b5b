package folder

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"github.com/smart-imaging/smart_imaging/imagesource"
)

// StudyVersion is the study's PatientID and instance count from the index
// (metacache.Versioner). The index does not change once the folder is
// opened, so neither does a version.
func (s *Source) StudyVersion(_ context.Context, studyUID string) (string, error) {
	st, ok := s.studies[studyUID]
	if !ok {
		return "", &imagesource.Error{Status: http.StatusNotFound, Code: "not-found",
			Message: "no such study", Err: fmt.Errorf("folder: study version: no study %s", studyUID)}
	}
	n := 0
	for _, se := range st.series {
		n += len(se.instances)
	}
	return st.patientID + "\x00" + strconv.Itoa(n), nil
}
