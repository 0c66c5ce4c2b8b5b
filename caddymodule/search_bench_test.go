package caddymodule

import (
	"fmt"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/authz"
	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/fhir"
)

// BenchmarkSearchBundle builds and writes the Bundle of a five-study
// search: per study one study token minted, one ImagingStudy mapped and
// one Endpoint; then the JSON encoding. The QIDO calls are not included.
func BenchmarkSearchBundle(b *testing.B) {
	kr, err := studytoken.RandomKeyring()
	if err != nil {
		b.Fatal(err)
	}
	base, _ := url.Parse("http://127.0.0.1:8080/bench")
	h := &Handler{keys: kr, ttl: time.Hour, RouteID: "bench", baseURL: base}
	var studies []imagesource.Study
	for i := 1; i <= 5; i++ {
		uid := fmt.Sprintf("2.25.2718281828459045235360287.9.1.%d", i)
		st := dicomjson.Dataset{}
		st.SetString(dicomjson.TagStudyInstanceUID, "UI", uid)
		st.SetString(dicomjson.TagStudyDate, "DA", "20250301")
		st.SetString(dicomjson.TagStudyTime, "TM", "101500")
		st.SetString(dicomjson.TagStudyDescription, "LO", "CT CHEST ABDOMEN")
		st.SetString(dicomjson.TagModalitiesInStudy, "CS", "CT", "OT")
		st.SetInt(dicomjson.TagNumberOfStudyRelatedInst, "IS", 21)
		study := imagesource.Study{Attributes: st}
		for n := 1; n <= 3; n++ {
			se := dicomjson.Dataset{}
			se.SetString(dicomjson.TagSeriesInstanceUID, "UI", fmt.Sprintf("%s.%d", uid, n))
			se.SetString(dicomjson.TagModality, "CS", "CT")
			se.SetInt(dicomjson.TagSeriesNumber, "IS", n)
			se.SetInt(dicomjson.TagNumberOfSeriesRelatedInst, "IS", 10)
			study.Series = append(study.Series, imagesource.Series{Attributes: se})
		}
		studies = append(studies, study)
	}
	p := &authz.Principal{Patient: "bench-patient", PatientReference: "http://127.0.0.1/fhir/Patient/bench-patient", Expires: time.Now().Add(time.Hour)}
	r := httptest.NewRequest("GET", "/fhir/ImagingStudy?patient=bench-patient", nil)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		bundle, err := h.searchBundle(r, p, studies)
		if err != nil {
			b.Fatal(err)
		}
		w.Body.Reset()
		fhir.WriteJSON(w, 200, bundle)
	}
}
