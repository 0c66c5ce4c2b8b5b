package fhir

import (
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
)

// benchStudy is a study as the dicomweb source returns it for the
// benchmark harness's bench patient: study attributes plus three series.
func benchStudy(tb testing.TB, i int) imagesource.Study {
	tb.Helper()
	uid := fmt.Sprintf("2.25.2718281828459045235360287.9.1.%d", i)
	st, err := dicomjson.Decode([]byte(fmt.Sprintf(`{"00080020":{"vr":"DA","Value":["20250301"]},"00080030":{"vr":"TM","Value":["101500"]},`+
		`"00080050":{"vr":"SH","Value":["BENCH-%d"]},"00080061":{"vr":"CS","Value":["CT","OT"]},"00080201":{"vr":"SH","Value":["+0200"]},`+
		`"00081030":{"vr":"LO","Value":["CT CHEST ABDOMEN"]},"00100010":{"vr":"PN","Value":[{"Alphabetic":"Bench^Patient"}]},`+
		`"00100020":{"vr":"LO","Value":["BENCH-MRN-0001"]},"0020000D":{"vr":"UI","Value":["%s"]},"00200010":{"vr":"SH","Value":["B1"]},`+
		`"00201206":{"vr":"IS","Value":[3]},"00201208":{"vr":"IS","Value":[21]}}`, i, uid)))
	if err != nil {
		tb.Fatal(err)
	}
	out := imagesource.Study{Attributes: st}
	for n, mod := range []string{"CT", "CT", "OT"} {
		se, err := dicomjson.Decode([]byte(fmt.Sprintf(`{"00080021":{"vr":"DA","Value":["20250301"]},"00080031":{"vr":"TM","Value":["101500"]},`+
			`"00080060":{"vr":"CS","Value":["%s"]},"0008103E":{"vr":"LO","Value":["SERIES %d"]},"0020000D":{"vr":"UI","Value":["%s"]},`+
			`"0020000E":{"vr":"UI","Value":["%s.%d"]},"00200011":{"vr":"IS","Value":[%d]},"00201209":{"vr":"IS","Value":[10]}}`,
			mod, n+1, uid, uid, n+1, n+1)))
		if err != nil {
			tb.Fatal(err)
		}
		out.Series = append(out.Series, imagesource.Series{Attributes: se})
	}
	return out
}

// BenchmarkImagingStudyFrom maps one study with three series.
func BenchmarkImagingStudyFrom(b *testing.B) {
	st := benchStudy(b, 1)
	opts := MapOptions{Subject: Reference{Reference: "http://127.0.0.1/fhir/Patient/bench-patient"}, EndpointRef: "urn:uuid:0f0e0d0c-0b0a-0908-0706-050403020100"}
	b.ReportAllocs()
	for b.Loop() {
		is := ImagingStudyFrom(st, opts)
		if len(is.Series) != 3 {
			b.Fatalf("%d series", len(is.Series))
		}
	}
}

// discardWriter is an http.ResponseWriter that throws the body away.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Write(p []byte) (int, error) { return io.Discard.Write(p) }

// BenchmarkSearchBundle maps five studies, adds their Endpoints and writes
// the searchset Bundle: the FHIR part of one ImagingStudy search.
func BenchmarkSearchBundle(b *testing.B) {
	var studies []imagesource.Study
	for i := 1; i <= 5; i++ {
		studies = append(studies, benchStudy(b, i))
	}
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		bundle := NewSearchBundle("http://127.0.0.1/bench/fhir/ImagingStudy?patient=bench-patient")
		for i, st := range studies {
			ref := fmt.Sprintf("urn:uuid:0f0e0d0c-0b0a-0908-0706-0504030201%02d", i)
			is := ImagingStudyFrom(st, MapOptions{Subject: Reference{Reference: "Patient/bench-patient"}, EndpointRef: ref})
			bundle.AddMatch("http://127.0.0.1/bench/fhir/ImagingStudy/"+is.ID, is)
			bundle.AddInclude(ref, WADOEndpoint("", "http://127.0.0.1/bench/wado/token", true))
		}
		WriteJSON(w, http.StatusOK, bundle)
	}
}
