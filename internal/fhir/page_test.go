package fhir

import (
	"net/url"
	"slices"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
)

func study(uid, date, tm string) imagesource.Study {
	ds := dicomjson.Dataset{}
	ds.SetString(dicomjson.TagStudyInstanceUID, "UI", uid)
	if date != "" {
		ds.SetString(dicomjson.TagStudyDate, "DA", date)
	}
	if tm != "" {
		ds.SetString(dicomjson.TagStudyTime, "TM", tm)
	}
	return imagesource.Study{Attributes: ds}
}

func uids(studies []imagesource.Study) []string {
	var out []string
	for _, st := range studies {
		out = append(out, st.Attributes.String(dicomjson.TagStudyInstanceUID))
	}
	return out
}

func TestSelectStudies(t *testing.T) {
	studies := []imagesource.Study{
		study("1.3", "20240101", "080000"),
		study("1.1", "20250601", ""),
		study("1.4", "", ""),
		study("1.2", "20240101", "080000"),
		study("1.5", "20240101", "235959"),
	}
	before := uids(studies)

	all := SelectStudies(studies, nil)
	if want := []string{"1.1", "1.5", "1.2", "1.3", "1.4"}; !slices.Equal(uids(all), want) {
		t.Errorf("no filter: %v, want newest first then by UID, undated last: %v", uids(all), want)
	}
	if !slices.Equal(uids(studies), before) {
		t.Errorf("the caller's slice was reordered: %v", uids(studies))
	}

	s, err := ParseSearch(mustQuery(t, "patient=1&_lastUpdated=lt2025-01-01"), false)
	if err != nil {
		t.Fatal(err)
	}
	got := SelectStudies(studies, s.LastUpdated)
	if want := []string{"1.5", "1.2", "1.3"}; !slices.Equal(uids(got), want) {
		t.Errorf("_lastUpdated=lt2025-01-01: %v, want %v (an undated study never matches)", uids(got), want)
	}

	s, err = ParseSearch(mustQuery(t, "patient=1&_lastUpdated=ge2024-01-01T12:00:00Z&_lastUpdated=lt2025"), false)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := uids(SelectStudies(studies, s.LastUpdated)), []string{"1.5"}; !slices.Equal(got, want) {
		t.Errorf("two filters AND-ed: %v, want %v", got, want)
	}
}

func TestPageOf(t *testing.T) {
	tests := []struct {
		total, offset, count int
		want                 Page
	}{
		{total: 3, want: Page{From: 0, To: 3, Count: DefaultPageSize, Total: 3}},
		{total: 250, want: Page{From: 0, To: 100, Count: 100, Total: 250}},
		{total: 5, offset: 2, count: 2, want: Page{From: 2, To: 4, Count: 2, Total: 5}},
		{total: 5, offset: 4, count: 2, want: Page{From: 4, To: 5, Count: 2, Total: 5}},
		{total: 5, offset: 9, count: 2, want: Page{From: 5, To: 5, Count: 2, Total: 5}},
		{total: 0, want: Page{Count: DefaultPageSize}},
	}
	for _, tt := range tests {
		if got := PageOf(tt.total, tt.offset, tt.count); got != tt.want {
			t.Errorf("PageOf(%d, %d, %d) = %+v, want %+v", tt.total, tt.offset, tt.count, got, tt.want)
		}
	}
}

func TestPageLinks(t *testing.T) {
	const search = "https://gw.example/fhir/ImagingStudy"
	q := url.Values{"patient": {"123"}, "_count": {"2"}}
	rel := func(links []BundleLink) map[string]url.Values {
		out := map[string]url.Values{}
		for _, l := range links {
			u, err := url.Parse(l.URL)
			if err != nil || u.Scheme+"://"+u.Host+u.Path != search {
				t.Fatalf("%s link %q is not on %s", l.Relation, l.URL, search)
			}
			out[l.Relation] = u.Query()
		}
		return out
	}

	first := rel(PageOf(5, 0, 2).Links(search, q))
	if first["self"].Get("_offset") != "0" || first["next"].Get("_offset") != "2" || first["previous"] != nil {
		t.Errorf("first page links: %v", first)
	}
	if first["next"].Get("patient") != "123" || first["next"].Get("_count") != "2" {
		t.Errorf("next link lost the search: %v", first["next"])
	}
	middle := rel(PageOf(5, 2, 2).Links(search, q))
	if middle["next"].Get("_offset") != "4" || middle["previous"].Get("_offset") != "0" {
		t.Errorf("middle page links: %v", middle)
	}
	last := rel(PageOf(5, 3, 2).Links(search, q))
	if last["next"] != nil || last["previous"].Get("_offset") != "1" {
		t.Errorf("last page links: %v", last)
	}
	if q.Get("_offset") != "" {
		t.Errorf("Links changed the caller's query: %v", q)
	}
}
