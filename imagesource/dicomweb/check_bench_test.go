package dicomweb

import (
	"fmt"
	"github.com/smart-imaging/smart_imaging/pacskey"
	"net/url"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
)

// BenchMetadataBody is benchMetadataBody for the external benchmarks.
var BenchMetadataBody = benchMetadataBody

// benchMetadataBody is an 80 KB study metadata answer as a PACS at base
// writes it: 21 instances of about 65 attributes, each with a RetrieveURL
// and a pixel data BulkDataURI under base.
func benchMetadataBody(base, studyUID, patientID string) []byte {
	var items []string
	for i := 0; i < 21; i++ {
		var it strings.Builder
		it.WriteString(`{"00080018":{"vr":"UI","Value":["2.25.1.1.` + fmt.Sprint(i) + `"]}`)
		it.WriteString(`,"00100020":{"vr":"LO","Value":["` + patientID + `"]},"0020000D":{"vr":"UI","Value":["` + studyUID + `"]}`)
		it.WriteString(`,"00081190":{"vr":"UR","Value":["` + base + `/studies/` + studyUID + `"]}`)
		it.WriteString(`,"00081032":{"vr":"SQ","Value":[{"00080100":{"vr":"SH","Value":["CTCHEST"]},"00080104":{"vr":"LO","Value":["CT chest"]}}]}`)
		for t := 0; t < 60; t++ {
			fmt.Fprintf(&it, `,"0009%04X":{"vr":"LO","Value":["value %d"]}`, t, t)
		}
		fmt.Fprintf(&it, `,"00200032":{"vr":"DS","Value":[-125.0,-125.0,%d.5]}`, i)
		fmt.Fprintf(&it, `,"7FE00010":{"vr":"OW","BulkDataURI":"%s/studies/%s/series/%s.1/instances/%s.1.%d/bulk/7fe00010"}}`, base, studyUID, studyUID, studyUID, i)
		items = append(items, it.String())
	}
	return []byte("[" + strings.Join(items, ",") + "]")
}

// BenchmarkCheckMetadata is the check alone, without the proxying around
// it: one pass over an 80 KB study metadata answer, 21 data sets' study
// and patient compared, 42 URIs mapped onto the gateway.
func BenchmarkCheckMetadata(b *testing.B) {
	const base, study, patient = "http://pacs:8042/dicom-web", "2.25.1", "BENCH-MRN-0001"
	src, err := New(Config{BaseURL: base}, &rpProxy{}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	reqURL, _ := url.Parse(base + "/studies/" + study + "/metadata")
	pw := &proxyWriter{src: src, repl: "https://gw/w/" + strings.Repeat("t", 180) + "/", reqURL: reqURL}
	req := &imagesource.Retrieval{StudyUID: study, PatientIDs: []pacskey.PatientKey{patient}}
	body := benchMetadataBody(base, study, patient)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := checkMetadata(body, req, pw.publicURL); err != nil {
			b.Fatal(err)
		}
	}
}
