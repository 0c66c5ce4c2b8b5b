package folder

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"reflect"
	"testing"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
)

func rawElement(t *testing.T, tg tag.Tag, vr string, v any) *dicom.Element {
	t.Helper()
	return &dicom.Element{Tag: tg, RawValueRepresentation: vr, ValueRepresentation: tag.GetVRKind(tg, vr), Value: mustValue(t, v)}
}

func TestConvertValues(t *testing.T) {
	big := make([]byte, inlineMax+1)
	cases := []struct {
		name string
		e    *dicom.Element
		top  bool
		want dicomjson.Element
	}{
		{"DS kept when JSON", rawElement(t, tag.SliceThickness, "DS", []string{"2.50", "-1e3"}), true,
			dicomjson.Element{VR: "DS", Value: []any{json.Number("2.50"), json.Number("-1e3")}}},
		{"DS normalised", rawElement(t, tag.SliceThickness, "DS", []string{"+1.5", " .5", "5."}), true,
			dicomjson.Element{VR: "DS", Value: []any{json.Number("1.5"), json.Number("0.5"), json.Number("5")}}},
		{"IS leading zero", rawElement(t, tag.InstanceNumber, "IS", []string{"007"}), true,
			dicomjson.Element{VR: "IS", Value: []any{json.Number("7")}}},
		{"DS not a number stays text", rawElement(t, tag.SliceThickness, "DS", []string{"abc"}), true,
			dicomjson.Element{VR: "DS", Value: []any{"abc"}}},
		{"empty", rawElement(t, tag.AccessionNumber, "SH", []string{""}), true,
			dicomjson.Element{VR: "SH"}},
		{"empty among values", rawElement(t, tag.ImageType, "CS", []string{"A", "", "B"}), true,
			dicomjson.Element{VR: "CS", Value: []any{"A", nil, "B"}}},
		{"PN groups", rawElement(t, tag.PatientName, "PN", []string{"Yamada^Tarou=山田^太郎=やまだ^たろう"}), true,
			dicomjson.Element{VR: "PN", Value: []any{dicomjson.PersonName{Alphabetic: "Yamada^Tarou", Ideographic: "山田^太郎", Phonetic: "やまだ^たろう"}}}},
		{"AT", rawElement(t, tag.FrameIncrementPointer, "AT", []int{0x0018, 0x1063}), true,
			dicomjson.Element{VR: "AT", Value: []any{"00181063"}}},
		{"US", rawElement(t, tag.Rows, "US", []int{512}), true,
			dicomjson.Element{VR: "US", Value: []any{json.Number("512")}}},
		{"FD with NaN", rawElement(t, tag.Tag{Group: 0x0018, Element: 0x9087}, "FD", []float64{0.25, math.NaN()}), true,
			dicomjson.Element{VR: "FD", Value: []any{json.Number("0.25"), nil}}},
		{"small binary inline", rawElement(t, tag.ICCProfile, "OB", []byte{1, 2, 3}), true,
			dicomjson.Element{VR: "OB", InlineBinary: "AQID"}},
		{"large binary by reference", rawElement(t, tag.ICCProfile, "OB", big), true,
			dicomjson.Element{VR: "OB", BulkDataURI: "https://x/i/bulkdata/00282000"}},
		{"large nested binary inline", rawElement(t, tag.ICCProfile, "OB", big), false,
			dicomjson.Element{VR: "OB", InlineBinary: base64.StdEncoding.EncodeToString(big)}},
		{"UT keeps backslashes", rawElement(t, tag.Tag{Group: 0x0040, Element: 0xA160}, "UT", []string{`a`, `b`}), true,
			dicomjson.Element{VR: "UT", Value: []any{`a\b`}}},
	}
	c := converter{instanceURL: "https://x/i"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := c.element(tc.e, tagKey(tc.e.Tag), tc.top)
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("got %+v, want %+v", *got, tc.want)
			}
		})
	}
}

func TestConvertSkipsFileMetaAndGroupLengths(t *testing.T) {
	elems := []*dicom.Element{
		rawElement(t, tag.TransferSyntaxUID, "UI", []string{tsExplicitLE}),
		rawElement(t, tag.Tag{Group: 0x0008, Element: 0x0000}, "UL", []int{12}),
		rawElement(t, tag.Modality, "CS", []string{"CT"}),
	}
	ds := converter{}.dataset(elems, true)
	if len(ds) != 1 || ds.String(dicomjson.TagModality) != "CT" {
		t.Errorf("dataset = %v, want only Modality", ds)
	}
}
