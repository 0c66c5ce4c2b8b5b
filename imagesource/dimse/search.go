package dimse

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/folder"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/dimsenet"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// Return keys asked for at each level.
var (
	studyKeys = []tag.Tag{
		tag.StudyDate, tag.StudyTime, tag.AccessionNumber, tag.ReferringPhysicianName,
		tag.StudyDescription, tag.PatientName, tag.PatientID, tag.IssuerOfPatientID,
		tag.PatientBirthDate, tag.PatientSex, tag.StudyID, tag.StudyInstanceUID,
		tag.ModalitiesInStudy, tag.NumberOfStudyRelatedSeries, tag.NumberOfStudyRelatedInstances,
		tag.TimezoneOffsetFromUTC,
	}
	seriesKeys = []tag.Tag{
		tag.Modality, tag.SeriesNumber, tag.SeriesDescription, tag.SeriesDate, tag.SeriesTime,
		tag.BodyPartExamined, tag.SeriesInstanceUID, tag.NumberOfSeriesRelatedInstances,
		tag.TimezoneOffsetFromUTC,
	}
	instanceKeys = []tag.Tag{tag.SOPClassUID, tag.SOPInstanceUID, tag.InstanceNumber, tag.SeriesInstanceUID,
		tag.NumberOfFrames, tag.Rows, tag.Columns}
)

// Query attributes that are not the study's own and are left out of
// answers.
var queryOnly = map[string]bool{
	"00080052": true,                   // QueryRetrieveLevel
	"00080054": true,                   // RetrieveAETitle
	"00080056": true,                   // InstanceAvailability
	"00080005": true,                   // SpecificCharacterSet
	"00880130": true, "00880140": true, // storage media
}

func keysFor(level string, match map[tag.Tag]string, ret []tag.Tag) []dimsenet.Key {
	out := []dimsenet.Key{{Tag: tag.QueryRetrieveLevel, Value: level}}
	for t, v := range match {
		out = append(out, dimsenet.Key{Tag: t, Value: v})
	}
	for _, t := range ret {
		if _, ok := match[t]; !ok {
			out = append(out, dimsenet.Key{Tag: t})
		}
	}
	return out
}

func toJSON(ds dicom.Dataset) dicomjson.Dataset {
	out := folder.JSONFromElements(ds.Elements)
	for k := range out {
		if queryOnly[k] {
			delete(out, k)
		}
	}
	return out
}

// patientIDOf is the answer's PatientID exactly as a study's key is
// compared: values joined with `\`, trailing padding dropped.
func patientIDOf(ds dicomjson.Dataset) string {
	return strings.Join(ds.Strings(dicomjson.TagPatientID), `\`)
}

// FindStudies runs C-FIND queries on one association: STUDY level per
// patient key (or once, universally, for q.All), then SERIES level per
// study, and INSTANCE level for a study whose series answers carry no
// instance counts (dcmqrscp's do not). Answers whose PatientID is not
// exactly one of the keys are dropped.
func (s *Source) FindStudies(ctx context.Context, q imagesource.Query) ([]imagesource.Study, error) {
	if !q.All {
		if len(q.PatientIDs) == 0 {
			return nil, nil
		}
		for _, k := range q.PatientIDs {
			if err := pacskey.Check(string(k)); err != nil {
				return nil, &imagesource.Error{Status: http.StatusBadRequest, Code: "invalid", Message: err.Error()}
			}
		}
	}
	var wantUIDs map[string]bool
	if len(q.StudyUIDs) > 0 {
		wantUIDs = map[string]bool{}
		for _, u := range q.StudyUIDs {
			if wadopath.CheckUID(u) == nil {
				wantUIDs[u] = true
			}
		}
		if len(wantUIDs) == 0 {
			return nil, nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 4*s.timeout)
	defer cancel()
	a, err := dimsenet.Dial(ctx, s.cfg.Addr, s.netConfig(), dimsenet.QueryContexts())
	if err != nil {
		return nil, pacsError("C-FIND", err)
	}
	ok := false
	defer func() {
		if ok {
			a.Release()
		} else {
			a.Abort()
		}
	}()

	studies := map[string]dicomjson.Dataset{}
	var order []string
	collect := func(key string) error {
		match := map[tag.Tag]string{}
		if key != "" {
			match[tag.PatientID] = key
		}
		return a.Find(ctx, keysFor("STUDY", match, studyKeys), func(ds dicom.Dataset) error {
			js := toJSON(ds)
			uid := js.String(dicomjson.TagStudyInstanceUID)
			if wadopath.CheckUID(uid) != nil {
				return nil
			}
			if key != "" && patientIDOf(js) != key {
				return nil // the PACS matched loosely: not this patient's
			}
			if wantUIDs != nil && !wantUIDs[uid] {
				return nil
			}
			if _, dup := studies[uid]; !dup {
				order = append(order, uid)
			}
			studies[uid] = js
			if len(studies) > maxStudies {
				return &imagesource.Error{Status: http.StatusBadGateway, Code: "too-costly",
					Message: fmt.Sprintf("the PACS returned more than %d studies", maxStudies)}
			}
			return nil
		})
	}
	if q.All {
		if err := collect(""); err != nil {
			return nil, pacsError("C-FIND", err)
		}
	} else {
		for _, k := range q.PatientIDs {
			if err := collect(string(k)); err != nil {
				return nil, pacsError("C-FIND", err)
			}
		}
	}

	out := make([]imagesource.Study, 0, len(order))
	for _, uid := range order {
		st, err := s.findSeries(ctx, a, uid, studies[uid])
		if err != nil {
			return nil, pacsError("C-FIND", err)
		}
		out = append(out, st)
	}
	ok = true
	return out, nil
}

// maxStudies bounds one search's answers.
const maxStudies = 10000

// findSeries completes one study with its series (and instances when the
// PACS gives no series counts).
func (s *Source) findSeries(ctx context.Context, a *dimsenet.Assoc, uid string, attrs dicomjson.Dataset) (imagesource.Study, error) {
	st := imagesource.Study{Attributes: attrs}
	bySeries := map[string]int{}
	countsMissing := false
	err := a.Find(ctx, keysFor("SERIES", map[tag.Tag]string{tag.StudyInstanceUID: uid}, seriesKeys), func(ds dicom.Dataset) error {
		js := toJSON(ds)
		if got := js.String(dicomjson.TagStudyInstanceUID); got != "" && got != uid {
			return nil // another study's series: never shown under this one
		}
		se := js.String(dicomjson.TagSeriesInstanceUID)
		if wadopath.CheckUID(se) != nil {
			return nil
		}
		if _, dup := bySeries[se]; dup {
			return nil
		}
		delete(js, dicomjson.TagStudyInstanceUID)
		js.SetString(dicomjson.TagStudyInstanceUID, "UI", uid)
		if _, ok := js.Int(dicomjson.TagNumberOfSeriesRelatedInst); !ok {
			countsMissing = true
		}
		bySeries[se] = len(st.Series)
		st.Series = append(st.Series, imagesource.Series{Attributes: js})
		return nil
	})
	if err != nil {
		return st, err
	}
	if countsMissing {
		// Hierarchical queries: one per series, with both unique keys.
		for i := range st.Series {
			se := st.Series[i].Attributes.String(dicomjson.TagSeriesInstanceUID)
			seen := map[string]bool{}
			match := map[tag.Tag]string{tag.StudyInstanceUID: uid, tag.SeriesInstanceUID: se}
			err := a.Find(ctx, keysFor("IMAGE", match, instanceKeys), func(ds dicom.Dataset) error {
				js := toJSON(ds)
				if got := js.String(dicomjson.TagSeriesInstanceUID); got != "" && got != se {
					return nil
				}
				sop := js.String(dicomjson.TagSOPInstanceUID)
				if wadopath.CheckUID(sop) != nil || seen[sop] {
					return nil
				}
				seen[sop] = true
				st.Series[i].Instances = append(st.Series[i].Instances, js)
				return nil
			})
			if err != nil {
				return st, err
			}
			slices.SortFunc(st.Series[i].Instances, func(x, y dicomjson.Dataset) int {
				return strings.Compare(x.String(dicomjson.TagSOPInstanceUID), y.String(dicomjson.TagSOPInstanceUID))
			})
		}
	}
	// Series in number order, then by UID, as the other sources list them.
	slices.SortStableFunc(st.Series, func(x, y imagesource.Series) int {
		nx, okx := x.Attributes.Int(dicomjson.TagSeriesNumber)
		ny, oky := y.Attributes.Int(dicomjson.TagSeriesNumber)
		switch {
		case okx && oky && nx != ny:
			return nx - ny
		case okx != oky:
			if okx {
				return -1
			}
			return 1
		}
		return strings.Compare(x.Attributes.String(dicomjson.TagSeriesInstanceUID), y.Attributes.String(dicomjson.TagSeriesInstanceUID))
	})
	// Study counts the PACS left out, from the series.
	if _, ok := attrs.Int(dicomjson.TagNumberOfStudyRelatedSeries); !ok {
		attrs.SetInt(dicomjson.TagNumberOfStudyRelatedSeries, "IS", len(st.Series))
	}
	if len(attrs.Strings(dicomjson.TagModalitiesInStudy)) == 0 {
		mods := map[string]bool{}
		for _, se := range st.Series {
			if m := se.Attributes.String(dicomjson.TagModality); m != "" {
				mods[m] = true
			}
		}
		var ms []string
		for m := range mods {
			ms = append(ms, m)
		}
		sort.Strings(ms)
		if len(ms) > 0 {
			attrs.SetString(dicomjson.TagModalitiesInStudy, "CS", ms...)
		}
	}
	return st, nil
}
