package folder

import (
	"context"
	"testing"
)

func TestStudyVersionFromTheIndex(t *testing.T) {
	s, _ := openTree(t)
	v, err := s.StudyVersion(context.Background(), studyA)
	if err != nil || v != "PAT-1\x007" {
		t.Fatalf("version %q, %v: want PAT-1 and 7 instances", v, err)
	}
	if _, err := s.StudyVersion(context.Background(), "1.2.3.999"); err == nil {
		t.Fatal("a study the folder does not hold has a version")
	}
}
