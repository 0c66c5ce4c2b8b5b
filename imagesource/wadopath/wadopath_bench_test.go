package wadopath

import "testing"

// benchPaths are the paths of the WADO-RS retrieves the benchmark harness
// sends, one of each kind.
var benchPaths = []string{
	"studies/2.25.2718281828459045235360287.9.1.1",
	"studies/2.25.2718281828459045235360287.9.1.1/metadata",
	"studies/2.25.2718281828459045235360287.9.1.1/series/2.25.2718281828459045235360287.9.1.1.1/instances/2.25.2718281828459045235360287.9.1.1.1.1",
	"studies/2.25.2718281828459045235360287.9.1.1/series/2.25.2718281828459045235360287.9.1.1.3/instances/2.25.2718281828459045235360287.9.1.1.3.1/frames/1",
}

// BenchmarkParse is the allow-list check of one WADO-RS path (the four
// kinds in turn).
func BenchmarkParse(b *testing.B) {
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := Parse(benchPaths[i%len(benchPaths)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkCheckUID is the grammar check of one 48-character UID.
func BenchmarkCheckUID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if err := CheckUID("2.25.2718281828459045235360287.9.1.1.3.1"); err != nil {
			b.Fatal(err)
		}
	}
}
