package fhir

import (
	"errors"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

func mustQuery(t testing.TB, raw string) url.Values {
	t.Helper()
	q, err := url.ParseQuery(raw)
	if err != nil {
		t.Fatalf("ParseQuery(%q): %v", raw, err)
	}
	return q
}

func TestParseSearchPatients(t *testing.T) {
	tests := []struct {
		query    string
		patients []string
		idents   []Token
	}{
		{"patient=123", []string{"123"}, nil},
		{"patient=Patient/123", []string{"Patient/123"}, nil},
		{"subject=Patient/123", []string{"Patient/123"}, nil},
		// A list is split; each value must later name the patient in context.
		{"patient=a,b&subject=Patient/c", []string{"a", "b", "Patient/c"}, nil},
		{"patient=a&patient=b", []string{"a", "b"}, nil},
		{"patient.identifier=http://hospital.example.org/mrn|MRN-1", nil,
			[]Token{{System: "http://hospital.example.org/mrn", HasSystem: true, Value: "MRN-1"}}},
		{"patient.identifier=MRN-1", nil, []Token{{Value: "MRN-1"}}},
		{"patient.identifier=|MRN-1", nil, []Token{{HasSystem: true, Value: "MRN-1"}}},
		{"subject.identifier=sys|MRN-1", nil, []Token{{System: "sys", HasSystem: true, Value: "MRN-1"}}},
		// An empty value is kept: the handler refuses it as a PACS key.
		{"patient.identifier=", nil, []Token{{}}},
		{"patient.identifier=sys|", nil, []Token{{System: "sys", HasSystem: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			s, err := ParseSearch(mustQuery(t, tt.query), true)
			if err != nil {
				t.Fatalf("ParseSearch: %v", err)
			}
			if !reflect.DeepEqual(s.Patients, tt.patients) {
				t.Errorf("Patients = %q, want %q", s.Patients, tt.patients)
			}
			if !reflect.DeepEqual(s.PatientIdentifiers, tt.idents) {
				t.Errorf("PatientIdentifiers = %+v, want %+v", s.PatientIdentifiers, tt.idents)
			}
		})
	}
}

// patient.identifier narrows a search to exactly one PACS key: a list
// would reach the PACS as several keys at once, so it is refused.
func TestParseSearchPatientIdentifierListRefused(t *testing.T) {
	for _, q := range []string{
		"patient.identifier=sys|MRN-1,sys|MRN-2",
		"patient.identifier=MRN-1,MRN-2",
		"subject.identifier=MRN-1,",
	} {
		t.Run(q, func(t *testing.T) {
			for _, strict := range []bool{false, true} {
				_, err := ParseSearch(mustQuery(t, q), strict)
				var se *SearchError
				if !errors.As(err, &se) || !strings.Contains(se.Message, "identifier") {
					t.Errorf("strict=%v: err = %v, want a SearchError naming patient.identifier", strict, err)
				}
			}
		})
	}
}

func TestParseSearchIdentifier(t *testing.T) {
	const a, b = "1.2.840.113619.2.1", "2.25.12345"
	tests := []struct {
		name  string
		query url.Values
		uids  []string
	}{
		{"urn:oid", url.Values{"identifier": {"urn:oid:" + a}}, []string{a}},
		{"dicom uid system", url.Values{"identifier": {"urn:dicom:uid|urn:oid:" + a}}, []string{a}},
		{"explicit no system", url.Values{"identifier": {"|urn:oid:" + a}}, []string{a}},
		{"bare UID under the dicom system", url.Values{"identifier": {"urn:dicom:uid|" + a}}, []string{a}},
		{"another system matches nothing", url.Values{"identifier": {"http://hospital.example.org/accession|urn:oid:" + a}}, nil},
		{"another system with a value that is no UID", url.Values{"identifier": {"http://hospital.example.org/accession|ACC-1"}}, nil},
		{"comma is OR", url.Values{"identifier": {"urn:oid:" + a + ",urn:oid:" + b}}, []string{a, b}},
		{"OR skips other systems", url.Values{"identifier": {"http://x|urn:oid:" + a + ",urn:oid:" + b}}, []string{b}},
		{"repeated is AND", url.Values{"identifier": {"urn:oid:" + a + ",urn:oid:" + b, "urn:oid:" + b}}, []string{b}},
		{"repeated disjoint matches nothing", url.Values{"identifier": {"urn:oid:" + a, "urn:oid:" + b}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseSearch(tt.query, true)
			if err != nil {
				t.Fatalf("ParseSearch(%v): %v", tt.query, err)
			}
			if !s.IdentifierGiven {
				t.Error("IdentifierGiven = false, want true: an identifier was given")
			}
			if !reflect.DeepEqual(s.StudyUIDs, tt.uids) {
				t.Errorf("StudyUIDs = %q, want %q", s.StudyUIDs, tt.uids)
			}
		})
	}

	t.Run("absent", func(t *testing.T) {
		s, err := ParseSearch(url.Values{"patient": {"1"}}, true)
		if err != nil || s.IdentifierGiven || s.StudyUIDs != nil {
			t.Errorf("no identifier: %+v, %v", s, err)
		}
	})

	for _, bad := range []string{
		"urn:oid:1.2.abc",
		"urn:oid:1.02.3",
		"urn:oid:1..2",
		"urn:oid:",
		"urn:oid:" + strings.Repeat("1.", 40) + "1",
		"1.2.3",             // no urn:oid: and no system
		"urn:uuid:1.2.3",    // not an OID URN
		"urn:dicom:uid|abc", // bare value under the DICOM system, not a UID
		"urn:dicom:uid|urn:oid:1.2.x",
		"urn:oid:1.2.3,urn:oid:x", // one bad value spoils the list
	} {
		t.Run("bad "+bad, func(t *testing.T) {
			for _, strict := range []bool{false, true} {
				_, err := ParseSearch(url.Values{"identifier": {bad}}, strict)
				var se *SearchError
				if !errors.As(err, &se) {
					t.Errorf("strict=%v: err = %v, want a SearchError", strict, err)
				}
			}
		})
	}
}

func TestParseSearchLastUpdated(t *testing.T) {
	utc := func(y int, mo time.Month, d, h, mi, s, ns int) time.Time {
		return time.Date(y, mo, d, h, mi, s, ns, time.UTC)
	}
	tests := []struct {
		value      string
		prefix     string
		start, end time.Time
	}{
		{"2023", "eq", utc(2023, 1, 1, 0, 0, 0, 0), utc(2024, 1, 1, 0, 0, 0, 0)},
		{"le2023-04", "le", utc(2023, 4, 1, 0, 0, 0, 0), utc(2023, 5, 1, 0, 0, 0, 0)},
		{"gt2023-04-17", "gt", utc(2023, 4, 17, 0, 0, 0, 0), utc(2023, 4, 18, 0, 0, 0, 0)},
		{"eq2023-12-31", "eq", utc(2023, 12, 31, 0, 0, 0, 0), utc(2024, 1, 1, 0, 0, 0, 0)},
		{"ne2023-04-17", "ne", utc(2023, 4, 17, 0, 0, 0, 0), utc(2023, 4, 18, 0, 0, 0, 0)},
		{"sa2023-04-17", "sa", utc(2023, 4, 17, 0, 0, 0, 0), utc(2023, 4, 18, 0, 0, 0, 0)},
		{"eb2023-04-17", "eb", utc(2023, 4, 17, 0, 0, 0, 0), utc(2023, 4, 18, 0, 0, 0, 0)},
		{"lt2023-04-17T10:00Z", "lt", utc(2023, 4, 17, 10, 0, 0, 0), utc(2023, 4, 17, 10, 1, 0, 0)},
		{"ge2023-04-17T10:00:00Z", "ge", utc(2023, 4, 17, 10, 0, 0, 0), utc(2023, 4, 17, 10, 0, 1, 0)},
		// The zone moves the instant.
		{"ge2023-04-17T10:00:00+02:00", "ge", utc(2023, 4, 17, 8, 0, 0, 0), utc(2023, 4, 17, 8, 0, 1, 0)},
		{"lt2023-04-17T00:30:00-05:00", "lt", utc(2023, 4, 17, 5, 30, 0, 0), utc(2023, 4, 17, 5, 30, 1, 0)},
		// A time without a zone is taken as UTC.
		{"gt2023-04-17T10:00:00", "gt", utc(2023, 4, 17, 10, 0, 0, 0), utc(2023, 4, 17, 10, 0, 1, 0)},
		{"gt2023-04-17T10:00", "gt", utc(2023, 4, 17, 10, 0, 0, 0), utc(2023, 4, 17, 10, 1, 0, 0)},
		// Fractions keep their own precision.
		{"eq2023-04-17T10:00:00.5Z", "eq", utc(2023, 4, 17, 10, 0, 0, 500_000_000), utc(2023, 4, 17, 10, 0, 0, 600_000_000)},
		{"eq2023-04-17T10:00:00.250+01:00", "eq", utc(2023, 4, 17, 9, 0, 0, 250_000_000), utc(2023, 4, 17, 9, 0, 0, 251_000_000)},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			s, err := ParseSearch(url.Values{"_lastUpdated": {tt.value}}, true)
			if err != nil {
				t.Fatalf("ParseSearch: %v", err)
			}
			if len(s.LastUpdated) != 1 {
				t.Fatalf("LastUpdated = %+v, want one filter", s.LastUpdated)
			}
			f := s.LastUpdated[0]
			if f.Prefix != tt.prefix || !f.Start.Equal(tt.start) || !f.End.Equal(tt.end) {
				t.Errorf("filter = %s [%s, %s), want %s [%s, %s)", f.Prefix,
					f.Start.UTC().Format(time.RFC3339Nano), f.End.UTC().Format(time.RFC3339Nano),
					tt.prefix, tt.start.Format(time.RFC3339Nano), tt.end.Format(time.RFC3339Nano))
			}
		})
	}

	t.Run("repeated filters are all kept", func(t *testing.T) {
		s, err := ParseSearch(url.Values{"_lastUpdated": {"gt2023", "lt2024-06"}}, true)
		if err != nil || len(s.LastUpdated) != 2 || s.LastUpdated[0].Prefix != "gt" || s.LastUpdated[1].Prefix != "lt" {
			t.Errorf("got %+v, %v; want gt and lt filters", s.LastUpdated, err)
		}
	})

	for _, bad := range []string{"", "gt", "ap2023-04-17", "gtyesterday", "2023-13-01", "2023-02-30",
		"2023-04-17T25:00:00Z", "2023-04-17T10:00:00+25:00", "20230417", "2023-4-17", "gt 2023"} {
		t.Run("bad "+bad, func(t *testing.T) {
			for _, strict := range []bool{false, true} {
				_, err := ParseSearch(url.Values{"_lastUpdated": {bad}}, strict)
				var se *SearchError
				if !errors.As(err, &se) || !strings.Contains(se.Message, "_lastUpdated") {
					t.Errorf("strict=%v: err = %v, want a SearchError naming _lastUpdated", strict, err)
				}
			}
		})
	}
}

func TestParseSearchPaging(t *testing.T) {
	tests := []struct {
		query   string
		count   int
		offset  int
		summary bool
	}{
		{"", 0, 0, false},
		{"_count=5", 5, 0, false},
		{"_count=1&_offset=3", 1, 3, false},
		{"_count=2&_count=7", 7, 0, false}, // the last one wins
		{"_count=1000", MaxCount, 0, false},
		{"_count=1001", MaxCount, 0, false},
		{"_count=99999999", MaxCount, 0, false},
		{"_count=0", 0, 0, true}, // FHIR: _count=0 asks for the total only
		{"_offset=0", 0, 0, false},
		{"_summary=count", 0, 0, true},
		{"_summary=count&_count=5", 5, 0, true},
		{"_summary=false", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			s, err := ParseSearch(mustQuery(t, tt.query), true)
			if err != nil {
				t.Fatalf("ParseSearch: %v", err)
			}
			if s.Count != tt.count || s.Offset != tt.offset || s.SummaryCount != tt.summary {
				t.Errorf("count %d offset %d summary %v, want %d %d %v", s.Count, s.Offset, s.SummaryCount, tt.count, tt.offset, tt.summary)
			}
		})
	}
	for _, bad := range []string{"_count=-1", "_count=ten", "_count=", "_count=1.5", "_offset=-1", "_offset=x", "_offset="} {
		t.Run("bad "+bad, func(t *testing.T) {
			name, _, _ := strings.Cut(bad, "=")
			for _, strict := range []bool{false, true} {
				_, err := ParseSearch(mustQuery(t, bad), strict)
				var se *SearchError
				if !errors.As(err, &se) || !strings.Contains(se.Message, name) {
					t.Errorf("strict=%v: err = %v, want a SearchError naming %s", strict, err, name)
				}
			}
		})
	}
}

func TestParseSearchLenientAndStrict(t *testing.T) {
	tests := []struct {
		query   string
		ignored []string // lenient
		strict  string   // error text under strict; "" means no error
	}{
		{"_include=ImagingStudy:endpoint", nil, ""},
		{"_include=ImagingStudy:endpoint:Endpoint", nil, ""},
		{"_include=ImagingStudy:subject", []string{"_include=ImagingStudy:subject"}, "_include=ImagingStudy:subject"},
		{"_include=*", []string{"_include=*"}, "_include=*"},
		{"_summary=true", []string{"_summary=true"}, "_summary=true"},
		{"_summary=data", []string{"_summary=data"}, "_summary=data"},
		{"_format=json", nil, ""},
		{"_format=application/fhir%2Bjson", nil, ""},
		{"_format=application/fhir+json", nil, ""}, // '+' unencoded, as the spec writes it
		{"_format=application/json", nil, ""},
		{"foo=bar", []string{"foo"}, `"foo"`},
		{"_sort=-started", []string{"_sort"}, `"_sort"`},
		{"modality=CT&foo=1", []string{"foo", "modality"}, `"foo"`},
		{"patient:missing=true", []string{"patient:missing"}, `"patient:missing"`},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			q := mustQuery(t, tt.query)
			s, err := ParseSearch(q, false)
			if err != nil {
				t.Fatalf("lenient: %v", err)
			}
			if !reflect.DeepEqual(s.Ignored, tt.ignored) {
				t.Errorf("lenient Ignored = %q, want %q", s.Ignored, tt.ignored)
			}
			_, err = ParseSearch(q, true)
			if tt.strict == "" {
				if err != nil {
					t.Errorf("strict: %v, want no error", err)
				}
				return
			}
			var se *SearchError
			if !errors.As(err, &se) || !strings.Contains(se.Message, tt.strict) {
				t.Errorf("strict: err = %v, want a SearchError containing %s", err, tt.strict)
			}
		})
	}

	// The server speaks JSON only: another _format is refused even when
	// lenient, since ignoring it would answer in a format not asked for.
	for _, f := range []string{"xml", "application/fhir+xml", "html", ""} {
		t.Run("_format="+f, func(t *testing.T) {
			for _, strict := range []bool{false, true} {
				_, err := ParseSearch(url.Values{"_format": {f}}, strict)
				var se *SearchError
				if !errors.As(err, &se) || !strings.Contains(se.Message, "_format") {
					t.Errorf("strict=%v: err = %v, want a SearchError naming _format", strict, err)
				}
			}
		})
	}
}

func TestDateFilterMatches(t *testing.T) {
	day := DateFilter{Start: time.Date(2023, 4, 17, 0, 0, 0, 0, time.UTC), End: time.Date(2023, 4, 18, 0, 0, 0, 0, time.UTC)}
	points := []struct {
		name string
		t    time.Time
	}{
		{"before", time.Date(2023, 4, 16, 23, 59, 59, 0, time.UTC)},
		{"at start", day.Start},
		{"inside", time.Date(2023, 4, 17, 12, 0, 0, 0, time.UTC)},
		{"inside, other zone", time.Date(2023, 4, 17, 23, 0, 0, 0, time.FixedZone("", 2*3600))}, // 21:00Z
		{"at end", day.End},
		{"after", time.Date(2023, 4, 18, 0, 0, 1, 0, time.UTC)},
		{"after by zone", time.Date(2023, 4, 17, 23, 0, 0, 0, time.FixedZone("", -2*3600))}, // 01:00Z next day
	}
	want := map[string][]bool{
		//     before at-start inside inside-zone at-end after after-zone
		"eq": {false, true, true, true, false, false, false},
		"ne": {true, false, false, false, true, true, true},
		"gt": {false, false, false, false, true, true, true},
		"sa": {false, false, false, false, true, true, true},
		"ge": {false, true, true, true, true, true, true},
		"lt": {true, false, false, false, false, false, false},
		"eb": {true, false, false, false, false, false, false},
		"le": {true, true, true, true, false, false, false},
		"ap": {false, false, false, false, false, false, false}, // unsupported: never matches
		"":   {false, false, false, false, false, false, false},
	}
	for prefix, results := range want {
		f := day
		f.Prefix = prefix
		for i, p := range points {
			if got := f.Matches(p.t); got != results[i] {
				t.Errorf("%q.Matches(%s: %s) = %v, want %v", prefix, p.name, p.t.Format(time.RFC3339), got, results[i])
			}
		}
	}
}

func TestStudyUpdated(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	ds := func(date, tm, offset string) dicomjson.Dataset {
		d := dicomjson.Dataset{}
		if date != "" {
			d.SetString(dicomjson.TagStudyDate, "DA", date)
		}
		if tm != "" {
			d.SetString(dicomjson.TagStudyTime, "TM", tm)
		}
		if offset != "" {
			d.SetString(dicomjson.TagTimezoneOffsetFromUTC, "SH", offset)
		}
		return d
	}
	tests := []struct {
		name string
		ds   dicomjson.Dataset
		zone *time.Location
		want time.Time // zero: no time
	}{
		{"date and time, UTC by default", ds("20230417", "093012", ""), nil, time.Date(2023, 4, 17, 9, 30, 12, 0, time.UTC)},
		{"date only is midnight", ds("20230417", "", ""), nil, time.Date(2023, 4, 17, 0, 0, 0, 0, time.UTC)},
		{"hours and minutes", ds("20230417", "0930", ""), nil, time.Date(2023, 4, 17, 9, 30, 0, 0, time.UTC)},
		{"fraction kept", ds("20240102", "141503.250", ""), nil, time.Date(2024, 1, 2, 14, 15, 3, 250_000_000, time.UTC)},
		{"ACR-NEMA forms", ds("2023.04.17", "09:30:12", ""), nil, time.Date(2023, 4, 17, 9, 30, 12, 0, time.UTC)},
		{"server zone", ds("20230417", "093012", ""), ny, time.Date(2023, 4, 17, 13, 30, 12, 0, time.UTC)},
		{"offset wins over zone", ds("20240102", "141503", "+0200"), ny, time.Date(2024, 1, 2, 12, 15, 3, 0, time.UTC)},
		{"negative offset", ds("20230417", "230000", "-0500"), nil, time.Date(2023, 4, 18, 4, 0, 0, 0, time.UTC)},
		{"bad offset falls back to zone", ds("20230417", "093012", "+2500"), nil, time.Date(2023, 4, 17, 9, 30, 12, 0, time.UTC)},
		{"bad time is midnight", ds("20230417", "99", ""), nil, time.Date(2023, 4, 17, 0, 0, 0, 0, time.UTC)},
		{"missing date", ds("", "093012", "+0200"), nil, time.Time{}},
		{"bad date", ds("20231301", "093012", ""), nil, time.Time{}},
		{"short date", ds("2023041", "", ""), nil, time.Time{}},
		{"empty dataset", dicomjson.Dataset{}, ny, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := StudyUpdated(tt.ds, tt.zone)
			if tt.want.IsZero() {
				if ok {
					t.Errorf("StudyUpdated = %s, true; want no time", got)
				}
				return
			}
			if !ok || !got.Equal(tt.want) {
				t.Errorf("StudyUpdated = %s, %v; want %s", got.UTC(), ok, tt.want)
			}
		})
	}

	// A _lastUpdated filter against a study date: the comparison is
	// between instants, so the study's offset matters.
	st, _ := StudyUpdated(ds("20240102", "141503.250", "+0200"), nil) // 12:15:03.25Z
	for v, want := range map[string]bool{
		"gt2024-01-02T14:00:00+02:00": true,
		"gt2024-01-02T14:16:00+02:00": false,
		"eq2024-01-02T12:15:03Z":      true,  // within that second
		"gt2024-01-02T12:15:03Z":      false, // gt: after the whole second
		"gt2024-01-02T12:15:03.1Z":    true,  // the fraction counts
		"le2024-01-02T12:15:03.1Z":    false,
		"le2024-01-02T12:15:03.2Z":    true, // le: up to the end of .2
		"eq2024-01-02":                true,
		"lt2024-01-02T13:00:00Z":      true,
	} {
		s, err := ParseSearch(url.Values{"_lastUpdated": {v}}, true)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.LastUpdated[0].Matches(st); got != want {
			t.Errorf("%s matches study at %s: %v, want %v", v, st.UTC().Format(time.RFC3339Nano), got, want)
		}
	}
}

// FuzzParseSearch checks that no query makes ParseSearch panic, and that
// what it accepts is within bounds.
func FuzzParseSearch(f *testing.F) {
	for _, s := range []string{
		"patient=123&_count=1",
		"identifier=urn:dicom:uid|urn:oid:1.2.3,urn:oid:4.5&identifier=urn:oid:4.5",
		"patient.identifier=sys|MRN&_lastUpdated=gt2023-04-17T10:00:00.5%2B02:00",
		"_summary=count&_include=ImagingStudy:endpoint&_format=json&_offset=2",
		"_lastUpdated=ap2023&foo=bar",
		"_count=0",
		"identifier=urn:oid:",
		"_lastUpdated=2023-04-17T10:00:00.",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, raw string, strict bool) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		s, err := ParseSearch(q, strict)
		if err != nil {
			var se *SearchError
			if !errors.As(err, &se) || se.Message == "" {
				t.Fatalf("error %v is not a SearchError with a message", err)
			}
			return
		}
		if s.Count < 0 || s.Count > MaxCount || s.Offset < 0 {
			t.Errorf("count %d, offset %d out of bounds", s.Count, s.Offset)
		}
		for _, uid := range s.StudyUIDs {
			if err := wadopath.CheckUID(uid); err != nil {
				t.Errorf("StudyUIDs holds %q, not a UID: %v", uid, err)
			}
		}
		if len(s.StudyUIDs) > 0 && !s.IdentifierGiven {
			t.Errorf("StudyUIDs without IdentifierGiven")
		}
		for _, f := range s.LastUpdated {
			if !f.End.After(f.Start) {
				t.Errorf("filter %+v: End is not after Start", f)
			}
		}
		for _, tok := range s.PatientIdentifiers {
			if strings.Contains(tok.Value, ",") {
				t.Errorf("patient.identifier value %q holds a comma", tok.Value)
			}
		}
		if strict && len(s.Ignored) > 0 {
			t.Errorf("strict search ignored %q", s.Ignored)
		}
	})
}

// Every list a caller writes into a search is bounded: patient.identifier
// values each become a PACS query, identifier values go to the PACS in one
// query string and are intersected with each other, and the rest are
// checked one by one.
func TestParseSearchListsAreBounded(t *testing.T) {
	uid := func(i int) string { return "urn:oid:2.25." + strconv.Itoa(i+1) }
	many := func(n int, f func(int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	tests := []struct {
		name      string
		atBound   url.Values
		pastBound url.Values
	}{
		{"patient.identifier values", url.Values{"patient.identifier": many(MaxPatientIdentifiers, func(i int) string { return "sys|MRN-" + strconv.Itoa(i) })},
			url.Values{"patient.identifier": many(MaxPatientIdentifiers, func(i int) string { return "MRN-" + strconv.Itoa(i) }), "subject.identifier": {"MRN-X"}}},
		{"patient and subject values", url.Values{"patient": many(MaxPatientValues, func(int) string { return "123" })},
			url.Values{"patient": {strings.Join(many(MaxPatientValues, func(int) string { return "123" }), ",")}, "subject": {"123"}}},
		{"identifier values in one list", url.Values{"identifier": {strings.Join(many(MaxStudyIdentifiers, uid), ",")}},
			url.Values{"identifier": {strings.Join(many(MaxStudyIdentifiers+1, uid), ",")}}},
		{"identifier values over repeats (AND-ed lists)", url.Values{"identifier": many(MaxStudyIdentifiers, uid)},
			url.Values{"identifier": append(many(MaxStudyIdentifiers, uid), uid(0)+","+uid(1))}},
		{"_lastUpdated comparisons", url.Values{"_lastUpdated": many(MaxDateFilters, func(int) string { return "ge2020" })},
			url.Values{"_lastUpdated": many(MaxDateFilters+1, func(int) string { return "ge2020" })}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseSearch(tt.atBound, true); err != nil {
				t.Errorf("at the bound: %v", err)
			}
			_, err := ParseSearch(tt.pastBound, false)
			var se *SearchError
			if !errors.As(err, &se) || !strings.Contains(se.Message, "at most") {
				t.Errorf("past the bound: err = %v, want a SearchError saying the bound", err)
			}
		})
	}
}
