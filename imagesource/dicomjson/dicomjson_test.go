package dicomjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"
)

// orthancStudies is a QIDO-RS /studies answer from Orthanc 1.10.1 with the
// DICOMweb plugin 1.7 over the bundled demo studies, in Orthanc's own layout
// (tabs, newlines, "Value" before "vr", IS as JSON numbers, empty PN as
// {"vr":"PN"}), trimmed to two studies.
const orthancStudies = `[{
	"00080005" : 
	{
		"Value" : 
		[
			"ISO_IR 100"
		],
		"vr" : "CS"
	},
	"00080020" : 
	{
		"Value" : 
		[
			"20240102"
		],
		"vr" : "DA"
	},
	"00080030" : 
	{
		"Value" : 
		[
			"141503.250"
		],
		"vr" : "TM"
	},
	"00080050" : 
	{
		"Value" : 
		[
			"SIA-ACC-1002"
		],
		"vr" : "SH"
	},
	"00080061" : 
	{
		"Value" : 
		[
			"MR",
			"OT"
		],
		"vr" : "CS"
	},
	"00080090" : 
	{
		"vr" : "PN"
	},
	"00080201" : 
	{
		"Value" : 
		[
			"+0200"
		],
		"vr" : "SH"
	},
	"00081030" : 
	{
		"Value" : 
		[
			"MR BRAIN WITH AND WITHOUT CONTRAST"
		],
		"vr" : "LO"
	},
	"00081190" : 
	{
		"Value" : 
		[
			"http://127.0.0.1:18342/dicom-web/studies/2.25.2718281828459045235360287.1.1.2"
		],
		"vr" : "UR"
	},
	"00100010" : 
	{
		"Value" : 
		[
			{
				"Alphabetic" : "Kshlerin^Danae"
			}
		],
		"vr" : "PN"
	},
	"00100020" : 
	{
		"Value" : 
		[
			"293ee354-f8ad-4345-b10c-759fdfdcc082"
		],
		"vr" : "LO"
	},
	"00100021" : 
	{
		"Value" : 
		[
			"http://hospital.smarthealthit.org"
		],
		"vr" : "LO"
	},
	"00100030" : 
	{
		"Value" : 
		[
			"19640513"
		],
		"vr" : "DA"
	},
	"00100040" : 
	{
		"Value" : 
		[
			"F"
		],
		"vr" : "CS"
	},
	"0020000D" : 
	{
		"Value" : 
		[
			"2.25.2718281828459045235360287.1.1.2"
		],
		"vr" : "UI"
	},
	"00200010" : 
	{
		"Value" : 
		[
			"1002"
		],
		"vr" : "SH"
	},
	"00201206" : 
	{
		"Value" : 
		[
			3
		],
		"vr" : "IS"
	},
	"00201208" : 
	{
		"Value" : 
		[
			7
		],
		"vr" : "IS"
	}
}
,{
	"00080020" : {"Value" : ["20250920"], "vr" : "DA"},
	"00080061" : {"Value" : ["MR"], "vr" : "CS"},
	"00080090" : {"vr" : "PN"},
	"00100010" : {"Value" : [{"Alphabetic" : "M\u00fcller^Eve"}], "vr" : "PN"},
	"00100020" : {"Value" : ["sia-mrn-0001"], "vr" : "LO"},
	"0020000D" : {"Value" : ["2.25.2718281828459045235360287.1.4.1"], "vr" : "UI"},
	"00201206" : {"Value" : [1], "vr" : "IS"},
	"00201208" : {"Value" : [2], "vr" : "IS"}
}
]
`

// orthancMetadata is a WADO-RS instance metadata answer from the same Orthanc
// (one CT instance, trimmed), extended by hand with what Orthanc did not
// send for this instance: an InlineBinary OB value, a nested sequence and an
// empty sequence.
const orthancMetadata = `[{"00080005" : {"Value" : ["ISO_IR 192"],"vr" : "CS"},
"00080008" : {"Value" : ["ORIGINAL","PRIMARY","AXIAL"],"vr" : "CS"},
"00080016" : {"Value" : ["1.2.840.10008.5.1.4.1.1.2"],"vr" : "UI"},
"00080090" : {"vr" : "PN"},
"00081032" : {"Value" : [{"00080100" : {"Value" : ["CTCHEST"],"vr" : "SH"},"00080102" : {"Value" : ["99SIA"],"vr" : "SH"},"00080104" : {"Value" : ["CT chest without contrast"],"vr" : "LO"}}],"vr" : "SQ"},
"00081140" : {"vr" : "SQ"},
"00081199" : {"Value" : [{"00081150" : {"Value" : ["1.2.840.10008.5.1.4.1.1.2"],"vr" : "UI"},"0040A170" : {"Value" : [{"00080100" : {"Value" : ["121311"],"vr" : "SH"}}],"vr" : "SQ"}},{}],"vr" : "SQ"},
"00100010" : {"Value" : [{"Alphabetic" : "Kshlerin^Danae"}],"vr" : "PN"},
"00180050" : {"Value" : [5],"vr" : "DS"},
"00200032" : {"Value" : [-125,-125,0],"vr" : "DS"},
"00200037" : {"Value" : [1,0,0,0,1,0],"vr" : "DS"},
"00201040" : {"vr" : "LO"},
"00280009" : {"Value" : ["00181063"],"vr" : "AT"},
"00280010" : {"Value" : [64],"vr" : "US"},
"00280030" : {"Value" : [3.90625,3.90625],"vr" : "DS"},
"00281050" : {"Value" : [-24],"vr" : "DS"},
"00281052" : {"Value" : [-1024],"vr" : "DS"},
"00291010" : {"InlineBinary" : "AQIDBA==","vr" : "OB"},
"7FE00010" : {"BulkDataURI" : "http://127.0.0.1:18342/dicom-web/studies/2.25.2718281828459045235360287.1.1.1/series/2.25.2718281828459045235360287.1.1.1.1/instances/2.25.2718281828459045235360287.1.1.1.1.1/bulk/7fe00010","vr" : "OW"}}]`

func TestDecodeListOrthancStudies(t *testing.T) {
	list, err := DecodeList([]byte(orthancStudies))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("got %d studies, want 2", len(list))
	}
	st := list[0]
	for _, c := range []struct{ tag, want string }{
		{TagPatientID, "293ee354-f8ad-4345-b10c-759fdfdcc082"},
		{TagPatientName, "Kshlerin^Danae"},
		{TagIssuerOfPatientID, "http://hospital.smarthealthit.org"},
		{TagStudyInstanceUID, "2.25.2718281828459045235360287.1.1.2"},
		{TagStudyDate, "20240102"},
		{TagStudyTime, "141503.250"},
		{TagTimezoneOffsetFromUTC, "+0200"},
		{TagStudyDescription, "MR BRAIN WITH AND WITHOUT CONTRAST"},
		{TagRetrieveURL, "http://127.0.0.1:18342/dicom-web/studies/2.25.2718281828459045235360287.1.1.2"},
		{TagNumberOfStudyRelatedInst, "7"},
		{TagReferringPhysicianName, ""},
		{TagSeriesInstanceUID, ""}, // absent
	} {
		if got := st.String(c.tag); got != c.want {
			t.Errorf("String(%s) = %q, want %q", c.tag, got, c.want)
		}
	}
	if got := st.Strings(TagModalitiesInStudy); !reflect.DeepEqual(got, []string{"MR", "OT"}) {
		t.Errorf("ModalitiesInStudy = %q", got)
	}
	if n, ok := st.Int(TagNumberOfStudyRelatedSeries); !ok || n != 3 {
		t.Errorf("Int(NumberOfStudyRelatedSeries) = %d, %v; want 3", n, ok)
	}
	if got := st.Get(TagNumberOfStudyRelatedSeries).Value[0]; got != json.Number("3") {
		t.Errorf("IS value decoded as %#v, want json.Number(\"3\")", got)
	}
	pn, ok := st.Get(TagPatientName).Value[0].(PersonName)
	if !ok || pn != (PersonName{Alphabetic: "Kshlerin^Danae"}) {
		t.Errorf("PatientName value = %#v", st.Get(TagPatientName).Value[0])
	}
	ref := st.Get(TagReferringPhysicianName)
	if ref == nil || ref.VR != "PN" || ref.Value != nil {
		t.Errorf("empty PN element = %#v, want present with VR PN and no value", ref)
	}
	if got := list[1].String(TagPatientName); got != "Müller^Eve" {
		t.Errorf("escaped non-ASCII name = %q", got)
	}
	if got := list[1].String(TagTimezoneOffsetFromUTC); got != "" {
		t.Errorf("second study has TimezoneOffsetFromUTC %q", got)
	}
}

func TestDecodeMetadata(t *testing.T) {
	list, err := DecodeList([]byte(orthancMetadata))
	if err != nil {
		t.Fatal(err)
	}
	ds := list[0]

	if got := ds.Strings("00200032"); !reflect.DeepEqual(got, []string{"-125", "-125", "0"}) {
		t.Errorf("ImagePositionPatient = %q", got)
	}
	if got := ds.Strings("00280030"); !reflect.DeepEqual(got, []string{"3.90625", "3.90625"}) {
		t.Errorf("PixelSpacing = %q", got)
	}
	if n, ok := ds.Int("00281052"); !ok || n != -1024 {
		t.Errorf("RescaleIntercept = %d, %v", n, ok)
	}
	if n, ok := ds.Int(TagRows); !ok || n != 64 {
		t.Errorf("Rows = %d, %v", n, ok)
	}
	if got := ds.String("00280009"); got != "00181063" {
		t.Errorf("AT value = %q", got)
	}

	px := ds.Get(TagPixelData)
	if px == nil || px.VR != "OW" || px.Value != nil || !strings.HasSuffix(px.BulkDataURI, "/bulk/7fe00010") {
		t.Errorf("PixelData = %#v", px)
	}
	if ib := ds.Get("00291010"); ib == nil || ib.InlineBinary != "AQIDBA==" || ib.VR != "OB" {
		t.Errorf("InlineBinary element = %#v", ib)
	}

	// Sequences: items are Datasets, nested to any depth.
	proc := ds.Get("00081032")
	if proc == nil || proc.VR != "SQ" || len(proc.Value) != 1 {
		t.Fatalf("ProcedureCodeSequence = %#v", proc)
	}
	item, ok := proc.Value[0].(Dataset)
	if !ok || item.String("00080100") != "CTCHEST" || item.String("00080104") != "CT chest without contrast" {
		t.Errorf("sequence item = %#v", proc.Value[0])
	}
	refs := ds.Get("00081199")
	if refs == nil || len(refs.Value) != 2 {
		t.Fatalf("two-item sequence = %#v", refs)
	}
	inner := refs.Value[0].(Dataset).Get("0040A170").Value[0].(Dataset)
	if inner.String("00080100") != "121311" {
		t.Errorf("nested sequence item = %#v", inner)
	}
	if empty, ok := refs.Value[1].(Dataset); !ok || len(empty) != 0 {
		t.Errorf("empty sequence item = %#v, want an empty Dataset", refs.Value[1])
	}
	if e := ds.Get("00081140"); e == nil || e.VR != "SQ" || e.Value != nil {
		t.Errorf("empty sequence = %#v", e)
	}
	if got := ds.Strings("00081032"); len(got) != 0 {
		t.Errorf("Strings on a sequence = %q, want none", got)
	}
}

func TestDecodeValueForms(t *testing.T) {
	ds, err := Decode([]byte(`{
		"00100010": {"vr": "PN", "Value": ["Doe^John", {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}, null]},
		"00100020": {"vr": "LO", "Value": ["a", null, "b"]},
		"00201206": {"vr": "IS", "Value": ["12"]},
		"00280010": {"vr": "US", "Value": [512]},
		"00191001": {"vr": "UV", "Value": [18446744073709551615]},
		"00181063": {"vr": "DS", "Value": [1.5e2]},
		"00081030": {"vr": "LO", "Value": []},
		"00080050": {"vr": "SH", "Value": null}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	pn := ds.Get(TagPatientName).Value
	if pn[0] != (PersonName{Alphabetic: "Doe^John"}) {
		t.Errorf("PN as a plain string = %#v, want Alphabetic", pn[0])
	}
	if pn[1] != (PersonName{Alphabetic: "Yamada^Tarou", Ideographic: "山田^太郎", Phonetic: "やまだ^たろう"}) {
		t.Errorf("PN with three groups = %#v", pn[1])
	}
	if pn[2] != nil {
		t.Errorf("null PN = %#v", pn[2])
	}
	if got := ds.Strings(TagPatientName); !reflect.DeepEqual(got, []string{"Doe^John", "Yamada^Tarou", ""}) {
		t.Errorf("Strings(PN) = %q", got)
	}
	if got := ds.Strings(TagPatientID); !reflect.DeepEqual(got, []string{"a", "", "b"}) {
		t.Errorf("Strings with a null value = %q", got)
	}
	if n, ok := ds.Int(TagNumberOfStudyRelatedSeries); !ok || n != 12 {
		t.Errorf("IS sent as a string: Int = %d, %v", n, ok)
	}
	if got := ds.String("00191001"); got != "18446744073709551615" {
		t.Errorf("UV lost precision: %q", got)
	}
	if got := ds.String("00181063"); got != "1.5e2" {
		t.Errorf("DS number kept as %q, want the text as sent", got)
	}
	for _, tag := range []string{TagStudyDescription, TagAccessionNumber} {
		e := ds.Get(tag)
		if e == nil || e.Value != nil {
			t.Errorf("%s: empty Value should decode to a present element without values, got %#v", tag, e)
		}
		if _, ok := ds.Int(tag); ok {
			t.Errorf("%s: Int on an empty element reported ok", tag)
		}
	}
}

func TestDecodeListEmptyAnswers(t *testing.T) {
	for _, body := range []string{"", " ", "\r\n\t"} {
		list, err := DecodeList([]byte(body))
		if err != nil || len(list) != 0 {
			t.Errorf("DecodeList(%q) = %v, %v; want no studies and no error (204 No Content)", body, list, err)
		}
	}
	list, err := DecodeList([]byte("[]"))
	if err != nil || len(list) != 0 {
		t.Errorf("DecodeList([]) = %v, %v", list, err)
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	for name, body := range map[string]string{
		"missing vr":            `[{"00100020":{"Value":["x"]}}]`,
		"empty vr":              `[{"00100020":{"vr":"","Value":["x"]}}]`,
		"three-letter vr":       `[{"00100020":{"vr":"LOO","Value":["x"]}}]`,
		"numeric vr":            `[{"00100020":{"vr":5}}]`,
		"element is a number":   `[{"00100020":5}]`,
		"element is a string":   `[{"00100020":"x"}]`,
		"Value is a string":     `[{"00100020":{"vr":"LO","Value":"x"}}]`,
		"Value is an object":    `[{"00100020":{"vr":"LO","Value":{"a":1}}}]`,
		"US value is true":      `[{"00280010":{"vr":"US","Value":[true]}}]`,
		"IS value is an object": `[{"00201206":{"vr":"IS","Value":[{"n":1}]}}]`,
		"IS value is an array":  `[{"00201206":{"vr":"IS","Value":[[1]]}}]`,
		"PN value is a number":  `[{"00100010":{"vr":"PN","Value":[5]}}]`,
		"PN group is a number":  `[{"00100010":{"vr":"PN","Value":[{"Alphabetic":5}]}}]`,
		"SQ item is a string":   `[{"00081032":{"vr":"SQ","Value":["x"]}}]`,
		"bad vr inside SQ":      `[{"00081032":{"vr":"SQ","Value":[{"00080100":{"vr":"X"}}]}}]`,
		"BulkDataURI number":    `[{"7FE00010":{"vr":"OW","BulkDataURI":5}}]`,
		"InlineBinary array":    `[{"7FE00010":{"vr":"OW","InlineBinary":["AA=="]}}]`,
		"list item is null":     `[null]`,
		"list item is an array": `[[]]`,
		"object, not a list":    `{"00100020":{"vr":"LO","Value":["x"]}}`,
		"truncated":             `[{"00100020":{"vr":"LO","Value":["x"]}`,
		"trailing garbage":      `[] []`,
		"not JSON":              `<html>502 Bad Gateway</html>`,
	} {
		t.Run(name, func(t *testing.T) {
			list, err := DecodeList([]byte(body))
			if err == nil {
				t.Fatalf("no error; got %#v", list)
			}
			if !strings.HasPrefix(err.Error(), "dicomjson: ") {
				t.Errorf("error %q does not name the package", err)
			}
		})
	}
	for name, body := range map[string]string{
		"array, not an object": `[{"00100020":{"vr":"LO"}}]`,
		"bad vr":               `{"00100020":{"vr":"L"}}`,
		"empty body":           ``,
	} {
		t.Run("Decode "+name, func(t *testing.T) {
			if ds, err := Decode([]byte(body)); err == nil {
				t.Fatalf("no error; got %#v", ds)
			}
		})
	}
}

func TestNilDatasetIsSafe(t *testing.T) {
	var ds Dataset
	if ds.Get(TagPatientID) != nil || ds.String(TagPatientID) != "" || ds.Strings(TagPatientID) != nil {
		t.Error("a nil Dataset returned values")
	}
	if _, ok := ds.Int(TagRows); ok {
		t.Error("Int on a nil Dataset reported ok")
	}
	b, err := json.Marshal(ds)
	if err != nil || string(b) != "{}" {
		t.Errorf("nil Dataset marshals to %s, %v", b, err)
	}
}

func TestMarshalJSON(t *testing.T) {
	ds := Dataset{}
	ds.SetInt(TagNumberOfStudyRelatedSeries, "IS", 3)
	ds.SetString(TagPatientID, "LO", "X")
	ds.Set(TagPatientName, "PN", PersonName{Alphabetic: "Doe^John"})
	ds.Set(TagStudyDescription, "LO")
	ds[TagPixelData] = &Element{VR: "OW", BulkDataURI: "http://pacs/bulk/7fe00010"}
	item := Dataset{}
	item.SetString("00080100", "SH", "CTCHEST")
	ds.Set("00081032", "SQ", item)

	b, err := json.Marshal(ds)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"00081030":{"vr":"LO"},` +
		`"00081032":{"vr":"SQ","Value":[{"00080100":{"vr":"SH","Value":["CTCHEST"]}}]},` +
		`"00100010":{"vr":"PN","Value":[{"Alphabetic":"Doe^John"}]},` +
		`"00100020":{"vr":"LO","Value":["X"]},` +
		`"00201206":{"vr":"IS","Value":[3]},` +
		`"7FE00010":{"vr":"OW","BulkDataURI":"http://pacs/bulk/7fe00010"}}`
	if string(b) != want {
		t.Errorf("MarshalJSON:\n got %s\nwant %s", b, want)
	}

	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, ds) {
		t.Errorf("round trip changed the dataset:\n got %#v\nwant %#v", back, ds)
	}
}

// keysInOrder returns the object keys of a JSON object in document order.
func keysInOrder(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %s", b)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func TestRoundTrip(t *testing.T) {
	for name, body := range map[string]string{
		"orthanc studies":  orthancStudies,
		"orthanc metadata": orthancMetadata,
		"value forms":      `[{"00100010":{"vr":"PN","Value":["Doe^John",null,{}]},"00100020":{"vr":"LO","Value":["a",null]},"00191001":{"vr":"UV","Value":[18446744073709551615]},"00181063":{"vr":"DS","Value":[1.5e2,"7"]}}]`,
		"null element":     `[{"00100020":null}]`,
		"empty dataset":    `[{}]`,
		"lenient LO value": `[{"00100020":{"vr":"LO","Value":[5,true]}}]`,
	} {
		t.Run(name, func(t *testing.T) {
			list, err := DecodeList([]byte(body))
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(list)
			if err != nil {
				t.Fatal(err)
			}
			again, err := DecodeList(b)
			if err != nil {
				t.Fatalf("re-decode of %s: %v", b, err)
			}
			if !reflect.DeepEqual(list, again) {
				t.Errorf("round trip changed the datasets:\n got %#v\nwant %#v", again, list)
			}
			for i, ds := range list {
				one, err := json.Marshal(ds)
				if err != nil {
					t.Fatal(err)
				}
				keys := keysInOrder(t, one)
				if !sort.StringsAreSorted(keys) || len(keys) != len(ds) {
					t.Errorf("dataset %d: keys %q not all present in ascending order", i, keys)
				}
			}
		})
	}
}

func TestNormalizeTag(t *testing.T) {
	for in, want := range map[string]string{
		"0020000D":    "0020000D",
		"0020000d":    "0020000D",
		"0020,000d":   "0020000D",
		"(0020,000D)": "0020000D",
		"(7fe0,0010)": "7FE00010",
	} {
		if got, ok := NormalizeTag(in); !ok || got != want {
			t.Errorf("NormalizeTag(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "0020000", "0020000D0", "0020000G", "PatientID", "StudyInstanceUID", " 0020000D", "0020-000D", "0x20000D", "００２０００００"} {
		if got, ok := NormalizeTag(in); ok {
			t.Errorf("NormalizeTag(%q) = %q, accepted", in, got)
		}
	}
}

func TestIntHelper(t *testing.T) {
	ds, err := Decode([]byte(`{
		"00000001": {"vr": "IS", "Value": [7]},
		"00000002": {"vr": "IS", "Value": [" 12 "]},
		"00000003": {"vr": "DS", "Value": [1.9]},
		"00000004": {"vr": "DS", "Value": [-3]},
		"00000005": {"vr": "LO", "Value": ["abc"]},
		"00000006": {"vr": "IS", "Value": [null]},
		"00000007": {"vr": "IS"},
		"00000008": {"vr": "IS", "Value": [4, 5]}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tag  string
		want int
		ok   bool
	}{
		{"00000001", 7, true},
		{"00000002", 12, true},
		{"00000003", 1, true},
		{"00000004", -3, true},
		{"00000005", 0, false},
		{"00000006", 0, false},
		{"00000007", 0, false},
		{"00000008", 4, true},
		{"00000009", 0, false}, // absent
	} {
		if n, ok := ds.Int(c.tag); n != c.want || ok != c.ok {
			t.Errorf("Int(%s) = %d, %v; want %d, %v", c.tag, n, ok, c.want, c.ok)
		}
	}
}

// FuzzDecodeList checks that decoding never panics and that a decoded value,
// encoded again, decodes to an equal list.
//
// For input that is not valid UTF-8 (not JSON by RFC 8259 §8.1, though
// encoding/json reads it) one re-encoding may replace bad bytes with U+FFFD:
// a non-string value of a string VR is kept as its raw text, bad bytes
// included. There the check is that the second encoding is stable.
func FuzzDecodeList(f *testing.F) {
	for _, seed := range []string{
		orthancStudies,
		orthancMetadata,
		``,
		`[]`,
		`[{}]`,
		`[null]`,
		`null`,
		`[{"00100020":null}]`,
		`[{"00100010":{"vr":"PN","Value":["Doe^John",{"Alphabetic":"A","Ideographic":"B","Phonetic":"C"},null]}}]`,
		`[{"00201206":{"vr":"IS","Value":[3,"4",null,1e400]}}]`,
		`[{"00081032":{"vr":"SQ","Value":[{"00080100":{"vr":"SH","Value":["X"]}},null,{}]}}]`,
		`[{"7FE00010":{"vr":"OW","BulkDataURI":"http://x/bulk/7fe00010","InlineBinary":"AAE="}}]`,
		`[{"00100020":{"vr":"LO","Value":[5,{"a":[1]},true]}}]`,
		`[{"00100020":{"vr":"LO"}}]`,
		`[{"00100020":{"vr":"XYZ"}}]`,
		`[{"00280010":{"vr":"US","Value":[true]}}]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		list, err := DecodeList(data)
		if err != nil {
			return
		}
		if !utf8.Valid(data) {
			if list, err = roundTrip(list); err != nil {
				t.Fatalf("input %q: %v", data, err)
			}
		}
		again, err := roundTrip(list)
		if err != nil {
			t.Fatalf("input %q: %v", data, err)
		}
		if !reflect.DeepEqual(list, again) {
			t.Fatalf("round trip of %q changed the list:\n first  %s\n second %s", data, dump(list), dump(again))
		}
	})
}

// roundTrip encodes list and decodes the result.
func roundTrip(list []Dataset) ([]Dataset, error) {
	b, err := json.Marshal(list)
	if err != nil {
		return nil, fmt.Errorf("cannot encode a decoded list: %w", err)
	}
	again, err := DecodeList(b)
	if err != nil {
		return nil, fmt.Errorf("encoded as %s, which does not decode: %w", b, err)
	}
	return again, nil
}

// dump prints a list with element contents (not pointers) for failure messages.
func dump(list []Dataset) string {
	var sb strings.Builder
	for _, ds := range list {
		sb.WriteString("{")
		keys := make([]string, 0, len(ds))
		for k := range ds {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&sb, "%q:%#v ", k, ds[k])
		}
		sb.WriteString("} ")
	}
	return sb.String()
}
