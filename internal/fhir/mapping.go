package fhir

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/fhirid"
)

// tagBodyPartExamined is (0018,0015), mapped to series.bodySite.
const tagBodyPartExamined = "00180015"

// modalityOther is the DICOM defined term used when a series names no
// modality: R4 requires series.modality.
const modalityOther = "OT"

// MapOptions are the per-response facts ImagingStudyFrom cannot find in the
// DICOM attributes.
type MapOptions struct {
	// ID is the resource id; empty means ResourceID(StudyInstanceUID).
	ID string
	// Subject is the patient reference, normally absolute
	// ("https://ehr.example.org/fhir/Patient/123"). When it is empty the
	// subject is a logical reference built from the DICOM PatientID
	// (identifier value), IssuerOfPatientID (identifier system) and
	// PatientName (display). When it has no Display, PatientName fills it.
	Subject Reference
	// EndpointRef is the reference to the study's WADO-RS Endpoint
	// ("urn:uuid:…", "#e" or an absolute URL); empty means no endpoint.
	EndpointRef string
	// DefaultZone is the time zone of StudyDate/StudyTime (and the series
	// ones) when the dataset has no TimezoneOffsetFromUTC (0008,0201). FHIR
	// dateTime requires a zone whenever a time is given; DICOM times are
	// local times of the acquiring site, so deployments should set the
	// site's zone. Nil means UTC (what the reference server assumes).
	DefaultZone *time.Location
	// LastUpdated, when not zero, becomes meta.lastUpdated.
	LastUpdated time.Time
}

// ImagingStudyFrom maps a study found by an image source to a
// SmartImagingStudy:
//
//   - id: opts.ID, else ResourceID(StudyInstanceUID);
//   - identifier: urn:dicom:uid / urn:oid:{StudyInstanceUID};
//   - status: available;
//   - subject: see MapOptions.Subject;
//   - started: StudyDate + StudyTime (partial times padded with zeros,
//     fractional seconds kept), in the TimezoneOffsetFromUTC zone, else
//     opts.DefaultZone; a date alone stays a date (YYYY-MM-DD);
//   - modality: ModalitiesInStudy, else the series modalities, without
//     duplicates, in first-seen order (DCM codes);
//   - numberOfSeries / numberOfInstances: the study attributes, else counted
//     from the series when every count is known;
//   - description: StudyDescription, else the modalities ("CT, MR");
//   - endpoint: opts.EndpointRef;
//   - series: those with a SeriesInstanceUID, with number, modality (OT when
//     absent, as R4 requires one), description, numberOfInstances (attribute
//     or number of listed instances), bodySite (BodyPartExamined as display
//     text), started, and instances that have both a SOPInstanceUID and a
//     SOPClassUID.
//
// Nothing empty is emitted: absent or blank attributes leave their element
// out. A study without a StudyInstanceUID maps to a resource with no
// identifier; callers should not serve such studies.
func ImagingStudyFrom(st imagesource.Study, opts MapOptions) ImagingStudy {
	ds := st.Attributes
	zone := opts.DefaultZone
	if zone == nil {
		zone = time.UTC
	}
	studyOffset := text(ds, dicomjson.TagTimezoneOffsetFromUTC)

	uid := text(ds, dicomjson.TagStudyInstanceUID)
	is := ImagingStudy{ID: opts.ID, Status: "available"}
	if uid != "" {
		if is.ID == "" {
			is.ID = ResourceID(uid)
		}
		is.Identifier = []Identifier{{System: SystemDICOMUID, Value: "urn:oid:" + uid}}
	}
	if !opts.LastUpdated.IsZero() {
		is.Meta = &Meta{LastUpdated: opts.LastUpdated.UTC().Format(time.RFC3339Nano)}
	}
	is.Subject = subject(ds, opts.Subject)
	is.Started = dateTime(text(ds, dicomjson.TagStudyDate), text(ds, dicomjson.TagStudyTime), studyOffset, zone)
	if opts.EndpointRef != "" {
		is.Endpoint = []Reference{{Reference: opts.EndpointRef}}
	}

	// Series first: the study-level fallbacks count and list them.
	var seriesModalities []string
	instTotal, instKnown := 0, true
	for _, s := range st.Series {
		sr, ok := seriesFrom(s, studyOffset, zone)
		if !ok {
			continue
		}
		if m := text(s.Attributes, dicomjson.TagModality); m != "" {
			seriesModalities = append(seriesModalities, m)
		}
		if sr.NumberOfInstances != nil {
			instTotal += *sr.NumberOfInstances
		} else {
			instKnown = false
		}
		is.Series = append(is.Series, sr)
	}

	modalities := modalitiesOf(ds, seriesModalities)
	for _, m := range modalities {
		is.Modality = append(is.Modality, Coding{System: SystemDCM, Code: m})
	}

	if n, ok := count(ds, dicomjson.TagNumberOfStudyRelatedSeries); ok {
		is.NumberOfSeries = &n
	} else if len(is.Series) > 0 {
		is.NumberOfSeries = ptr(len(is.Series))
	}
	// Summing is only right when every series is listed with a count.
	complete := is.NumberOfSeries != nil && *is.NumberOfSeries == len(is.Series)
	if n, ok := count(ds, dicomjson.TagNumberOfStudyRelatedInst); ok {
		is.NumberOfInstances = &n
	} else if len(is.Series) > 0 && instKnown && complete {
		is.NumberOfInstances = &instTotal
	}

	is.Description = text(ds, dicomjson.TagStudyDescription)
	if is.Description == "" {
		is.Description = strings.Join(modalities, ", ")
	}
	return is
}

// seriesFrom maps one series; ok is false when it has no SeriesInstanceUID.
func seriesFrom(s imagesource.Series, studyOffset string, zone *time.Location) (ImagingStudySeries, bool) {
	ds := s.Attributes
	uid := text(ds, dicomjson.TagSeriesInstanceUID)
	if uid == "" {
		return ImagingStudySeries{}, false
	}
	modality := text(ds, dicomjson.TagModality)
	if modality == "" {
		modality = modalityOther
	}
	sr := ImagingStudySeries{
		UID:         uid,
		Modality:    Coding{System: SystemDCM, Code: modality},
		Description: text(ds, dicomjson.TagSeriesDescription),
	}
	if n, ok := count(ds, dicomjson.TagSeriesNumber); ok {
		sr.Number = &n
	}
	if n, ok := count(ds, dicomjson.TagNumberOfSeriesRelatedInst); ok {
		sr.NumberOfInstances = &n
	} else if len(s.Instances) > 0 {
		sr.NumberOfInstances = ptr(len(s.Instances))
	}
	if bp := text(ds, tagBodyPartExamined); bp != "" {
		sr.BodySite = &Coding{Display: bp}
	}
	offset := text(ds, dicomjson.TagTimezoneOffsetFromUTC)
	if _, ok := parseOffset(offset); !ok {
		offset = studyOffset
	}
	sr.Started = dateTime(text(ds, dicomjson.TagSeriesDate), text(ds, dicomjson.TagSeriesTime), offset, zone)
	for _, in := range s.Instances {
		iuid := text(in, dicomjson.TagSOPInstanceUID)
		class := text(in, dicomjson.TagSOPClassUID)
		if iuid == "" || class == "" {
			continue // R4 requires both
		}
		inst := ImagingStudyInstance{UID: iuid, SOPClass: Coding{System: SystemURI, Code: "urn:oid:" + class}}
		if n, ok := count(in, dicomjson.TagInstanceNumber); ok {
			inst.Number = &n
		}
		sr.Instance = append(sr.Instance, inst)
	}
	return sr, true
}

// subject builds ImagingStudy.subject; nil when nothing is known.
func subject(ds dicomjson.Dataset, given Reference) *Reference {
	name := personName(text(ds, dicomjson.TagPatientName))
	if !given.IsZero() {
		ref := given
		if ref.Display == "" {
			ref.Display = name
		}
		return &ref
	}
	ref := Reference{Display: name}
	if pid := text(ds, dicomjson.TagPatientID); pid != "" {
		ref.Type = "Patient"
		ref.Identifier = &Identifier{Value: pid}
		if issuer := text(ds, dicomjson.TagIssuerOfPatientID); issuer != "" {
			switch {
			case isOID(issuer):
				ref.Identifier.System = "urn:oid:" + issuer
			case isAbsoluteURI(issuer):
				ref.Identifier.System = issuer
			default:
				// A local issuer name ("HOSPITAL_A") is not a URI, so it
				// cannot be Identifier.system; it names the assigner.
				ref.Identifier.Assigner = &Reference{Display: issuer}
			}
		}
	}
	if ref.IsZero() {
		return nil
	}
	return &ref
}

// personName turns a DICOM PN ("Family^Given^Middle^Prefix^Suffix", first
// component group only) into "Prefix Given Middle Family Suffix".
func personName(pn string) string {
	if i := strings.IndexByte(pn, '='); i >= 0 {
		pn = pn[:i]
	}
	parts := strings.Split(pn, "^")
	for len(parts) < 5 {
		parts = append(parts, "")
	}
	var out []string
	for _, i := range []int{3, 1, 2, 0, 4} {
		if p := strings.Join(strings.Fields(parts[i]), " "); p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}

// ResourceID returns a FHIR id (fhirid.Valid) for a study UID. A DICOM UID
// (digits and dots, at most 64 characters) is its own id; anything
// else (a malformed UID from a lenient PACS) becomes "h-" followed by the
// first 62 hex digits of its SHA-256, which is deterministic, valid and
// cannot be mistaken for a UID.
func ResourceID(studyUID string) string {
	if fhirid.Valid(studyUID) {
		return studyUID
	}
	sum := sha256.Sum256([]byte(studyUID))
	return "h-" + hex.EncodeToString(sum[:])[:62]
}

// text is the first value of tag, trimmed of DICOM padding.
func text(ds dicomjson.Dataset, tag string) string {
	return trim(ds.String(tag))
}

// texts are the non-blank values of tag, trimmed.
func texts(ds dicomjson.Dataset, tag string) []string {
	var out []string
	for _, v := range ds.Strings(tag) {
		if v = trim(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// trim drops DICOM padding (spaces, NUL) and any other surrounding white
// space.
func trim(s string) string {
	return strings.TrimFunc(s, func(r rune) bool { return r == 0 || unicode.IsSpace(r) })
}

// count reads a non-negative integer attribute (FHIR unsignedInt).
func count(ds dicomjson.Dataset, tag string) (int, bool) {
	n, ok := ds.Int(tag)
	if !ok || n < 0 {
		return 0, false
	}
	return n, true
}

// uniq drops duplicates, keeping first-seen order.
func uniq(in []string) []string {
	var out []string
	seen := make(map[string]bool, len(in))
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func isOID(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
			return false
		}
	}
	return strings.Contains(s, ".")
}

// isAbsoluteURI reports whether s looks like "scheme:rest" with no spaces.
func isAbsoluteURI(s string) bool {
	i := strings.IndexByte(s, ':')
	if i < 1 || i == len(s)-1 || strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	for j := 0; j < i; j++ {
		c := s[j]
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !(letter || j > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return true
}

// dateTime turns a DICOM DA and TM into a FHIR dateTime: "" when the date is
// missing or invalid; "YYYY-MM-DD" when there is no usable time; otherwise
// "YYYY-MM-DDThh:mm:ss[.f]" with the zone of offset (TimezoneOffsetFromUTC,
// "+hhmm"/"-hhmm") or, when that is absent or invalid, of zone.
func dateTime(da, tm, offset string, zone *time.Location) string {
	y, mo, d, ok := parseDA(da)
	if !ok {
		return ""
	}
	date := fmt.Sprintf("%04d-%02d-%02d", y, mo, d)
	h, mi, s, frac, ok := parseTM(tm)
	if !ok {
		return date
	}
	clock := fmt.Sprintf("T%02d:%02d:%02d", h, mi, s)
	if frac != "" {
		clock += "." + frac
	}
	if off, ok := parseOffset(offset); ok {
		return date + clock + formatOffset(off)
	}
	// Second 60 (a leap second) would roll over in time.Date; the zone's
	// offset at :59 is the same.
	t := time.Date(y, time.Month(mo), d, h, mi, min(s, 59), 0, zone)
	_, off := t.Zone()
	if off%60 != 0 {
		// Sub-minute offsets (historical local mean time) cannot be written
		// in FHIR; give the instant in UTC instead.
		// Leap seconds postdate such offsets, so s < 60 here.
		u := t.UTC()
		clock = fmt.Sprintf("T%02d:%02d:%02d", u.Hour(), u.Minute(), u.Second())
		if frac != "" {
			clock += "." + frac
		}
		return u.Format("2006-01-02") + clock + "Z"
	}
	return date + clock + formatOffset(off/60)
}

func formatOffset(minutes int) string {
	if minutes == 0 {
		return "Z"
	}
	sign := '+'
	if minutes < 0 {
		sign, minutes = '-', -minutes
	}
	return fmt.Sprintf("%c%02d:%02d", sign, minutes/60, minutes%60)
}

// parseDA reads a DICOM date: YYYYMMDD, or the ACR-NEMA YYYY.MM.DD. The
// year must be 0001–9999 (FHIR has no year 0).
func parseDA(s string) (y, m, d int, ok bool) {
	s = strings.ReplaceAll(trim(s), ".", "")
	if len(s) != 8 || !digits(s) {
		return 0, 0, 0, false
	}
	y, m, d = atoi(s[0:4]), atoi(s[4:6]), atoi(s[6:8])
	if y < 1 {
		return 0, 0, 0, false
	}
	t := time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC)
	if t.Year() != y || int(t.Month()) != m || t.Day() != d {
		return 0, 0, 0, false
	}
	return y, m, d, true
}

// parseTM reads a DICOM time: HH, HHMM, HHMMSS or HHMMSS.F{1,6} (also with
// the ACR-NEMA colons). Missing minutes and seconds are zero; frac is the
// fraction's digits as given.
func parseTM(s string) (h, m, sec int, frac string, ok bool) {
	s = strings.ReplaceAll(trim(s), ":", "")
	hms := s
	if i := strings.IndexByte(s, '.'); i >= 0 {
		hms, frac = s[:i], s[i+1:]
		if len(hms) != 6 || len(frac) > 6 || (frac != "" && !digits(frac)) {
			return 0, 0, 0, "", false
		}
	}
	if !digits(hms) || (len(hms) != 2 && len(hms) != 4 && len(hms) != 6) {
		return 0, 0, 0, "", false
	}
	h = atoi(hms[0:2])
	if len(hms) >= 4 {
		m = atoi(hms[2:4])
	}
	if len(hms) == 6 {
		sec = atoi(hms[4:6])
	}
	if h > 23 || m > 59 || sec > 60 {
		return 0, 0, 0, "", false
	}
	return h, m, sec, frac, true
}

// parseOffset reads TimezoneOffsetFromUTC ("+hhmm" / "-hhmm") as minutes,
// within FHIR's range (−13:59 to +14:00).
func parseOffset(s string) (int, bool) {
	s = trim(s)
	if len(s) != 5 || (s[0] != '+' && s[0] != '-') || !digits(s[1:]) {
		return 0, false
	}
	h, m := atoi(s[1:3]), atoi(s[3:5])
	if m > 59 || h > 14 || (h == 14 && m != 0) {
		return 0, false
	}
	off := h*60 + m
	if s[0] == '-' {
		off = -off
	}
	return off, true
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// atoi converts a string already checked by digits.
func atoi(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}

// StudyModalities are the modalities ImagingStudy.modality lists for st:
// ModalitiesInStudy, else its series' modalities, without repeats.
func StudyModalities(st imagesource.Study) []string {
	var series []string
	for _, s := range st.Series {
		if m := text(s.Attributes, dicomjson.TagModality); m != "" {
			series = append(series, m)
		}
	}
	return modalitiesOf(st.Attributes, series)
}

func modalitiesOf(ds dicomjson.Dataset, series []string) []string {
	if m := uniq(texts(ds, dicomjson.TagModalitiesInStudy)); len(m) > 0 {
		return m
	}
	return uniq(series)
}
