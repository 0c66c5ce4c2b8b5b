// Package dwroot is the policy of the patient-scoped DICOMweb root
// ({route}/dicomweb/…): which QIDO-RS paths and query parameters a caller
// may use, how a query's PatientID is decided by the gateway rather than
// the caller, the post-filter every answer passes, and the per-token cache
// of study ownership that WADO-RS under the root checks before the first
// byte. It knows nothing of Caddy; caddymodule wires it.
package dwroot

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// ErrRefused is wrapped by every refusal of a QIDO-RS path or query: the
// caller gets a 400 OperationOutcome with the error's text.
var ErrRefused = errors.New("not an allowed QIDO-RS request")

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// Level is what a QIDO-RS search returns.
type Level int

// The levels of a QIDO-RS search.
const (
	Studies Level = iota + 1
	Series
	Instances
)

// Search is one parsed QIDO-RS path: the level searched and the UIDs the
// path fixes.
type Search struct {
	Level     Level
	StudyUID  string // set by /studies/{uid}/…
	SeriesUID string // set by /studies/{uid}/series/{uid}/instances
}

// IsSearch reports whether a path under the root is a QIDO-RS search
// (rather than a WADO-RS retrieve): its last segment names a level.
func IsSearch(raw string) bool {
	last := raw[strings.LastIndex(raw, "/")+1:]
	return last == "studies" || last == "series" || last == "instances"
}

// ParseSearch reads a QIDO-RS path relative to the root: studies,
// series, instances, studies/{uid}/series, studies/{uid}/instances,
// studies/{uid}/series/{uid}/instances.
func ParseSearch(raw string) (Search, error) {
	segs := strings.Split(raw, "/")
	switch {
	case len(segs) == 1 && segs[0] == "studies":
		return Search{Level: Studies}, nil
	case len(segs) == 1 && segs[0] == "series":
		return Search{Level: Series}, nil
	case len(segs) == 1 && segs[0] == "instances":
		return Search{Level: Instances}, nil
	case len(segs) == 3 && segs[0] == "studies" && (segs[2] == "series" || segs[2] == "instances"):
		if err := wadopath.CheckUID(segs[1]); err != nil {
			return Search{}, refuse("study UID: %v", err)
		}
		l := Series
		if segs[2] == "instances" {
			l = Instances
		}
		return Search{Level: l, StudyUID: segs[1]}, nil
	case len(segs) == 5 && segs[0] == "studies" && segs[2] == "series" && segs[4] == "instances":
		if err := wadopath.CheckUID(segs[1]); err != nil {
			return Search{}, refuse("study UID: %v", err)
		}
		if err := wadopath.CheckUID(segs[3]); err != nil {
			return Search{}, refuse("series UID: %v", err)
		}
		return Search{Level: Instances, StudyUID: segs[1], SeriesUID: segs[3]}, nil
	}
	return Search{}, refuse("unknown search path %q (use studies, series, instances, studies/{uid}/series, studies/{uid}/instances or studies/{uid}/series/{uid}/instances)", raw)
}

// MaxLimit bounds limit; it is also the default page size.
const MaxLimit = 1000

// Params are the allow-listed query parameters of a search.
type Params struct {
	// StudyUIDs, SeriesUIDs, InstanceUIDs restrict to these UIDs (UID list
	// matching: exact values, comma or backslash separated).
	StudyUIDs, SeriesUIDs, InstanceUIDs []string
	// Accession is an exact AccessionNumber.
	Accession string
	// Modality is an exact Modality (series) or one of ModalitiesInStudy.
	Modality string
	// StudyDateFrom, StudyDateTo bound StudyDate (YYYYMMDD, inclusive;
	// empty: open).
	StudyDateFrom, StudyDateTo string
	// PatientID is set when the caller named one; HasPatientID tells an
	// empty value apart.
	PatientID    string
	HasPatientID bool
	// Limit and Offset page the answer.
	Limit, Offset int
	// IncludeFields are the includefield values asked for (informative:
	// answers carry what the source holds).
	IncludeFields []string
}

// keyword names for the tags a query may carry.
var matchKeys = map[string]string{
	"StudyInstanceUID":  dicomjson.TagStudyInstanceUID,
	"SeriesInstanceUID": dicomjson.TagSeriesInstanceUID,
	"SOPInstanceUID":    dicomjson.TagSOPInstanceUID,
	"AccessionNumber":   dicomjson.TagAccessionNumber,
	"Modality":          dicomjson.TagModality,
	"ModalitiesInStudy": dicomjson.TagModalitiesInStudy,
	"StudyDate":         dicomjson.TagStudyDate,
	"PatientID":         dicomjson.TagPatientID,
}

// includeFields are the attributes includefield may name (keywords or
// tags), besides "all".
var includeFields = map[string]bool{}

func init() {
	for _, kw := range []string{"StudyDescription", "SeriesDescription", "StudyDate", "StudyTime", "SeriesDate",
		"SeriesTime", "AccessionNumber", "Modality", "ModalitiesInStudy", "StudyID", "SeriesNumber",
		"InstanceNumber", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
		"NumberOfSeriesRelatedInstances", "NumberOfFrames", "Rows", "Columns", "SOPClassUID",
		"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientName", "PatientID",
		"PatientBirthDate", "PatientSex", "ReferringPhysicianName", "TimezoneOffsetFromUTC"} {
		includeFields[kw] = true
	}
	for _, tag := range []string{dicomjson.TagStudyDescription, dicomjson.TagSeriesDescription, dicomjson.TagStudyDate,
		dicomjson.TagStudyTime, dicomjson.TagSeriesDate, dicomjson.TagSeriesTime, dicomjson.TagAccessionNumber,
		dicomjson.TagModality, dicomjson.TagModalitiesInStudy, dicomjson.TagStudyID, dicomjson.TagSeriesNumber,
		dicomjson.TagInstanceNumber, dicomjson.TagNumberOfStudyRelatedSeries, dicomjson.TagNumberOfStudyRelatedInst,
		dicomjson.TagNumberOfSeriesRelatedInst, dicomjson.TagNumberOfFrames, dicomjson.TagRows, dicomjson.TagColumns,
		dicomjson.TagSOPClassUID, dicomjson.TagStudyInstanceUID, dicomjson.TagSeriesInstanceUID,
		dicomjson.TagSOPInstanceUID, dicomjson.TagPatientName, dicomjson.TagPatientID, dicomjson.TagPatientBirthDate,
		dicomjson.TagPatientSex, dicomjson.TagReferringPhysicianName, dicomjson.TagTimezoneOffsetFromUTC,
		"00081190"} {
		includeFields[tag] = true
	}
}

// keywordOf turns a query key (keyword or 8-hex-digit tag) into a keyword
// of matchKeys, or "".
func keywordOf(k string) string {
	if _, ok := matchKeys[k]; ok {
		return k
	}
	if tag, ok := dicomjson.NormalizeTag(k); ok {
		for kw, t := range matchKeys {
			if t == tag {
				return kw
			}
		}
	}
	return ""
}

// known lists the parameters a search may carry, for error messages.
const known = "StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, AccessionNumber, Modality, ModalitiesInStudy, StudyDate, PatientID, limit, offset, includefield, fuzzymatching=false"

// ParseParams checks a search's query against the allow list. Any other
// parameter, a wildcard or list in an identifying key, PatientName, or
// fuzzy matching is refused (ErrRefused).
func ParseParams(q url.Values) (Params, error) {
	p := Params{Limit: MaxLimit}
	for k, vs := range q {
		if len(vs) != 1 {
			return p, refuse("%s is given %d times", k, len(vs))
		}
		v := vs[0]
		switch k {
		case "limit", "offset":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return p, refuse("%s must be a non-negative integer", k)
			}
			if k == "limit" {
				if n == 0 || n > MaxLimit {
					n = MaxLimit
				}
				p.Limit = n
			} else {
				p.Offset = n
			}
			continue
		case "fuzzymatching":
			if v != "false" {
				return p, refuse("fuzzymatching is not supported: matching is exact")
			}
			continue
		case "includefield":
			for _, f := range strings.Split(v, ",") {
				f = strings.TrimSpace(f)
				if f == "all" || includeFields[f] {
					p.IncludeFields = append(p.IncludeFields, f)
					continue
				}
				if tag, ok := dicomjson.NormalizeTag(f); ok && includeFields[tag] {
					p.IncludeFields = append(p.IncludeFields, tag)
					continue
				}
				return p, refuse("includefield %q is not one of the attributes this root returns", f)
			}
			continue
		}
		kw := keywordOf(k)
		if kw == "" {
			return p, refuse("query parameter %q is not allowed (known: %s)", k, known)
		}
		var err error
		switch kw {
		case "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID":
			var uids []string
			if uids, err = uidList(kw, v); err == nil {
				dst := map[string]*[]string{"StudyInstanceUID": &p.StudyUIDs, "SeriesInstanceUID": &p.SeriesUIDs, "SOPInstanceUID": &p.InstanceUIDs}[kw]
				*dst = uids
			}
		case "AccessionNumber":
			if err = exact(kw, v); err == nil {
				p.Accession = v
			}
		case "Modality", "ModalitiesInStudy":
			if err = exact(kw, v); err == nil {
				p.Modality = v
			}
		case "StudyDate":
			p.StudyDateFrom, p.StudyDateTo, err = dateRange(v)
		case "PatientID":
			// Checked like a key: a pattern never reaches the PACS, and
			// a value that names none of the caller's keys matches
			// nothing (Restrict).
			if _, err = pacskey.Parse(v); err != nil {
				err = refuse("PatientID: %v", err)
			}
			p.PatientID, p.HasPatientID = v, true
		}
		if err != nil {
			return p, err
		}
	}
	return p, nil
}

// exact refuses empty values, wildcards, lists and escapes in an
// identifying key.
func exact(kw, v string) error {
	if v == "" {
		return refuse("%s is empty", kw)
	}
	if strings.ContainsAny(v, "*?,\\") {
		return refuse("%s: wildcards and lists are not allowed (exact match only)", kw)
	}
	if len(v) > 64 {
		return refuse("%s is too long", kw)
	}
	return nil
}

// uidList reads a UID list (comma or backslash separated), each a UID.
func uidList(kw, v string) ([]string, error) {
	parts := strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == '\\' })
	if len(parts) == 0 || len(parts) > 100 {
		return nil, refuse("%s: want 1 to 100 UIDs", kw)
	}
	for _, u := range parts {
		if err := wadopath.CheckUID(u); err != nil {
			return nil, refuse("%s: %v", kw, err)
		}
	}
	return parts, nil
}

// dateRange reads YYYYMMDD, YYYYMMDD-, -YYYYMMDD or YYYYMMDD-YYYYMMDD.
func dateRange(v string) (from, to string, err error) {
	ok := func(s string) bool {
		if len(s) != 8 {
			return false
		}
		for _, c := range s {
			if c < '0' || c > '9' {
				return false
			}
		}
		return true
	}
	a, b, isRange := strings.Cut(v, "-")
	switch {
	case !isRange && ok(a):
		return a, a, nil
	case isRange && (a == "" || ok(a)) && (b == "" || ok(b)) && a+b != "":
		return a, b, nil
	}
	return "", "", refuse("StudyDate: want YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
}

// Restrict narrows the caller's PACS keys by the query's PatientID. A
// PatientID that names one of the caller's keys narrows to it; any other
// value leaves no key (the answer is empty, never another patient's).
// Without PatientID the keys are returned unchanged.
func (p Params) Restrict(keys []pacskey.PatientKey) []pacskey.PatientKey {
	if !p.HasPatientID {
		return keys
	}
	if slices.Contains(keys, pacskey.PatientKey(p.PatientID)) {
		return []pacskey.PatientKey{pacskey.PatientKey(p.PatientID)}
	}
	return nil
}

// Match reports whether a data set (a study, series or instance result,
// with its study's attributes for study-level keys) passes the query's
// filters. Keys the data set lacks do not match a filter on them, except
// for ModalitiesInStudy/Modality which fall back to each other.
func (p Params) Match(study, ds dicomjson.Dataset) bool {
	get := func(tag string) string {
		if v := ds.String(tag); v != "" {
			return v
		}
		return study.String(tag)
	}
	if len(p.StudyUIDs) > 0 && !slices.Contains(p.StudyUIDs, get(dicomjson.TagStudyInstanceUID)) {
		return false
	}
	if len(p.SeriesUIDs) > 0 && !slices.Contains(p.SeriesUIDs, ds.String(dicomjson.TagSeriesInstanceUID)) {
		return false
	}
	if len(p.InstanceUIDs) > 0 && !slices.Contains(p.InstanceUIDs, ds.String(dicomjson.TagSOPInstanceUID)) {
		return false
	}
	if p.Accession != "" && get(dicomjson.TagAccessionNumber) != p.Accession {
		return false
	}
	if p.Modality != "" {
		mods := ds.Strings(dicomjson.TagModality)
		if len(mods) == 0 {
			mods = ds.Strings(dicomjson.TagModalitiesInStudy)
		}
		if len(mods) == 0 {
			mods = study.Strings(dicomjson.TagModalitiesInStudy)
		}
		if !slices.Contains(mods, p.Modality) {
			return false
		}
	}
	if p.StudyDateFrom != "" || p.StudyDateTo != "" {
		d := get(dicomjson.TagStudyDate)
		if d == "" || (p.StudyDateFrom != "" && d < p.StudyDateFrom) || (p.StudyDateTo != "" && d > p.StudyDateTo) {
			return false
		}
	}
	return true
}

// Page cuts a result list by offset and limit.
func Page[T any](list []T, p Params) []T {
	if p.Offset >= len(list) {
		return nil
	}
	list = list[p.Offset:]
	if p.Limit > 0 && len(list) > p.Limit {
		list = list[:p.Limit]
	}
	return list
}

// OwnedBy reports whether a study's PatientID is exactly one of keys
// (DICOM padding aside): the post-filter every study passes again before
// it is shown or its images are served.
func OwnedBy(study dicomjson.Dataset, keys []pacskey.PatientKey) bool {
	ids := study.Strings(dicomjson.TagPatientID)
	if len(ids) != 1 {
		return false
	}
	id := strings.Trim(ids[0], " ")
	return id != "" && slices.Contains(keys, pacskey.PatientKey(id))
}
