package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

// BenchmarkOrthancRendered measures what one rendering of a 512x512 CT
// image costs Orthanc, by viewport: 128 (a thumbnail), 2048 (the default
// max_render_size, the largest the gateway lets through), 8192 and 30000
// (refused by the gateway before the PACS is asked). It reports the time
// per request and Orthanc's peak resident memory after the sizes so far
// (VmHWM, so it only grows: run the sizes in ascending order, as here).
//
//	go test ./integration -run '^$' -bench OrthancRendered -benchtime 10x
//	SIA_BENCH_HUGE_RENDER=1 go test ./integration -run '^$' -bench OrthancRendered -benchtime 1x
func BenchmarkOrthancRendered(b *testing.B) {
	orthanc.SkipUnlessAvailable(b)
	ctx := context.Background()
	pacs, err := orthanc.Start(ctx, orthanc.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = pacs.Stop() })
	dir := b.TempDir()
	m, err := dicomgen.WriteStudy(dir, dicomgen.StudySpec{PatientID: "BENCH-RENDER", StudyUID: "2.25.4242424242.7", Rows: 512, Cols: 512})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pacs.Upload(ctx, dir); err != nil {
		b.Fatal(err)
	}
	in := m[0]
	instance := pacs.DICOMwebURL() + "/studies/" + in.StudyUID + "/series/" + in.SeriesUID + "/instances/" + in.SOPInstanceUID + "/rendered"

	for _, side := range []int{128, 2048, 8192, 30000} {
		b.Run(fmt.Sprintf("viewport=%d", side), func(b *testing.B) {
			if side > 8192 && os.Getenv("SIA_BENCH_HUGE_RENDER") == "" {
				// About 15 s and 750 MB a request.
				b.Skip("set SIA_BENCH_HUGE_RENDER=1 (and -benchtime 1x) to measure 30000x30000")
			}
			u := instance + "?viewport=" + strconv.Itoa(side) + "," + strconv.Itoa(side)
			var bytes int64
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodGet, u, nil)
				req.Header.Set("Accept", "image/jpeg")
				resp, err := pacs.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("HTTP %d", resp.StatusCode)
				}
				bytes = n
			}
			b.ReportMetric(float64(bytes)/1e3, "kB/image")
			if hwm := peakRSSKB(pacs.PID()); hwm > 0 {
				b.ReportMetric(float64(hwm)/1024, "MB-PACS-peak-RSS")
			}
		})
	}
}

// peakRSSKB is VmHWM of a process in kB (0 when unknown: not Linux).
func peakRSSKB(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
