package dicomjson

import (
	"fmt"
	"strings"
	"testing"
)

// orthancStudy is one study of a QIDO-RS studies answer, shaped like
// Orthanc 1.10's (DICOMweb plugin 1.7) with the attributes the gateway asks
// for: strings, a person name, numbers and the RetrieveURL.
func orthancStudy(i int) string {
	return fmt.Sprintf(`{"00080005":{"vr":"CS","Value":["ISO_IR 192"]},`+
		`"00080020":{"vr":"DA","Value":["2024%02d01"]},"00080030":{"vr":"TM","Value":["101500"]},`+
		`"00080050":{"vr":"SH","Value":["BENCH-%d"]},"00080061":{"vr":"CS","Value":["CT","OT"]},`+
		`"00080090":{"vr":"PN"},"00080201":{"vr":"SH","Value":["+0200"]},`+
		`"00081030":{"vr":"LO","Value":["CT CHEST ABDOMEN %d"]},`+
		`"00081190":{"vr":"UR","Value":["http://127.0.0.1:8042/dicom-web/studies/2.25.2718281828459045235360287.9.1.%d"]},`+
		`"00100010":{"vr":"PN","Value":[{"Alphabetic":"Bench^Patient"}]},"00100020":{"vr":"LO","Value":["BENCH-MRN-0001"]},`+
		`"00100030":{"vr":"DA","Value":["19700101"]},"00100040":{"vr":"CS","Value":["O"]},`+
		`"0020000D":{"vr":"UI","Value":["2.25.2718281828459045235360287.9.1.%d"]},"00200010":{"vr":"SH","Value":["B%d"]},`+
		`"00201206":{"vr":"IS","Value":[3]},"00201208":{"vr":"IS","Value":[21]}}`, i%12+1, i, i, i, i, i)
}

// orthancInstanceMetadata is one instance of a WADO-RS metadata answer:
// about 60 attributes including a sequence, numbers and a BulkDataURI.
func orthancInstanceMetadata(i int) string {
	var b strings.Builder
	b.WriteString(`{"00020010":{"vr":"UI","Value":["1.2.840.10008.1.2.1"]},"00080016":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},`)
	fmt.Fprintf(&b, `"00080018":{"vr":"UI","Value":["2.25.2718281828459045235360287.9.1.1.1.%d"]},`, i)
	b.WriteString(`"00080060":{"vr":"CS","Value":["CT"]},"00100010":{"vr":"PN","Value":[{"Alphabetic":"Bench^Patient"}]},`)
	b.WriteString(`"00081032":{"vr":"SQ","Value":[{"00080100":{"vr":"SH","Value":["CTCHEST"]},"00080102":{"vr":"SH","Value":["99SIA"]},"00080104":{"vr":"LO","Value":["CT chest"]}}]},`)
	b.WriteString(`"00200032":{"vr":"DS","Value":[-125.0,-125.0,10.5]},"00200037":{"vr":"DS","Value":[1,0,0,0,1,0]},`)
	b.WriteString(`"00280010":{"vr":"US","Value":[512]},"00280011":{"vr":"US","Value":[512]},"00280030":{"vr":"DS","Value":[0.7,0.7]},`)
	for t := 0; t < 45; t++ {
		fmt.Fprintf(&b, `"0009%04X":{"vr":"LO","Value":["private value %d"]},`, t, t)
	}
	fmt.Fprintf(&b, `"7FE00010":{"vr":"OW","BulkDataURI":"http://127.0.0.1:8042/dicom-web/studies/2.25.1/series/2.25.1.1/instances/2.25.1.1.%d/bulk/7fe00010"}}`, i)
	return b.String()
}

func jsonList(n int, item func(int) string) []byte {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = item(i)
	}
	return []byte("[" + strings.Join(parts, ",") + "]")
}

// BenchmarkDecodeListStudies decodes a QIDO-RS studies answer of 5 studies
// (what one ImagingStudy search of the bench patient reads first).
func BenchmarkDecodeListStudies(b *testing.B) {
	body := jsonList(5, orthancStudy)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		list, err := DecodeList(body)
		if err != nil || len(list) != 5 {
			b.Fatalf("DecodeList: %d items, %v", len(list), err)
		}
	}
}

// BenchmarkDecodeListMetadata decodes a 21-instance metadata answer.
func BenchmarkDecodeListMetadata(b *testing.B) {
	body := jsonList(21, orthancInstanceMetadata)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		list, err := DecodeList(body)
		if err != nil || len(list) != 21 {
			b.Fatalf("DecodeList: %d items, %v", len(list), err)
		}
	}
}

// BenchmarkNormalizeTag is the per-key cost of every decoded element.
func BenchmarkNormalizeTag(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := NormalizeTag("0020000D"); !ok {
			b.Fatal("not a tag")
		}
	}
}
