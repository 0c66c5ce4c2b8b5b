package fhir

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// MaxCount is the largest page size a search may ask for with _count.
const MaxCount = 1000

// Bounds on the lists a caller writes into one search (values counted over
// repeated parameters and comma lists): each patient.identifier value
// becomes a PACS query of its own, identifier values travel to the PACS in
// one query string and repeated lists are intersected, the others are
// checked one by one. Real searches name one or two of each.
const (
	MaxPatientValues      = 16  // patient and subject
	MaxPatientIdentifiers = 8   // patient.identifier and subject.identifier
	MaxStudyIdentifiers   = 100 // identifier
	MaxDateFilters        = 8   // _lastUpdated
)

// Search is a parsed ImagingStudy search.
type Search struct {
	// Patients are the values of patient and subject (each must name the
	// patient in context).
	Patients []string
	// PatientIdentifiers are the values of patient.identifier (and
	// subject.identifier), as system|value tokens.
	PatientIdentifiers []Token
	// StudyUIDs come from identifier=urn:oid:{uid} (OR-ed). IdentifierGiven
	// says identifier was present: when StudyUIDs is then empty, nothing can
	// match (another system).
	StudyUIDs       []string
	IdentifierGiven bool
	// LastUpdated are the _lastUpdated comparisons (AND-ed).
	LastUpdated []DateFilter
	// Count is the page size (_count); 0 means the default.
	Count int
	// Offset is the number of matches skipped (_offset, from next links).
	Offset int
	// SummaryCount is _summary=count: total only, no entries.
	SummaryCount bool
	// Ignored lists parameters that were not understood (for lenient
	// handling; under Prefer: handling=strict they are errors).
	Ignored []string
}

// Token is a FHIR token search value, system|value.
type Token struct {
	System    string
	HasSystem bool
	Value     string
}

// DateFilter is one date search comparison.
type DateFilter struct {
	Prefix string // eq, ne, gt, ge, lt, le, sa, eb
	// Start and End bound the value's precision range [Start, End).
	Start, End time.Time
}

// Matches reports whether t satisfies the comparison, using the value's
// precision as FHIR date search does.
func (f DateFilter) Matches(t time.Time) bool {
	switch f.Prefix {
	case "eq":
		return !t.Before(f.Start) && t.Before(f.End)
	case "ne":
		return t.Before(f.Start) || !t.Before(f.End)
	case "gt", "sa":
		return !t.Before(f.End)
	case "ge":
		return !t.Before(f.Start)
	case "lt", "eb":
		return t.Before(f.Start)
	case "le":
		return t.Before(f.End)
	}
	return false
}

// SearchError is a search the server cannot run: 400 with this message.
type SearchError struct{ Message string }

func (e *SearchError) Error() string { return e.Message }

func searchErrorf(format string, args ...any) error {
	return &SearchError{Message: fmt.Sprintf(format, args...)}
}

// ParseSearch reads the ImagingStudy search parameters. With strict
// (Prefer: handling=strict) an unknown parameter or an unsupported
// _include is an error; otherwise it is listed in Ignored.
func ParseSearch(q url.Values, strict bool) (Search, error) {
	var s Search
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		values := q[name]
		switch name {
		case "patient", "subject":
			for _, v := range values {
				for _, one := range strings.Split(v, ",") {
					s.Patients = append(s.Patients, one)
				}
			}
			if len(s.Patients) > MaxPatientValues {
				return s, searchErrorf("patient and subject take at most %d values in all", MaxPatientValues)
			}
		case "patient.identifier", "subject.identifier":
			for _, v := range values {
				// One PACS key per value: a list (or a comma inside a key)
				// would widen the PACS query.
				if strings.Contains(v, ",") {
					return s, searchErrorf("%s takes one system|value, not a list", name)
				}
				s.PatientIdentifiers = append(s.PatientIdentifiers, parseToken(v))
			}
			if len(s.PatientIdentifiers) > MaxPatientIdentifiers {
				return s, searchErrorf("patient.identifier and subject.identifier take at most %d values in all", MaxPatientIdentifiers)
			}
		case "identifier":
			s.IdentifierGiven = true
			// Repeated parameters are AND-ed; values in one are OR-ed.
			var and []string
			given := 0
			for _, v := range values {
				given += strings.Count(v, ",") + 1
			}
			if given > MaxStudyIdentifiers {
				return s, searchErrorf("identifier takes at most %d values in all", MaxStudyIdentifiers)
			}
			for i, v := range values {
				var or []string
				for _, one := range strings.Split(v, ",") {
					uid, ok, err := studyUIDFromIdentifier(parseToken(one))
					if err != nil {
						return s, err
					}
					if ok {
						or = append(or, uid)
					}
				}
				if i == 0 {
					and = or
				} else {
					and = intersect(and, or)
				}
			}
			s.StudyUIDs = and
		case "_lastUpdated":
			if len(values) > MaxDateFilters {
				return s, searchErrorf("_lastUpdated is given at most %d times", MaxDateFilters)
			}
			for _, v := range values {
				f, err := parseDateFilter(v)
				if err != nil {
					return s, err
				}
				s.LastUpdated = append(s.LastUpdated, f)
			}
		case "_count":
			n, err := strconv.Atoi(last(values))
			if err != nil || n < 0 {
				return s, searchErrorf("_count must be a non-negative integer")
			}
			if n > MaxCount {
				n = MaxCount
			}
			s.Count = n
			if n == 0 {
				s.SummaryCount = true
			}
		case "_offset":
			n, err := strconv.Atoi(last(values))
			if err != nil || n < 0 {
				return s, searchErrorf("_offset must be a non-negative integer")
			}
			s.Offset = n
		case "_summary":
			switch v := last(values); v {
			case "count":
				s.SummaryCount = true
			case "false":
			default:
				if strict {
					return s, searchErrorf("_summary=%s is not supported (use count or false)", v)
				}
				s.Ignored = append(s.Ignored, "_summary="+v)
			}
		case "_include":
			for _, v := range values {
				// Endpoints are always included on the same page as their
				// studies, as the IG requires; asking for it changes nothing.
				if v != "ImagingStudy:endpoint" && v != "ImagingStudy:endpoint:Endpoint" {
					if strict {
						return s, searchErrorf("_include=%s is not supported (only ImagingStudy:endpoint)", v)
					}
					s.Ignored = append(s.Ignored, "_include="+v)
				}
			}
		case "_format":
			// An unencoded '+' (application/fhir+json) arrives as a space.
			v := strings.ReplaceAll(last(values), " ", "+")
			if v != "json" && v != "application/fhir+json" && v != "application/json" {
				return s, searchErrorf("_format=%s is not supported: this server speaks JSON only", v)
			}
		default:
			if strict {
				return s, searchErrorf("search parameter %q is not supported (Prefer: handling=strict)", name)
			}
			s.Ignored = append(s.Ignored, name)
		}
	}
	return s, nil
}

func last(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[len(values)-1]
}

func parseToken(v string) Token {
	if sys, val, ok := strings.Cut(v, "|"); ok {
		return Token{System: sys, HasSystem: true, Value: val}
	}
	return Token{Value: v}
}

// studyUIDFromIdentifier reads a study identifier: urn:oid:{uid}, with no
// system or the system urn:dicom:uid. Another system matches nothing (ok
// false); a malformed UID is an error.
func studyUIDFromIdentifier(t Token) (uid string, ok bool, err error) {
	if t.HasSystem && t.System != "" && t.System != "urn:dicom:uid" {
		return "", false, nil
	}
	v := t.Value
	if !strings.HasPrefix(v, "urn:oid:") {
		if t.System == "urn:dicom:uid" && wadopath.CheckUID(v) == nil {
			// Lenient: a bare UID under the DICOM UID system.
			return v, true, nil
		}
		return "", false, searchErrorf("identifier must be urn:oid:{StudyInstanceUID} (optionally with system urn:dicom:uid|)")
	}
	v = strings.TrimPrefix(v, "urn:oid:")
	if err := wadopath.CheckUID(v); err != nil {
		return "", false, searchErrorf("identifier %q is not a DICOM UID: %v", v, err)
	}
	return v, true, nil
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// parseDateFilter reads a FHIR date search value such as gt2023-04-17,
// le2023-04-17T04:00:00Z or 2023. A time without a zone is taken as UTC.
func parseDateFilter(v string) (DateFilter, error) {
	f := DateFilter{Prefix: "eq"}
	if len(v) >= 2 {
		switch p := v[:2]; p {
		case "eq", "ne", "gt", "ge", "lt", "le", "sa", "eb":
			f.Prefix, v = p, v[2:]
		case "ap":
			return f, searchErrorf("_lastUpdated prefix ap is not supported")
		}
	}
	layouts := []struct {
		layout string
		step   func(time.Time) time.Time
	}{
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
		{"2006-01-02T15:04Z07:00", func(t time.Time) time.Time { return t.Add(time.Minute) }},
		{"2006-01-02T15:04:05Z07:00", func(t time.Time) time.Time { return t.Add(time.Second) }},
		{"2006-01-02T15:04:05.999999999Z07:00", func(t time.Time) time.Time { return t.Add(time.Millisecond) }},
		{"2006-01-02T15:04:05", func(t time.Time) time.Time { return t.Add(time.Second) }},
		{"2006-01-02T15:04", func(t time.Time) time.Time { return t.Add(time.Minute) }},
	}
	for _, l := range layouts {
		if t, err := time.Parse(l.layout, v); err == nil {
			f.Start, f.End = t, l.step(t)
			if n := fractionDigits(v); n > 0 {
				// time.Parse accepts a fraction after the seconds of any
				// layout: the range is one unit of its last digit.
				step := time.Second
				for range min(n, 9) {
					step /= 10
				}
				f.End = t.Add(step)
			}
			return f, nil
		}
	}
	return f, searchErrorf("_lastUpdated value %q is not a FHIR date or dateTime", v)
}

// fractionDigits counts the digits of the fraction of seconds in a FHIR
// dateTime (0 when there is none).
func fractionDigits(v string) int {
	_, tm, ok := strings.Cut(v, "T")
	if !ok || len(tm) < 9 || (tm[8] != '.' && tm[8] != ',') {
		return 0
	}
	n := 0
	for _, c := range tm[9:] {
		if c < '0' || c > '9' {
			break
		}
		n++
	}
	return n
}

// StudyUpdated is the time _lastUpdated is compared with: DICOMweb has no
// last-updated attribute, so it is the study's StudyDate and StudyTime (in
// TimezoneOffsetFromUTC, else zone, else UTC). A study without a StudyDate
// has none and matches no _lastUpdated filter.
func StudyUpdated(ds dicomjson.Dataset, zone *time.Location) (time.Time, bool) {
	y, mo, d, ok := parseDA(strings.TrimSpace(ds.String(dicomjson.TagStudyDate)))
	if !ok {
		return time.Time{}, false
	}
	h, mi, sec, ns := 0, 0, 0, 0
	if tm := strings.TrimSpace(ds.String(dicomjson.TagStudyTime)); tm != "" {
		if hh, mm, ss, frac, ok := parseTM(tm); ok {
			h, mi, sec = hh, mm, ss
			if frac != "" {
				// At most 6 digits (parseTM): scale to nanoseconds.
				ns = atoi(frac + strings.Repeat("0", 9-len(frac)))
			}
		}
	}
	loc := zone
	if loc == nil {
		loc = time.UTC
	}
	if off, ok := parseOffset(strings.TrimSpace(ds.String(dicomjson.TagTimezoneOffsetFromUTC))); ok {
		loc = time.FixedZone("", off*60)
	}
	return time.Date(y, time.Month(mo), d, h, mi, sec, ns, loc), true
}

// Interface guards
var _ error = (*SearchError)(nil)
