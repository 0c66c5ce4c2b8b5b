package folder

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	dtag "github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
)

// inlineMax is the largest top-level binary value sent inline (base64) in
// metadata; larger ones get a BulkDataURI.
const inlineMax = 1024

// converter turns parsed DICOM elements into DICOM JSON (PS3.18 Annex F).
type converter struct {
	// instanceURL is ".../studies/{st}/series/{se}/instances/{i}" on the
	// public base; when empty, no BulkDataURI is written and large binary
	// values are sent inline.
	instanceURL string
}

func tagKey(t dtag.Tag) string {
	return fmt.Sprintf("%04X%04X", t.Group, t.Element)
}

// dataset converts a list of elements. File meta (group 0002), group
// lengths, item delimiters and trailing padding are left out.
func (c converter) dataset(elems []*dicom.Element, top bool) dicomjson.Dataset {
	ds := make(dicomjson.Dataset, len(elems))
	for _, e := range elems {
		t := e.Tag
		if t.Group == 0x0002 || t.Group == 0xFFFE || t.Element == 0x0000 || (t.Group == 0xFFFC && t.Element == 0xFFFC) {
			continue
		}
		key := tagKey(t)
		ds[key] = c.element(e, key, top)
	}
	return ds
}

var binaryVRs = map[string]bool{"OB": true, "OD": true, "OF": true, "OL": true, "OV": true, "OW": true, "UN": true}

// singleValued VRs may hold a backslash inside their one value; the library
// splits every string on backslashes, so they are joined back.
var singleValued = map[string]bool{"LT": true, "ST": true, "UT": true, "UR": true}

func elementVR(e *dicom.Element) string {
	vr := e.RawValueRepresentation
	if len(vr) == 2 && vr[0] >= 'A' && vr[0] <= 'Z' && vr[1] >= 'A' && vr[1] <= 'Z' {
		return vr
	}
	if info, err := dtag.Find(e.Tag); err == nil && len(info.VRs) > 0 {
		return info.VRs[0]
	}
	return "UN"
}

func (c converter) element(e *dicom.Element, key string, top bool) *dicomjson.Element {
	vr := elementVR(e)
	out := &dicomjson.Element{VR: vr}
	if e.Value == nil {
		return out
	}
	switch e.Value.ValueType() {
	case dicom.Strings:
		strs, _ := e.Value.GetValue().([]string)
		if binaryVRs[vr] {
			// OF, OD, OL and OV are read as text by the library, which
			// loses bytes; they are left empty rather than sent wrong.
			return out
		}
		if singleValued[vr] {
			strs = []string{strings.Join(strs, `\`)}
		}
		if len(strs) == 1 && strs[0] == "" {
			return out
		}
		out.Value = make([]any, len(strs))
		for i, s := range strs {
			out.Value[i] = stringValue(vr, s)
		}
	case dicom.Ints:
		ints, _ := e.Value.GetValue().([]int)
		if vr == "AT" {
			for i := 0; i+1 < len(ints); i += 2 {
				out.Value = append(out.Value, fmt.Sprintf("%04X%04X", ints[i], ints[i+1]))
			}
			return out
		}
		if binaryVRs[vr] {
			return out
		}
		out.Value = make([]any, len(ints))
		for i, n := range ints {
			out.Value[i] = json.Number(strconv.Itoa(n))
		}
	case dicom.Floats:
		fs, _ := e.Value.GetValue().([]float64)
		out.Value = make([]any, len(fs))
		for i, f := range fs {
			if math.IsNaN(f) || math.IsInf(f, 0) {
				continue // JSON has no NaN: null
			}
			out.Value[i] = json.Number(strconv.FormatFloat(f, 'g', -1, 64))
		}
	case dicom.Bytes:
		b, _ := e.Value.GetValue().([]byte)
		if !binaryVRs[vr] {
			out.VR = "UN"
		}
		switch {
		case len(b) == 0:
		case top && len(b) > inlineMax && c.instanceURL != "":
			out.BulkDataURI = c.instanceURL + "/bulkdata/" + key
		default:
			out.InlineBinary = base64.StdEncoding.EncodeToString(b)
		}
	case dicom.PixelData:
		if info, ok := e.Value.GetValue().(dicom.PixelDataInfo); ok && info.IsEncapsulated {
			out.VR = "OB"
		} else if !binaryVRs[vr] {
			out.VR = "OW"
		}
		if top && c.instanceURL != "" {
			out.BulkDataURI = c.instanceURL + "/bulkdata/" + key
		}
	case dicom.Sequences:
		out.VR = "SQ"
		items, _ := e.Value.GetValue().([]*dicom.SequenceItemValue)
		for _, it := range items {
			elems, _ := it.GetValue().([]*dicom.Element)
			out.Value = append(out.Value, c.dataset(elems, false))
		}
	}
	return out
}

// jsonNumber is the JSON number grammar (RFC 8259 §6).
var jsonNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// stringValue types one text value by VR: numbers for IS and DS (kept as
// text when they are not numbers), PersonName for PN, nil for empty.
func stringValue(vr, s string) any {
	switch vr {
	case "PN":
		if s == "" {
			return nil
		}
		groups := strings.SplitN(s, "=", 3)
		pn := dicomjson.PersonName{Alphabetic: groups[0]}
		if len(groups) > 1 {
			pn.Ideographic = groups[1]
		}
		if len(groups) > 2 {
			pn.Phonetic = groups[2]
		}
		return pn
	case "IS", "DS":
		t := strings.TrimSpace(s)
		if t == "" {
			return nil
		}
		if jsonNumber.MatchString(t) {
			return json.Number(t)
		}
		f, err := strconv.ParseFloat(strings.TrimPrefix(t, "+"), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return t
		}
		return json.Number(strconv.FormatFloat(f, 'g', -1, 64))
	}
	if s == "" {
		return nil
	}
	return s
}
