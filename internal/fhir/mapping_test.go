package fhir

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // zone tests must not depend on the host's zoneinfo

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

const (
	studyUID = "1.2.840.99999999.19341866.1571297684"
	ctImage  = "1.2.840.10008.5.1.4.1.1.2"
	mrImage  = "1.2.840.10008.5.1.4.1.1.4"
)

// studyDS builds study attributes from tag/value pairs; values that look
// like integers for count tags are stored with SetInt.
func studyDS(kv ...string) dicomjson.Dataset {
	ds := dicomjson.Dataset{}
	for i := 0; i+1 < len(kv); i += 2 {
		tag, v := kv[i], kv[i+1]
		switch tag {
		case dicomjson.TagNumberOfStudyRelatedSeries, dicomjson.TagNumberOfStudyRelatedInst,
			dicomjson.TagNumberOfSeriesRelatedInst, dicomjson.TagSeriesNumber, dicomjson.TagInstanceNumber:
			n := 0
			for _, c := range v {
				n = n*10 + int(c-'0')
			}
			ds.SetInt(tag, "IS", n)
		case dicomjson.TagModalitiesInStudy:
			ds.SetString(tag, "CS", strings.Split(v, `\`)...)
		case dicomjson.TagPatientName:
			ds.Set(tag, "PN", dicomjson.PersonName{Alphabetic: v})
		default:
			ds.SetString(tag, "LO", v)
		}
	}
	return ds
}

func series(uid, modality string, kv ...string) imagesource.Series {
	attrs := studyDS(kv...)
	if uid != "" {
		attrs.SetString(dicomjson.TagSeriesInstanceUID, "UI", uid)
	}
	if modality != "" {
		attrs.SetString(dicomjson.TagModality, "CS", modality)
	}
	return imagesource.Series{Attributes: attrs}
}

func instance(uid, class string, number int) dicomjson.Dataset {
	ds := dicomjson.Dataset{}
	if uid != "" {
		ds.SetString(dicomjson.TagSOPInstanceUID, "UI", uid)
	}
	if class != "" {
		ds.SetString(dicomjson.TagSOPClassUID, "UI", class)
	}
	ds.SetInt(dicomjson.TagInstanceNumber, "IS", number)
	return ds
}

func TestStartedTimeZones(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name         string
		date, tm, tz string
		zone         *time.Location
		want         string
	}{
		{"offset from dataset", "20230224", "140249", "+0200", nil, "2023-02-24T14:02:49+02:00"},
		{"negative offset", "20230224", "140249", "-0500", nil, "2023-02-24T14:02:49-05:00"},
		{"half-hour offset", "20230224", "140249", "+0530", nil, "2023-02-24T14:02:49+05:30"},
		{"zero offset", "20230224", "140249", "+0000", nil, "2023-02-24T14:02:49Z"},
		{"offset wins over default zone", "20230224", "140249", "-0300", berlin, "2023-02-24T14:02:49-03:00"},
		{"no offset: UTC by default", "20230224", "140249", "", nil, "2023-02-24T14:02:49Z"},
		{"no offset: default zone in winter", "20230224", "140249", "", berlin, "2023-02-24T14:02:49+01:00"},
		{"no offset: default zone in summer", "20230724", "140249", "", berlin, "2023-07-24T14:02:49+02:00"},
		{"invalid offset falls back", "20230224", "140249", "+2500", berlin, "2023-02-24T14:02:49+01:00"},
		{"offset without sign falls back", "20230224", "140249", "0200", nil, "2023-02-24T14:02:49Z"},
		{"hour only", "20230224", "09", "", nil, "2023-02-24T09:00:00Z"},
		{"hour and minute", "20230224", "0930", "+0100", nil, "2023-02-24T09:30:00+01:00"},
		{"fraction kept as given", "20230224", "093005.1", "", nil, "2023-02-24T09:30:05.1Z"},
		{"six-digit fraction", "20230224", "093005.123456", "", nil, "2023-02-24T09:30:05.123456Z"},
		{"trailing dot", "20230224", "093005.", "", nil, "2023-02-24T09:30:05Z"},
		{"ACR-NEMA colons", "2023.02.24", "09:30:05", "", nil, "2023-02-24T09:30:05Z"},
		{"padding", "20230224 ", "0930 ", "", nil, "2023-02-24T09:30:00Z"},
		{"leap second", "20161231", "235960", "", nil, "2016-12-31T23:59:60Z"},
		{"date only", "20230224", "", "+0200", nil, "2023-02-24"},
		{"invalid time gives date", "20230224", "2530", "", nil, "2023-02-24"},
		{"odd-length time gives date", "20230224", "093", "", nil, "2023-02-24"},
		{"fraction needs seconds", "20230224", "0930.5", "", nil, "2023-02-24"},
		{"invalid date", "20230230", "0930", "", nil, ""},
		{"year zero", "00000101", "", "", nil, ""},
		{"no date", "", "0930", "", nil, ""},
		{"garbage date", "2023-2-4", "", "", nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kv := []string{dicomjson.TagStudyInstanceUID, studyUID}
			if tc.date != "" {
				kv = append(kv, dicomjson.TagStudyDate, tc.date)
			}
			if tc.tm != "" {
				kv = append(kv, dicomjson.TagStudyTime, tc.tm)
			}
			if tc.tz != "" {
				kv = append(kv, dicomjson.TagTimezoneOffsetFromUTC, tc.tz)
			}
			is := ImagingStudyFrom(imagesource.Study{Attributes: studyDS(kv...)},
				MapOptions{Subject: Reference{Reference: "Patient/1"}, DefaultZone: tc.zone})
			if is.Started != tc.want {
				t.Errorf("started = %q, want %q", is.Started, tc.want)
			}
			mustValid(t, is)
		})
	}
}

func TestSubSecondZoneOffsetBecomesUTC(t *testing.T) {
	// Amsterdam kept local mean time until 1937: +01:19:32 in summer 1930.
	ams, err := time.LoadLocation("Europe/Amsterdam")
	if err != nil {
		t.Fatal(err)
	}
	got := dateTime("19300601", "120000", "", ams)
	if got != "1930-06-01T10:40:28Z" {
		t.Errorf("got %q", got)
	}
}

func TestSeriesStartedUsesStudyOffset(t *testing.T) {
	st := imagesource.Study{
		Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID, dicomjson.TagTimezoneOffsetFromUTC, "+0900"),
		Series: []imagesource.Series{
			series("1.2.3.1", "CT", dicomjson.TagSeriesDate, "20230101", dicomjson.TagSeriesTime, "0800"),
			series("1.2.3.2", "CT", dicomjson.TagSeriesDate, "20230101", dicomjson.TagSeriesTime, "0800",
				dicomjson.TagTimezoneOffsetFromUTC, "-0100"),
		},
	}
	is := ImagingStudyFrom(st, MapOptions{Subject: Reference{Reference: "Patient/1"}})
	if got := is.Series[0].Started; got != "2023-01-01T08:00:00+09:00" {
		t.Errorf("series 1 started = %q", got)
	}
	if got := is.Series[1].Started; got != "2023-01-01T08:00:00-01:00" {
		t.Errorf("series 2 started = %q", got)
	}
	if is.Started != "" {
		t.Errorf("study without StudyDate has started %q", is.Started)
	}
	mustValid(t, is)
}

func codes(cs []Coding) []string {
	var out []string
	for _, c := range cs {
		if c.System != SystemDCM {
			return []string{"bad system " + c.System}
		}
		out = append(out, c.Code)
	}
	return out
}

func TestImagingStudyFrom(t *testing.T) {
	subj := Reference{Reference: "https://ehr.example.org/fhir/Patient/123"}
	cases := []struct {
		name  string
		study imagesource.Study
		opts  MapOptions
		check func(t *testing.T, is ImagingStudy)
	}{
		{
			name: "full study",
			study: imagesource.Study{
				Attributes: studyDS(
					dicomjson.TagStudyInstanceUID, studyUID,
					dicomjson.TagStudyDescription, "CT CHEST",
					dicomjson.TagModalitiesInStudy, `CT\SR`,
					dicomjson.TagNumberOfStudyRelatedSeries, "5",
					dicomjson.TagNumberOfStudyRelatedInst, "300",
					dicomjson.TagPatientName, "Doe^John",
					dicomjson.TagPatientID, "MRN1",
				),
				Series: []imagesource.Series{
					series(studyUID+".1", "CT", dicomjson.TagSeriesNumber, "1", dicomjson.TagSeriesDescription, "AXIAL",
						dicomjson.TagNumberOfSeriesRelatedInst, "120", "00180015", "CHEST"),
				},
			},
			opts: MapOptions{Subject: subj, EndpointRef: "urn:uuid:7d30f876-3d28-4c21-9f9d-13bfa9dd42a0"},
			check: func(t *testing.T, is ImagingStudy) {
				want := ImagingStudy{
					ID:                studyUID,
					Identifier:        []Identifier{{System: "urn:dicom:uid", Value: "urn:oid:" + studyUID}},
					Status:            "available",
					Modality:          []Coding{{System: SystemDCM, Code: "CT"}, {System: SystemDCM, Code: "SR"}},
					Subject:           &Reference{Reference: subj.Reference, Display: "John Doe"},
					Endpoint:          []Reference{{Reference: "urn:uuid:7d30f876-3d28-4c21-9f9d-13bfa9dd42a0"}},
					NumberOfSeries:    ptr(5),
					NumberOfInstances: ptr(300),
					Description:       "CT CHEST",
					Series: []ImagingStudySeries{{
						UID: studyUID + ".1", Number: ptr(1), Modality: Coding{System: SystemDCM, Code: "CT"},
						Description: "AXIAL", NumberOfInstances: ptr(120), BodySite: &Coding{Display: "CHEST"},
					}},
				}
				if !reflect.DeepEqual(is, want) {
					got, _ := json.Marshal(is)
					exp, _ := json.Marshal(want)
					t.Errorf("got  %s\nwant %s", got, exp)
				}
			},
		},
		{
			name: "description falls back to ModalitiesInStudy",
			study: imagesource.Study{Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID,
				dicomjson.TagModalitiesInStudy, `CT\MR`)},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				if is.Description != "CT, MR" {
					t.Errorf("description = %q", is.Description)
				}
			},
		},
		{
			name: "blank description treated as missing",
			study: imagesource.Study{Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID,
				dicomjson.TagStudyDescription, "   ", dicomjson.TagModalitiesInStudy, "US")},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				if is.Description != "US" {
					t.Errorf("description = %q", is.Description)
				}
			},
		},
		{
			name: "modalities from series, deduplicated, first-seen order",
			study: imagesource.Study{
				Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID),
				Series: []imagesource.Series{
					series("1.2.1", "MR"), series("1.2.2", "CT"), series("1.2.3", "MR"), series("1.2.4", ""),
				},
			},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				if got := codes(is.Modality); !reflect.DeepEqual(got, []string{"MR", "CT"}) {
					t.Errorf("modality = %v", got)
				}
				if is.Description != "MR, CT" {
					t.Errorf("description = %q", is.Description)
				}
				if got := is.Series[3].Modality.Code; got != "OT" {
					t.Errorf("series without modality has %q, want OT", got)
				}
			},
		},
		{
			name: "empty ModalitiesInStudy values fall back to series",
			study: imagesource.Study{
				Attributes: func() dicomjson.Dataset {
					ds := studyDS(dicomjson.TagStudyInstanceUID, studyUID)
					ds.SetString(dicomjson.TagModalitiesInStudy, "CS", "", " ")
					return ds
				}(),
				Series: []imagesource.Series{series("1.2.1", "XA")},
			},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				if got := codes(is.Modality); !reflect.DeepEqual(got, []string{"XA"}) {
					t.Errorf("modality = %v", got)
				}
			},
		},
		{
			name: "counts from series and instances",
			study: imagesource.Study{
				Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID, dicomjson.TagModalitiesInStudy, "CT"),
				Series: []imagesource.Series{
					series("1.2.1", "CT", dicomjson.TagNumberOfSeriesRelatedInst, "10"),
					{
						Attributes: series("1.2.2", "CT", dicomjson.TagSeriesNumber, "2").Attributes,
						Instances: []dicomjson.Dataset{
							instance("1.2.2.1", ctImage, 1),
							instance("1.2.2.2", ctImage, 2),
							instance("1.2.2.3", "", 3), // no SOP class: not listed, still counted
						},
					},
				},
			},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				if is.NumberOfSeries == nil || *is.NumberOfSeries != 2 {
					t.Errorf("numberOfSeries = %v, want 2", is.NumberOfSeries)
				}
				if is.NumberOfInstances == nil || *is.NumberOfInstances != 13 {
					t.Errorf("numberOfInstances = %v, want 13", is.NumberOfInstances)
				}
				s := is.Series[1]
				if s.NumberOfInstances == nil || *s.NumberOfInstances != 3 {
					t.Errorf("series numberOfInstances = %v, want 3", s.NumberOfInstances)
				}
				want := []ImagingStudyInstance{
					{UID: "1.2.2.1", SOPClass: Coding{System: SystemURI, Code: "urn:oid:" + ctImage}, Number: ptr(1)},
					{UID: "1.2.2.2", SOPClass: Coding{System: SystemURI, Code: "urn:oid:" + ctImage}, Number: ptr(2)},
				}
				if !reflect.DeepEqual(s.Instance, want) {
					t.Errorf("instances = %+v", s.Instance)
				}
			},
		},
		{
			name: "instance total unknown when a series count is unknown",
			study: imagesource.Study{
				Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID),
				Series: []imagesource.Series{
					series("1.2.1", "CT", dicomjson.TagNumberOfSeriesRelatedInst, "10"),
					series("1.2.2", "CT"),
				},
			},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				if is.NumberOfInstances != nil {
					t.Errorf("numberOfInstances = %d, want absent", *is.NumberOfInstances)
				}
				if is.NumberOfSeries == nil || *is.NumberOfSeries != 2 {
					t.Errorf("numberOfSeries = %v", is.NumberOfSeries)
				}
			},
		},
		{
			name: "instance total unknown when series are missing from the list",
			study: imagesource.Study{
				Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID, dicomjson.TagNumberOfStudyRelatedSeries, "3"),
				Series:     []imagesource.Series{series("1.2.1", "CT", dicomjson.TagNumberOfSeriesRelatedInst, "10")},
			},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				if is.NumberOfInstances != nil {
					t.Errorf("numberOfInstances = %d, want absent", *is.NumberOfInstances)
				}
				if *is.NumberOfSeries != 3 {
					t.Errorf("numberOfSeries = %d, want the attribute's 3", *is.NumberOfSeries)
				}
			},
		},
		{
			name: "series without uid are dropped",
			study: imagesource.Study{
				Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID),
				Series:     []imagesource.Series{series("", "CT"), series("1.2.9", "MR")},
			},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				if len(is.Series) != 1 || is.Series[0].UID != "1.2.9" {
					t.Errorf("series = %+v", is.Series)
				}
				if got := codes(is.Modality); !reflect.DeepEqual(got, []string{"MR"}) {
					t.Errorf("modality = %v", got)
				}
			},
		},
		{
			name:  "empty study: no series, counts, modality or description",
			study: imagesource.Study{Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID), Series: []imagesource.Series{}},
			opts:  MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				b, _ := json.Marshal(is)
				for _, k := range []string{"series", "numberOfSeries", "numberOfInstances", "modality", "description", "endpoint", "started"} {
					if strings.Contains(string(b), `"`+k+`"`) {
						t.Errorf("%s present in %s", k, b)
					}
				}
			},
		},
		{
			name: "zero counts from attributes are kept",
			study: imagesource.Study{Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID,
				dicomjson.TagNumberOfStudyRelatedSeries, "0", dicomjson.TagNumberOfStudyRelatedInst, "0")},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				b, _ := json.Marshal(is)
				if !strings.Contains(string(b), `"numberOfSeries":0`) || !strings.Contains(string(b), `"numberOfInstances":0`) {
					t.Errorf("zero counts lost: %s", b)
				}
			},
		},
		{
			name:  "explicit id and lastUpdated",
			study: imagesource.Study{Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID)},
			opts: MapOptions{ID: "abc-1", Subject: subj,
				LastUpdated: time.Date(2024, 5, 6, 7, 8, 9, 0, time.FixedZone("", 3600))},
			check: func(t *testing.T, is ImagingStudy) {
				if is.ID != "abc-1" {
					t.Errorf("id = %q", is.ID)
				}
				if is.Meta == nil || is.Meta.LastUpdated != "2024-05-06T06:08:09Z" {
					t.Errorf("meta = %+v", is.Meta)
				}
			},
		},
		{
			name: "padded UIDs are trimmed",
			study: imagesource.Study{
				Attributes: studyDS(dicomjson.TagStudyInstanceUID, studyUID+"\x00"),
				Series:     []imagesource.Series{series("1.2.3 ", "CT ")},
			},
			opts: MapOptions{Subject: subj},
			check: func(t *testing.T, is ImagingStudy) {
				if is.ID != studyUID || is.Series[0].UID != "1.2.3" || is.Series[0].Modality.Code != "CT" {
					t.Errorf("not trimmed: %+v", is)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			is := ImagingStudyFrom(tc.study, tc.opts)
			tc.check(t, is)
			mustValid(t, is)
		})
	}
}

func TestSubject(t *testing.T) {
	cases := []struct {
		name string
		kv   []string
		ref  Reference
		want *Reference
	}{
		{
			name: "absolute reference gets the DICOM name as display",
			kv:   []string{dicomjson.TagPatientName, "Kshlerin^Danae^^^", dicomjson.TagPatientID, "MRN1"},
			ref:  Reference{Reference: "https://ehr.example.org/fhir/Patient/123"},
			want: &Reference{Reference: "https://ehr.example.org/fhir/Patient/123", Display: "Danae Kshlerin"},
		},
		{
			name: "caller's display wins",
			kv:   []string{dicomjson.TagPatientName, "Doe^John"},
			ref:  Reference{Reference: "Patient/1", Display: "J. Doe"},
			want: &Reference{Reference: "Patient/1", Display: "J. Doe"},
		},
		{
			name: "identifier with OID issuer",
			kv:   []string{dicomjson.TagPatientName, "Doe^John^Q^Dr^Jr", dicomjson.TagPatientID, "MRN1", dicomjson.TagIssuerOfPatientID, "2.16.840.1.113883.3.72"},
			want: &Reference{Type: "Patient", Identifier: &Identifier{System: "urn:oid:2.16.840.1.113883.3.72", Value: "MRN1"}, Display: "Dr John Q Doe Jr"},
		},
		{
			name: "identifier with URI issuer",
			kv:   []string{dicomjson.TagPatientID, "MRN1", dicomjson.TagIssuerOfPatientID, "http://hospital.example.org/mrn"},
			want: &Reference{Type: "Patient", Identifier: &Identifier{System: "http://hospital.example.org/mrn", Value: "MRN1"}},
		},
		{
			name: "local issuer name becomes the assigner",
			kv:   []string{dicomjson.TagPatientID, "MRN1", dicomjson.TagIssuerOfPatientID, "HOSPITAL A"},
			want: &Reference{Type: "Patient", Identifier: &Identifier{Value: "MRN1", Assigner: &Reference{Display: "HOSPITAL A"}}},
		},
		{
			name: "single name component has no stray space",
			kv:   []string{dicomjson.TagPatientName, "Anonymous"},
			want: &Reference{Display: "Anonymous"},
		},
		{
			name: "ideographic group ignored",
			kv:   []string{dicomjson.TagPatientName, "Yamada^Tarou=山田^太郎"},
			want: &Reference{Display: "Tarou Yamada"},
		},
		{
			name: "nothing known",
			kv:   nil,
			want: nil,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kv := append([]string{dicomjson.TagStudyInstanceUID, studyUID}, tc.kv...)
			is := ImagingStudyFrom(imagesource.Study{Attributes: studyDS(kv...)}, MapOptions{Subject: tc.ref})
			if !reflect.DeepEqual(is.Subject, tc.want) {
				got, _ := json.Marshal(is.Subject)
				want, _ := json.Marshal(tc.want)
				t.Errorf("subject = %s, want %s", got, want)
			}
			if tc.want != nil {
				mustValid(t, is)
			}
		})
	}
}

func TestPersonNameFromPlainStringPN(t *testing.T) {
	// Some servers send PN as a plain string; dicomjson keeps it as one.
	ds, err := dicomjson.Decode([]byte(`{"0020000D":{"vr":"UI","Value":["1.2.3"]},"00100010":{"vr":"PN","Value":["Doe^Jane"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	is := ImagingStudyFrom(imagesource.Study{Attributes: ds}, MapOptions{})
	if is.Subject == nil || is.Subject.Display != "Jane Doe" {
		t.Errorf("subject = %+v", is.Subject)
	}
}

func TestMappingFromQIDOJSON(t *testing.T) {
	// A QIDO-RS study row as Orthanc answers it (IS counts as strings).
	rows, err := dicomjson.DecodeList([]byte(`[{
		"00080020":{"vr":"DA","Value":["20200101"]},
		"00080030":{"vr":"TM","Value":["101500.000"]},
		"00080061":{"vr":"CS","Value":["CR"]},
		"00081030":{"vr":"LO","Value":["Upper Extremity"]},
		"00100010":{"vr":"PN","Value":[{"Alphabetic":"Kshlerin^Danae"}]},
		"00100020":{"vr":"LO","Value":["a1b2"]},
		"0020000D":{"vr":"UI","Value":["1.2.3.4"]},
		"00201206":{"vr":"IS","Value":["3"]},
		"00201208":{"vr":"IS","Value":[42]}
	}]`))
	if err != nil {
		t.Fatal(err)
	}
	is := ImagingStudyFrom(imagesource.Study{Attributes: rows[0]}, MapOptions{
		Subject: Reference{Reference: "https://ehr.example.org/fhir/Patient/9"}, EndpointRef: "urn:uuid:7d30f876-3d28-4c21-9f9d-13bfa9dd42a0"})
	b := mustValid(t, is)
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["resourceType"] != "ImagingStudy" || got["started"] != "2020-01-01T10:15:00.000Z" ||
		got["numberOfSeries"] != 3.0 || got["numberOfInstances"] != 42.0 {
		t.Errorf("unexpected: %s", b)
	}
	// What real clients read: identifier[0].value minus "urn:oid:" is the UID
	// they put in the WADO path.
	uid := strings.TrimPrefix(is.Identifier[0].Value, "urn:oid:")
	if _, err := wadopath.Parse("studies/" + uid); err != nil {
		t.Errorf("client-derived UID %q is not a WADO path: %v", uid, err)
	}
}

func TestResourceID(t *testing.T) {
	long := "1." + strings.Repeat("2", 70)
	cases := []struct {
		uid  string
		want string // "" = hashed
	}{
		{studyUID, studyUID},
		{"1.2.3", "1.2.3"},
		{"1." + strings.Repeat("9", 62), "1." + strings.Repeat("9", 62)},
		{long, ""},
		{"1.2.3/../x", ""},
		{"1.2 3", ""},
		{"", ""},
	}
	seen := map[string]string{}
	for _, tc := range cases {
		got := ResourceID(tc.uid)
		if !reID.MatchString("" + got) {
			t.Errorf("ResourceID(%q) = %q is not a FHIR id", tc.uid, got)
		}
		if tc.want != "" && got != tc.want {
			t.Errorf("ResourceID(%q) = %q, want %q", tc.uid, got, tc.want)
		}
		if tc.want == "" && !strings.HasPrefix(got, "h-") {
			t.Errorf("ResourceID(%q) = %q, want a hashed id", tc.uid, got)
		}
		if again := ResourceID(tc.uid); again != got {
			t.Errorf("ResourceID(%q) not deterministic: %q then %q", tc.uid, got, again)
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("ResourceID(%q) collides with ResourceID(%q)", tc.uid, prev)
		}
		seen[got] = tc.uid
	}
}

func FuzzImagingStudyFromIsValidFHIR(f *testing.F) {
	f.Add("20230224", "140249.12", "+0200", "CT CHEST", `CT\MR`, "1.2.3", "Doe^John")
	f.Add("", "24", "+9999", "", "", "", "")
	f.Fuzz(func(t *testing.T, da, tm, tz, desc, mods, uid, name string) {
		ds := studyDS(dicomjson.TagStudyInstanceUID, studyUID, dicomjson.TagStudyDate, da, dicomjson.TagStudyTime, tm,
			dicomjson.TagTimezoneOffsetFromUTC, tz, dicomjson.TagStudyDescription, desc,
			dicomjson.TagModalitiesInStudy, mods, dicomjson.TagPatientName, name)
		st := imagesource.Study{Attributes: ds, Series: []imagesource.Series{series(uid, "CT")}}
		is := ImagingStudyFrom(st, MapOptions{Subject: Reference{Reference: "Patient/1"}})
		b, err := json.Marshal(is)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range fhirCheck(b) {
			// UIDs and codes come from the PACS as given; only the parts this
			// package formats must always be valid.
			if strings.Contains(e, "started:") || strings.Contains(e, "empty") || strings.Contains(e, "null") || strings.HasPrefix(e, ".id:") {
				t.Errorf("%s\n%s", e, b)
			}
		}
	})
}
