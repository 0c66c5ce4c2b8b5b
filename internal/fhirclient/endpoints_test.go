package fhirclient

import (
	"maps"
	"strings"
	"testing"
)

func TestStudyEndpoints(t *testing.T) {
	body := `{"resourceType":"Bundle","type":"searchset","entry":[
	 {"fullUrl":"urn:uuid:e1","resource":{"resourceType":"Endpoint","address":"https://gw/r/wado/T1"}},
	 {"fullUrl":"https://gw/r/fhir/ImagingStudy/a","resource":{"resourceType":"ImagingStudy",
	   "identifier":[{"system":"urn:dicom:uid","value":"urn:oid:1.2.3"}],"endpoint":[{"reference":"urn:uuid:e1"}]}},
	 {"fullUrl":"https://gw/r/fhir/ImagingStudy/b","resource":{"resourceType":"ImagingStudy",
	   "identifier":[{"value":"ACC-1"},{"value":"urn:oid:4.5"}],"endpoint":[{"reference":"urn:uuid:e2"}]}},
	 {"fullUrl":"urn:uuid:e2","resource":{"resourceType":"Endpoint","address":"https://gw/r/wado/T2"}}]}`
	got, err := StudyEndpoints([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"1.2.3": "https://gw/r/wado/T1", "4.5": "https://gw/r/wado/T2"}
	if !maps.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}

	dangling := strings.Replace(body, `"reference":"urn:uuid:e2"`, `"reference":"urn:uuid:e9"`, 1)
	if _, err := StudyEndpoints([]byte(dangling)); err == nil {
		t.Error("a study naming an Endpoint missing from the Bundle was accepted")
	}
	for _, bad := range []string{`{"resourceType":"OperationOutcome"}`, `not json`, ``} {
		if _, err := StudyEndpoints([]byte(bad)); err == nil {
			t.Errorf("%q accepted as a Bundle", bad)
		}
	}
}
