// Package dicomjson is the DICOM JSON model of PS3.18 Annex F
// (application/dicom+json): the shape QIDO-RS answers and WADO-RS metadata
// use. The DICOM library we depend on reads and writes Part 10 files but has
// no JSON model, so this package supplies the decoder and encoder.
//
// A Dataset maps an eight-hex-digit tag ("0020000D") to its Element. Values
// keep their JSON meaning: strings for string VRs, json.Number for numeric
// VRs (so no precision is lost), PersonName for PN and Dataset for SQ items.
package dicomjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Tags used across the project, as eight upper-case hex digits.
const (
	TagSpecificCharacterSet       = "00080005"
	TagSOPClassUID                = "00080016"
	TagSOPInstanceUID             = "00080018"
	TagStudyDate                  = "00080020"
	TagSeriesDate                 = "00080021"
	TagStudyTime                  = "00080030"
	TagSeriesTime                 = "00080031"
	TagAccessionNumber            = "00080050"
	TagModality                   = "00080060"
	TagModalitiesInStudy          = "00080061"
	TagTimezoneOffsetFromUTC      = "00080201"
	TagReferringPhysicianName     = "00080090"
	TagRetrieveURL                = "00081190"
	TagStudyDescription           = "00081030"
	TagSeriesDescription          = "0008103E"
	TagPatientName                = "00100010"
	TagPatientID                  = "00100020"
	TagIssuerOfPatientID          = "00100021"
	TagPatientBirthDate           = "00100030"
	TagPatientSex                 = "00100040"
	TagStudyInstanceUID           = "0020000D"
	TagSeriesInstanceUID          = "0020000E"
	TagStudyID                    = "00200010"
	TagSeriesNumber               = "00200011"
	TagInstanceNumber             = "00200013"
	TagNumberOfStudyRelatedSeries = "00201206"
	TagNumberOfStudyRelatedInst   = "00201208"
	TagNumberOfSeriesRelatedInst  = "00201209"
	TagNumberOfFrames             = "00280008"
	TagRows                       = "00280010"
	TagColumns                    = "00280011"
	TagBitsAllocated              = "00280100"
	TagPixelData                  = "7FE00010"
)

// Dataset is one DICOM JSON object: tag → element.
type Dataset map[string]*Element

// Element is one attribute of a Dataset.
type Element struct {
	// VR is the two-letter value representation ("UI", "PN", "SQ", …).
	VR string `json:"vr"`
	// Value holds the values: string, json.Number, PersonName or Dataset
	// depending on VR. Nil means the attribute is present but empty.
	Value []any `json:"Value,omitempty"`
	// BulkDataURI points at the value when it is served separately.
	BulkDataURI string `json:"BulkDataURI,omitempty"`
	// InlineBinary is the base64 value of a binary VR.
	InlineBinary string `json:"InlineBinary,omitempty"`
}

// PersonName is a PN value in its three representations.
type PersonName struct {
	Alphabetic  string `json:"Alphabetic,omitempty"`
	Ideographic string `json:"Ideographic,omitempty"`
	Phonetic    string `json:"Phonetic,omitempty"`
}

// NormalizeTag turns "0020,000d", "(0020,000D)" or "0020000d" into
// "0020000D". It reports false for anything that is not a tag.
func NormalizeTag(s string) (string, bool) {
	if len(s) == 8 && isUpperHex(s) {
		return s, true // the form every DICOM JSON key has: no work, no allocation
	}
	s = tagPunct.Replace(s)
	if len(s) != 8 {
		return "", false
	}
	for i := 0; i < 8; i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return "", false
		}
	}
	return strings.ToUpper(s), true
}

// UnmarshalJSON decodes an element, typing each value by its VR.
func (e *Element) UnmarshalJSON(b []byte) error {
	var raw struct {
		VR           string            `json:"vr"`
		Value        []json.RawMessage `json:"Value"`
		BulkDataURI  string            `json:"BulkDataURI"`
		InlineBinary string            `json:"InlineBinary"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if !knownVRs[raw.VR] {
		return fmt.Errorf("dicomjson: element has invalid vr %q", raw.VR)
	}
	e.VR, e.BulkDataURI, e.InlineBinary = raw.VR, raw.BulkDataURI, raw.InlineBinary
	e.Value = nil
	if len(raw.Value) == 0 {
		return nil
	}
	e.Value = make([]any, len(raw.Value))
	for i, rv := range raw.Value {
		if bytes.Equal(bytes.TrimSpace(rv), []byte("null")) {
			continue
		}
		var err error
		switch raw.VR {
		case "SQ":
			var ds Dataset
			err = json.Unmarshal(rv, &ds)
			e.Value[i] = ds
		case "PN":
			var pn PersonName
			if err = json.Unmarshal(rv, &pn); err != nil {
				// Some servers send PN as a plain string.
				var s string
				if json.Unmarshal(rv, &s) == nil {
					pn, err = PersonName{Alphabetic: s}, nil
				}
			}
			e.Value[i] = pn
		case "DS", "FL", "FD", "IS", "SL", "SS", "SV", "UL", "US", "UV":
			d := json.NewDecoder(bytes.NewReader(rv))
			d.UseNumber()
			var v any
			if err = d.Decode(&v); err == nil {
				switch v.(type) {
				case json.Number, string:
				default:
					err = fmt.Errorf("dicomjson: %s value is %T, want number", raw.VR, v)
				}
			}
			e.Value[i] = v
		default:
			var s string
			if err = json.Unmarshal(rv, &s); err != nil {
				// AT and a few lenient servers use other JSON types; keep them as text.
				err = nil
				s = strings.ToValidUTF8(string(rv), "\uFFFD")
			}
			e.Value[i] = s
		}
		if err != nil {
			return fmt.Errorf("dicomjson: %s value %d: %w", raw.VR, i, err)
		}
	}
	return nil
}

// knownVRs are the value representations of PS3.5 §6.2.
var knownVRs = map[string]bool{
	"AE": true, "AS": true, "AT": true, "CS": true, "DA": true, "DS": true, "DT": true, "FL": true,
	"FD": true, "IS": true, "LO": true, "LT": true, "OB": true, "OD": true, "OF": true, "OL": true,
	"OV": true, "OW": true, "PN": true, "SH": true, "SL": true, "SQ": true, "SS": true, "ST": true,
	"SV": true, "TM": true, "UC": true, "UI": true, "UL": true, "UN": true, "UR": true, "US": true,
	"UT": true, "UV": true,
}

// UnmarshalJSON decodes a dataset, refusing keys that are not tags (they
// are normalized to upper-case hex) and dropping null elements.
func (ds *Dataset) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		return fmt.Errorf("dicomjson: dataset is null")
	}
	var raw map[string]*Element
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	out := make(Dataset, len(raw))
	for k, e := range raw {
		tag, ok := NormalizeTag(k)
		if !ok {
			return fmt.Errorf("dicomjson: key %q is not a tag", k)
		}
		if e == nil {
			// A null element says nothing; drop it.
			continue
		}
		out[tag] = e
	}
	*ds = out
	return nil
}

// Decode reads one DICOM JSON object.
func Decode(b []byte) (Dataset, error) {
	var ds Dataset
	if err := json.Unmarshal(b, &ds); err != nil {
		return nil, fmt.Errorf("dicomjson: decode dataset: %w", err)
	}
	return ds, nil
}

// DecodeList reads a DICOM JSON array, as QIDO-RS and metadata answer. An
// empty body decodes to an empty list (QIDO's 204 No Content).
func DecodeList(b []byte) ([]Dataset, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, nil
	}
	var list []Dataset
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("dicomjson: decode list: %w", err)
	}
	for i, ds := range list {
		if ds == nil {
			return nil, fmt.Errorf("dicomjson: list item %d is null", i)
		}
	}
	return list, nil
}

// MarshalJSON writes the dataset with its tags in ascending order, as PS3.18
// recommends.
func (ds Dataset) MarshalJSON() ([]byte, error) {
	tags := make([]string, 0, len(ds))
	for t := range ds {
		tags = append(tags, t)
	}
	sort.Strings(tags)
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, t := range tags {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, err := json.Marshal(t)
		if err != nil {
			return nil, fmt.Errorf("dicomjson: encode key %q: %w", t, err)
		}
		buf.Write(kb)
		buf.WriteByte(':')
		b, err := json.Marshal(ds[t])
		if err != nil {
			return nil, fmt.Errorf("dicomjson: encode %s: %w", t, err)
		}
		buf.Write(b)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// Get returns the element for tag, or nil.
func (ds Dataset) Get(tag string) *Element {
	if ds == nil {
		return nil
	}
	return ds[tag]
}

// String returns the first value of tag as text ("" when absent). A person
// name gives its alphabetic form.
func (ds Dataset) String(tag string) string {
	vs := ds.Strings(tag)
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// Strings returns every value of tag as text.
func (ds Dataset) Strings(tag string) []string {
	e := ds.Get(tag)
	if e == nil {
		return nil
	}
	out := make([]string, 0, len(e.Value))
	for _, v := range e.Value {
		switch x := v.(type) {
		case string:
			out = append(out, x)
		case json.Number:
			out = append(out, x.String())
		case PersonName:
			out = append(out, x.Alphabetic)
		case nil:
			out = append(out, "")
		}
	}
	return out
}

// Int returns the first value of tag as an integer.
func (ds Dataset) Int(tag string) (int, bool) {
	s := strings.TrimSpace(ds.String(tag))
	if s == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(s); err == nil {
		return n, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, false
	}
	return int(f), true
}

// Set stores values under tag with the given VR, replacing what was there.
// Values are stored as given; use SetString for plain text.
func (ds Dataset) Set(tag, vr string, values ...any) {
	ds[tag] = &Element{VR: vr, Value: values}
}

// SetString stores string values under tag.
func (ds Dataset) SetString(tag, vr string, values ...string) {
	vs := make([]any, len(values))
	for i, v := range values {
		vs[i] = v
	}
	ds.Set(tag, vr, vs...)
}

// SetInt stores integer values under tag (IS, US, UL, SL, …).
func (ds Dataset) SetInt(tag, vr string, values ...int) {
	vs := make([]any, len(values))
	for i, v := range values {
		vs[i] = json.Number(strconv.Itoa(v))
	}
	ds.Set(tag, vr, vs...)
}

// tagPunct removes the punctuation of the "(gggg,eeee)" tag forms.
var tagPunct = strings.NewReplacer("(", "", ")", "", ",", "")

func isUpperHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
