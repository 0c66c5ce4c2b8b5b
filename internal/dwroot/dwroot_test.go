package dwroot

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

func TestParseSearch(t *testing.T) {
	ok := map[string]Search{
		"studies":                            {Level: Studies},
		"series":                             {Level: Series},
		"instances":                          {Level: Instances},
		"studies/1.2.3/series":               {Level: Series, StudyUID: "1.2.3"},
		"studies/1.2.3/instances":            {Level: Instances, StudyUID: "1.2.3"},
		"studies/1.2.3/series/4.5/instances": {Level: Instances, StudyUID: "1.2.3", SeriesUID: "4.5"},
	}
	for in, want := range ok {
		got, err := ParseSearch(in)
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"patients", "studies/*/series", "studies/1.2/series/x*/instances", "studies/1.2", "studies/../series"} {
		if _, err := ParseSearch(in); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want refused", in, err)
		}
	}
}

func TestParseParams(t *testing.T) {
	good := []string{"", "limit=10&offset=5", "fuzzymatching=false", "includefield=00081030,00080060",
		"includefield=StudyDescription", "includefield=all", "StudyDate=20200101-20201231", "StudyDate=20200101",
		"StudyDate=-20200101", "0020000D=1.2.3", "StudyInstanceUID=1.2.3,1.2.4", "AccessionNumber=A1",
		"ModalitiesInStudy=CT", "PatientID=MRN-1"}
	for _, q := range good {
		v, _ := url.ParseQuery(q)
		if _, err := ParseParams(v); err != nil {
			t.Errorf("%q: %v", q, err)
		}
	}
	bad := []string{"PatientName=A*", "PatientName=Doe", "00100010=Doe", "AccessionNumber=A*", "AccessionNumber=A?",
		"Modality=CT,MR", "Modality=CT%5CMR", "PatientID=*", "PatientID=A*", "PatientID=A%5CB", "PatientID=A,B", "PatientID=",
		"StudyInstanceUID=1.2.*", "StudyDate=2020", "StudyDate=-", "fuzzymatching=true", "includefield=PatientComments",
		"limit=x", "offset=-1", "limit=1&limit=2", "PatientBirthDate=19700101", "IssuerOfPatientID=X", "other=1"}
	for _, q := range bad {
		v, _ := url.ParseQuery(q)
		if _, err := ParseParams(v); !errors.Is(err, ErrRefused) {
			t.Errorf("%q: %v, want refused", q, err)
		}
	}
}

func TestRestrict(t *testing.T) {
	keys := []pacskey.PatientKey{"MRN-1", "MRN-2"}
	cases := map[string][]pacskey.PatientKey{
		"":                keys,
		"PatientID=MRN-2": {"MRN-2"},
		"PatientID=MRN-3": nil,
		"PatientID=MRN":   nil,
	}
	for q, want := range cases {
		v, _ := url.ParseQuery(q)
		p, err := ParseParams(v)
		if err != nil {
			t.Fatal(err)
		}
		got := p.Restrict(keys)
		if len(got) != len(want) || (len(want) > 0 && got[0] != want[0]) {
			t.Errorf("%q: %v, want %v", q, got, want)
		}
	}
}

func TestMatchAndOwnedBy(t *testing.T) {
	st := dicomjson.Dataset{}
	st.SetString(dicomjson.TagStudyInstanceUID, "UI", "1.2.3")
	st.SetString(dicomjson.TagStudyDate, "DA", "20200615")
	st.SetString(dicomjson.TagModalitiesInStudy, "CS", "CT", "SR")
	st.SetString(dicomjson.TagPatientID, "LO", "MRN-1 ")
	match := func(q string) bool {
		v, _ := url.ParseQuery(q)
		p, err := ParseParams(v)
		if err != nil {
			t.Fatal(err)
		}
		return p.Match(st, st)
	}
	for q, want := range map[string]bool{"": true, "StudyDate=20200101-20201231": true, "StudyDate=20210101-": false,
		"ModalitiesInStudy=SR": true, "ModalitiesInStudy=MR": false, "StudyInstanceUID=1.2.4": false, "AccessionNumber=X": false} {
		if got := match(q); got != want {
			t.Errorf("%q: %v, want %v", q, got, want)
		}
	}
	if !OwnedBy(st, []pacskey.PatientKey{"MRN-1"}) || OwnedBy(st, []pacskey.PatientKey{"MRN-2"}) || OwnedBy(st, nil) {
		t.Error("OwnedBy: want an exact PatientID match, padding aside")
	}
	st.SetString(dicomjson.TagPatientID, "LO", "MRN-1", "MRN-2")
	if OwnedBy(st, []pacskey.PatientKey{"MRN-1"}) {
		t.Error("OwnedBy: a study with two PatientIDs is no one's")
	}
}

func TestOwnersCache(t *testing.T) {
	o := NewOwners(time.Minute, 2)
	now := time.Unix(1000, 0)
	o.now = func() time.Time { return now }
	calls := 0
	lookup := func(owned bool) Lookup {
		return func(context.Context, string) (bool, error) { calls++; return owned, nil }
	}
	ctx := context.Background()
	if ok, _ := o.Owns(ctx, "a", "s1", time.Time{}, lookup(true)); !ok {
		t.Fatal("want owned")
	}
	if ok, _ := o.Owns(ctx, "a", "s1", time.Time{}, lookup(false)); !ok || calls != 1 {
		t.Fatalf("want a cached answer, %d lookups", calls)
	}
	if ok, _ := o.Owns(ctx, "b", "s1", time.Time{}, lookup(false)); ok {
		t.Fatal("another caller must not reuse a's answer")
	}
	if ok, _ := o.Owns(ctx, "b", "s1", time.Time{}, lookup(false)); ok || calls != 3 {
		t.Fatalf("negative answers are not cached: %d lookups", calls)
	}
	// The token's expiry bounds the entry.
	o.Owns(ctx, "c", "s2", now.Add(time.Second), lookup(true))
	now = now.Add(2 * time.Second)
	if ok, _ := o.Owns(ctx, "c", "s2", time.Time{}, lookup(false)); ok {
		t.Fatal("an entry outlived the token")
	}
	// Bounded size.
	for i := range 10 {
		o.Owns(ctx, "d", string(rune('a'+i)), time.Time{}, lookup(true))
	}
	if len(o.entries) > 2 {
		t.Fatalf("%d entries, bound 2", len(o.entries))
	}
}
