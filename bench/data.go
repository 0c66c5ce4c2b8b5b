package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

// The bench patient: several studies so that a search costs several QIDO
// calls, CT-sized images so that retrieves move real bytes.
const (
	benchPatient = "bench-patient"  // FHIR Patient id at the test EHR
	benchMRN     = "BENCH-MRN-0001" // its PACS PatientID
	largePatient = "bench-large"
	// manyPatient has one study of manyInstances small instances: the
	// metadata cache's large-study case (Orthanc builds metadata from
	// every instance).
	manyPatient   = "bench-many"
	manyMRN       = "BENCH-MRN-MANY"
	manyInstances = 600
	largeMRN      = "BENCH-MRN-LARGE"
	mrnSystem     = "urn:oid:2.16.840.1.113883.3.9999.1"
	benchUIDRoot  = dicomgen.UIDRoot + ".9"
)

// dataset names the UIDs the cases address.
type dataset struct {
	studies     []string // the bench patient's studies
	wadoStudy   string   // study retrieve and metadata
	instSeries  string   // instance retrieve: a 512×512 CT instance
	instUID     string
	frameSeries string // frames: a 16-frame 256×256 instance
	frameUID    string
	frameNumber int

	studyBytes     int64 // pixel bytes of wadoStudy
	studyInstances int
	instances      int // instances uploaded (demo + bench)
	uploadedBytes  int64

	manyStudy string // manyPatient's study of manyInstances instances

	largeStudy     string
	largeBytes     int64 // pixel bytes of the large study
	largeInstances int
}

// benchStudies is the bench patient's data: study 1 has two CT series of
// ten 512×512 instances and a 16-frame 256×256 Secondary Capture instance
// (about 12 MiB); studies 2-5 are small CT/MR studies.
func benchStudies() []dicomgen.Study {
	p := dicomgen.Patient{ID: benchMRN, Name: "Bench^Patient", BirthDate: "19700101", Sex: "O"}
	uid := func(n int) string { return fmt.Sprintf("%s.1.%d", benchUIDRoot, n) }
	studies := []dicomgen.Study{{
		Patient: p, UID: uid(1), Dir: "bench/st1", ID: "B1", AccessionNumber: "BENCH-1",
		Date: "20250301", Time: "101500", Description: "CT CHEST ABDOMEN", BodyPart: "CHEST",
		Series: []dicomgen.Series{
			{Modality: "CT", Description: "AXIAL 5MM", Instances: 10, Rows: 512, Cols: 512, Pattern: 0},
			{Modality: "CT", Description: "AXIAL LUNG", Instances: 10, Rows: 512, Cols: 512, Pattern: 1},
			{Modality: "OT", Description: "CINE 16 FRAMES", Instances: 1, Rows: 256, Cols: 256, Frames: 16, Pattern: 4},
		},
	}}
	for n := 2; n <= 5; n++ {
		mod := "CT"
		if n%2 == 1 {
			mod = "MR"
		}
		studies = append(studies, dicomgen.Study{
			Patient: p, UID: uid(n), Dir: fmt.Sprintf("bench/st%d", n), ID: fmt.Sprintf("B%d", n),
			AccessionNumber: fmt.Sprintf("BENCH-%d", n), Date: fmt.Sprintf("2024%02d01", n), Time: "090000",
			Description: fmt.Sprintf("FOLLOW-UP %d", n), BodyPart: "CHEST",
			Series: []dicomgen.Series{
				{Modality: mod, Description: "AX", Instances: 4, Rows: 256, Cols: 256, Pattern: n},
				{Modality: mod, Description: "COR", Instances: 2, Rows: 256, Cols: 256, Pattern: n + 1},
			},
		})
	}
	return studies
}

// loadDataset writes the demo and bench studies under dir and uploads them.
func loadDataset(ctx context.Context, pacs *orthanc.Server, dir string) (*dataset, error) {
	if _, err := dicomgen.WriteDemo(filepath.Join(dir, "demo")); err != nil {
		return nil, fmt.Errorf("demo data: %w", err)
	}
	studies := benchStudies()
	m, err := dicomgen.WriteStudies(filepath.Join(dir, "bench"), studies)
	if err != nil {
		return nil, fmt.Errorf("bench data: %w", err)
	}
	ds := &dataset{studies: m.StudyUIDs(), wadoStudy: studies[0].UID}
	for _, in := range m {
		if in.StudyUID != ds.wadoStudy {
			continue
		}
		ds.studyBytes += int64(in.Rows) * int64(in.Cols) * int64(in.Frames) * 2
		ds.studyInstances++
		if in.Frames > 1 && ds.frameUID == "" {
			ds.frameSeries, ds.frameUID, ds.frameNumber = in.SeriesUID, in.SOPInstanceUID, 1
		}
		if in.Frames == 1 && in.Rows == 512 && ds.instUID == "" {
			ds.instSeries, ds.instUID = in.SeriesUID, in.SOPInstanceUID
		}
	}
	ds.manyStudy = benchUIDRoot + ".2.1"
	if _, err := dicomgen.WriteStudy(filepath.Join(dir, "many"), dicomgen.StudySpec{PatientID: manyMRN, StudyUID: ds.manyStudy,
		Series: 6, InstancesPerSeries: manyInstances / 6, Rows: 16, Cols: 16, Description: "MANY SMALL INSTANCES"}); err != nil {
		return nil, fmt.Errorf("many-instance study: %w", err)
	}
	n, b, err := upload(ctx, pacs, dir, 2)
	if err != nil {
		return nil, err
	}
	ds.instances, ds.uploadedBytes = n, b
	return ds, nil
}

// largeSpec is the large study: 4 series of 512×512×4-frame instances,
// 128 instances per series per GiB of pixel data.
func largeSpec(gib float64) dicomgen.StudySpec {
	per := int(math.Ceil(128 * gib))
	return dicomgen.StudySpec{
		PatientID: largeMRN, PatientName: "Bench^Large", StudyUID: benchUIDRoot + ".100",
		Dir: "large", Description: "LARGE SYNTHETIC STUDY",
		Series: 4, InstancesPerSeries: per, Rows: 512, Cols: 512, Frames: 4,
	}
}

// loadLarge writes the large study under dir, uploads it and removes the
// files again (Orthanc keeps its own copy).
func loadLarge(ctx context.Context, pacs *orthanc.Server, dir string, gib float64, ds *dataset) error {
	spec := largeSpec(gib)
	m, err := dicomgen.WriteStudy(dir, spec)
	if err != nil {
		return fmt.Errorf("large study: %w", err)
	}
	defer os.RemoveAll(dir)
	if _, _, err := upload(ctx, pacs, dir, 2); err != nil {
		return err
	}
	ds.largeStudy = spec.StudyUID
	ds.largeBytes = spec.PixelBytes()
	ds.largeInstances = len(m)
	return nil
}

// upload POSTs every .dcm file under dir to Orthanc with a few workers and
// returns how many files and bytes it stored.
func upload(ctx context.Context, pacs *orthanc.Server, dir string, workers int) (int, int64, error) {
	files, err := orthanc.DICOMFiles(dir)
	if err != nil {
		return 0, 0, err
	}
	ch := make(chan string)
	var (
		mu       sync.Mutex
		firstErr error
		total    int64
		wg       sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range ch {
				n, err := uploadFile(ctx, pacs, f)
				mu.Lock()
				total += n
				if err != nil && firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, f := range files {
		select {
		case ch <- f:
		case <-ctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	if firstErr != nil {
		return 0, 0, firstErr
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, fmt.Errorf("upload: %w", err)
	}
	return len(files), total, nil
}

func uploadFile(ctx context.Context, pacs *orthanc.Server, name string) (int64, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return 0, fmt.Errorf("upload: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, pacs.URL()+"/instances", bytes.NewReader(b))
	if err != nil {
		return 0, fmt.Errorf("upload %s: %w", name, err)
	}
	req.Header.Set("Content-Type", "application/dicom")
	resp, err := pacs.Do(req)
	if err != nil {
		return 0, fmt.Errorf("upload %s: %w", name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("upload %s: HTTP %d: %s", name, resp.StatusCode, bytes.TrimSpace(body))
	}
	return int64(len(b)), nil
}
