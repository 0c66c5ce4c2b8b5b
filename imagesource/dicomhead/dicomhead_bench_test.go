package dicomhead

import (
	"os"
	"testing"
)

// BenchmarkParseDemoInstance is the per-part cost of the gateway's check
// of an instance: reading PatientID and StudyInstanceUID from its header.
func BenchmarkParseDemoInstance(b *testing.B) {
	data, err := os.ReadFile(demoFiles(b)[0])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}
