package dimse

import (
	"context"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

func TestStudyVersionIsOneCFIND(t *testing.T) {
	p, addr := fakePACS(t)
	s := newSource(t, addr, nil)
	ctx := context.Background()
	got, err := s.FindStudies(ctx, imagesourceQuery("SIA-MRN-0001"))
	if err != nil || len(got) == 0 {
		t.Fatalf("search: %v", err)
	}
	uid := got[0].Attributes.String("0020000D")
	_, before := p.Counts()
	v, err := s.StudyVersion(ctx, uid)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "SIA-MRN-0001\x00") {
		t.Fatalf("version %q does not start with the study's PatientID", v)
	}
	if _, after := p.Counts(); after != before+1 {
		t.Fatalf("%d associations for a version, want 1", after-before)
	}
	if _, err := s.StudyVersion(ctx, "1.2.3.4.999"); err == nil {
		t.Fatal("a study the PACS does not hold has a version")
	}
}

func imagesourceQuery(key string) imagesource.Query {
	return imagesource.Query{PatientIDs: []pacskey.PatientKey{pacskey.PatientKey(key)}}
}
