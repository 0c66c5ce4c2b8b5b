// Package folder is an imagesource.Source that serves a folder of DICOM
// Part 10 files. Open indexes the folder once (headers only, so it is fast);
// FindStudies answers from that index and Retrieve answers WADO-RS requests
// (PS3.18 §10.4) by streaming the files, converting their headers to DICOM
// JSON, cutting native frames out of the pixel data and rendering images.
//
// The source never transcodes: an object or frame request for a transfer
// syntax other than the stored one (or, for frames, native little endian) is
// answered 406.
package folder

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// Source serves the Part 10 files under one folder. It is immutable once
// opened and safe for concurrent use.
type Source struct {
	root     string
	log      *zap.Logger
	studies  map[string]*study
	ordered  []*study
	problems []string
	notDICOM int // how many of problems are files without the Part 10 prefix
	count    int
}

type study struct {
	uid       string
	patientID string
	date      string
	attrs     dicomjson.Dataset
	series    []*series
	byUID     map[string]*series
}

type series struct {
	uid       string
	number    int
	hasNumber bool
	attrs     dicomjson.Dataset
	instances []*instance
	byUID     map[string]*instance
}

// instance is one indexed file.
type instance struct {
	path      string // absolute
	rel       string // relative to the root, for logs and problems
	studyUID  string
	seriesUID string
	sopUID    string
	ts        string // transfer syntax UID
	size      int64  // file size and modification time when indexed
	modTime   time.Time
	number    int
	hasNumber bool
	frames    int // NumberOfFrames, 1 when absent
	rows      int
	cols      int
	// attrs are the indexed attributes of every level, as DICOM JSON.
	attrs dicomjson.Dataset
}

// Tags kept per level. The study and series levels take their values from
// the first instance (in the source's order) of the study or series.
var (
	studyTags = []string{
		dicomjson.TagStudyInstanceUID, dicomjson.TagStudyDate, dicomjson.TagStudyTime,
		dicomjson.TagTimezoneOffsetFromUTC, dicomjson.TagAccessionNumber,
		dicomjson.TagReferringPhysicianName, dicomjson.TagStudyDescription,
		dicomjson.TagPatientName, dicomjson.TagPatientID, dicomjson.TagIssuerOfPatientID,
		dicomjson.TagPatientBirthDate, dicomjson.TagPatientSex, dicomjson.TagStudyID,
	}
	seriesTags = []string{
		dicomjson.TagStudyInstanceUID, dicomjson.TagSeriesInstanceUID, dicomjson.TagModality,
		dicomjson.TagSeriesNumber, dicomjson.TagSeriesDescription, dicomjson.TagSeriesDate,
		dicomjson.TagSeriesTime, tagBodyPartExamined,
	}
	instanceTags = []string{
		dicomjson.TagStudyInstanceUID, dicomjson.TagSeriesInstanceUID,
		dicomjson.TagSOPClassUID, dicomjson.TagSOPInstanceUID, dicomjson.TagInstanceNumber,
		dicomjson.TagNumberOfFrames, dicomjson.TagRows, dicomjson.TagColumns,
	}
	indexTags = func() map[string]bool {
		m := map[string]bool{}
		for _, l := range [][]string{studyTags, seriesTags, instanceTags} {
			for _, t := range l {
				m[t] = true
			}
		}
		return m
	}()
)

const tagBodyPartExamined = "00180015"

// indexStopGroup: the index reads top-level elements up to and including
// this group (Image Pixel module) and stops there.
const indexStopGroup = 0x0028

// Open indexes every regular file under root, recursively. Files that are not
// readable DICOM Part 10 files are skipped with a warning and listed by
// Problems; only a missing or unreadable root is an error. A nil logger logs
// nothing.
func Open(root string, logger *zap.Logger) (*Source, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("folder image source: root %q: %w", root, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("folder image source: root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("folder image source: root %q is not a directory", root)
	}
	if _, err := os.ReadDir(abs); err != nil {
		return nil, fmt.Errorf("folder image source: read root: %w", err)
	}
	start := time.Now()
	s := &Source{root: abs, log: logger, studies: map[string]*study{}}

	var paths []string
	walkErr := filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == abs {
				return err
			}
			s.problem(s.rel(p), fmt.Errorf("cannot read: %w", err))
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			paths = append(paths, p)
		}
		return nil
	})
	if walkErr != nil {
		return nil, fmt.Errorf("folder image source: walk root: %w", walkErr)
	}
	sort.Strings(paths)

	// Read headers concurrently; results keep the sorted path order.
	results := make([]*instance, len(paths))
	errs := make([]error, len(paths))
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < max(1, runtime.GOMAXPROCS(0)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				results[i], errs[i] = indexFile(paths[i])
			}
		}()
	}
	for i := range paths {
		work <- i
	}
	close(work)
	wg.Wait()

	var insts []*instance
	for i, p := range paths {
		if errs[i] != nil {
			s.problem(s.rel(p), errs[i])
			continue
		}
		results[i].rel = s.rel(p)
		insts = append(insts, results[i])
	}
	s.build(insts)
	sort.Strings(s.problems)
	logger.Info("folder image source indexed",
		zap.String("root", abs),
		zap.Int("studies", len(s.ordered)),
		zap.Int("instances", s.count),
		zap.Int("problems", len(s.problems)-s.notDICOM),
		zap.Int("not_dicom", s.notDICOM),
		zap.Duration("took", time.Since(start)))
	return s, nil
}

func (s *Source) rel(p string) string {
	r, err := filepath.Rel(s.root, p)
	if err != nil {
		return p
	}
	return filepath.ToSlash(r)
}

func (s *Source) problem(rel string, err error) {
	if errors.Is(err, errNotPart10) {
		// Notes, manifests and the like beside the images are normal in a
		// folder of studies: worth a count, not a warning.
		s.notDICOM++
		s.log.Debug("folder image source: skipping a file that is not DICOM", zap.String("file", rel))
	} else {
		s.log.Warn("folder image source: skipping file", zap.String("file", rel), zap.Error(err))
	}
	s.problems = append(s.problems, rel+": "+err.Error())
}

// Problems lists the files that were skipped, each as "path: reason" with the
// path relative to the root.
func (s *Source) Problems() []string {
	return slices.Clone(s.problems)
}

// Count reports how many instances (files) the index holds.
func (s *Source) Count() int { return s.count }

// errNotPart10 marks a file without the Part 10 preamble.
var errNotPart10 = errors.New("not a DICOM Part 10 file (no DICM prefix)")

// indexFile reads the header of one file.
func indexFile(path string) (*instance, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	h, err := readHeader(f, indexStopGroup)
	if err != nil {
		return nil, err
	}
	inst := &instance{path: path, ts: h.ts, size: fi.Size(), modTime: fi.ModTime(), attrs: dicomjson.Dataset{}}
	conv := converter{}
	for _, e := range h.elems {
		key := tagKey(e.Tag)
		if indexTags[key] {
			inst.attrs[key] = conv.element(e, key, false)
		}
	}
	a := inst.attrs
	inst.studyUID = a.String(dicomjson.TagStudyInstanceUID)
	inst.seriesUID = a.String(dicomjson.TagSeriesInstanceUID)
	inst.sopUID = a.String(dicomjson.TagSOPInstanceUID)
	for _, u := range []struct{ name, v string }{
		{"StudyInstanceUID", inst.studyUID},
		{"SeriesInstanceUID", inst.seriesUID},
		{"SOPInstanceUID", inst.sopUID},
	} {
		if err := wadopath.CheckUID(u.v); err != nil {
			return nil, fmt.Errorf("%s %q is not a valid UID: %v", u.name, u.v, err)
		}
	}
	inst.number, inst.hasNumber = a.Int(dicomjson.TagInstanceNumber)
	inst.rows, _ = a.Int(dicomjson.TagRows)
	inst.cols, _ = a.Int(dicomjson.TagColumns)
	inst.frames = 1
	if n, ok := a.Int(dicomjson.TagNumberOfFrames); ok && n > 0 {
		inst.frames = n
	}
	return inst, nil
}

// patientKey is what must agree across a study's files.
func patientKey(a dicomjson.Dataset) string {
	return strings.Join(a.Strings(dicomjson.TagPatientID), `\`) + "\x00" +
		strings.Join(a.Strings(dicomjson.TagIssuerOfPatientID), `\`)
}

// build groups the indexed files into studies and series. A study whose
// files disagree on PatientID (or its issuer) is left out entirely, so that
// no file can be served under another patient's study.
func (s *Source) build(insts []*instance) {
	for _, inst := range insts {
		st := s.studies[inst.studyUID]
		if st == nil {
			st = &study{uid: inst.studyUID, byUID: map[string]*series{}}
			s.studies[inst.studyUID] = st
		}
		se := st.byUID[inst.seriesUID]
		if se == nil {
			se = &series{uid: inst.seriesUID, byUID: map[string]*instance{}}
			st.byUID[inst.seriesUID] = se
			st.series = append(st.series, se)
		}
		if prev := se.byUID[inst.sopUID]; prev != nil {
			s.problem(inst.rel, fmt.Errorf("duplicate SOPInstanceUID %s (already served from %s)", inst.sopUID, prev.rel))
			continue
		}
		se.byUID[inst.sopUID] = inst
		se.instances = append(se.instances, inst)
	}
	for uid, st := range s.studies {
		var key string
		conflict := false
		for _, se := range st.series {
			for _, inst := range se.instances {
				k := patientKey(inst.attrs)
				if key == "" {
					key = k
				} else if k != key {
					conflict = true
				}
			}
		}
		if conflict {
			for _, se := range st.series {
				for _, inst := range se.instances {
					s.problem(inst.rel, fmt.Errorf("study %s is left out: its files disagree on PatientID or IssuerOfPatientID", uid))
				}
			}
			delete(s.studies, uid)
			continue
		}
		s.finishStudy(st)
		s.ordered = append(s.ordered, st)
	}
	slices.SortFunc(s.ordered, func(a, b *study) int {
		return cmp.Or(cmp.Compare(a.date, b.date), cmp.Compare(a.uid, b.uid))
	})
}

// finishStudy sorts a study and computes its study and series attributes.
func (s *Source) finishStudy(st *study) {
	modalities := map[string]bool{}
	n := 0
	for _, se := range st.series {
		slices.SortFunc(se.instances, func(a, b *instance) int {
			return cmp.Or(compareNumber(a.number, a.hasNumber, b.number, b.hasNumber), cmp.Compare(a.sopUID, b.sopUID))
		})
		first := se.instances[0].attrs
		se.number, se.hasNumber = first.Int(dicomjson.TagSeriesNumber)
		se.attrs = pick(first, seriesTags)
		se.attrs.SetInt(dicomjson.TagNumberOfSeriesRelatedInst, "IS", len(se.instances))
		if m := first.String(dicomjson.TagModality); m != "" {
			modalities[m] = true
		}
		n += len(se.instances)
	}
	slices.SortFunc(st.series, func(a, b *series) int {
		return cmp.Or(compareNumber(a.number, a.hasNumber, b.number, b.hasNumber), cmp.Compare(a.uid, b.uid))
	})
	first := st.series[0].instances[0].attrs
	st.attrs = pick(first, studyTags)
	st.patientID = strings.Join(first.Strings(dicomjson.TagPatientID), `\`)
	st.date = first.String(dicomjson.TagStudyDate)
	if len(modalities) > 0 {
		ms := make([]string, 0, len(modalities))
		for m := range modalities {
			ms = append(ms, m)
		}
		sort.Strings(ms)
		st.attrs.SetString(dicomjson.TagModalitiesInStudy, "CS", ms...)
	}
	st.attrs.SetInt(dicomjson.TagNumberOfStudyRelatedSeries, "IS", len(st.series))
	st.attrs.SetInt(dicomjson.TagNumberOfStudyRelatedInst, "IS", n)
	s.count += n
}

// compareNumber orders numbered items first, by number.
func compareNumber(a int, aok bool, b int, bok bool) int {
	switch {
	case aok && bok:
		return cmp.Compare(a, b)
	case aok:
		return -1
	case bok:
		return 1
	}
	return 0
}

// pick copies the given tags of ds (elements are copied too).
func pick(ds dicomjson.Dataset, tags []string) dicomjson.Dataset {
	out := dicomjson.Dataset{}
	for _, t := range tags {
		if e := ds[t]; e != nil {
			out[t] = copyElement(e)
		}
	}
	return out
}

func copyElement(e *dicomjson.Element) *dicomjson.Element {
	c := *e
	c.Value = slices.Clone(e.Value)
	return &c
}

func copyDataset(ds dicomjson.Dataset) dicomjson.Dataset {
	out := make(dicomjson.Dataset, len(ds))
	for t, e := range ds {
		out[t] = copyElement(e)
	}
	return out
}

// FindStudies returns the matching studies in a stable order (study date,
// then UID). Without q.All a study matches only when its PatientID equals
// one of q.PatientIDs exactly (case-sensitive; no pattern matching). The
// answer is a copy: callers may change it.
func (s *Source) FindStudies(ctx context.Context, q imagesource.Query) ([]imagesource.Study, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("folder image source: find studies: %w", err)
	}
	var want map[string]bool
	if len(q.StudyUIDs) > 0 {
		want = make(map[string]bool, len(q.StudyUIDs))
		for _, u := range q.StudyUIDs {
			want[u] = true
		}
	}
	var out []imagesource.Study
	for _, st := range s.ordered {
		if want != nil && !want[st.uid] {
			continue
		}
		if !q.All && !slices.Contains(q.PatientIDs, pacskey.PatientKey(st.patientID)) {
			continue
		}
		out = append(out, st.export())
	}
	return out, nil
}

func (st *study) export() imagesource.Study {
	res := imagesource.Study{Attributes: copyDataset(st.attrs), Series: make([]imagesource.Series, len(st.series))}
	for i, se := range st.series {
		insts := make([]dicomjson.Dataset, len(se.instances))
		for j, inst := range se.instances {
			insts[j] = pick(inst.attrs, instanceTags)
		}
		res.Series[i] = imagesource.Series{Attributes: copyDataset(se.attrs), Instances: insts}
	}
	return res
}

// selection finds the instances a path addresses, in the source's order. The
// series and instance must belong to the path's study.
func (s *Source) selection(p wadopath.Path) ([]*instance, error) {
	st := s.studies[p.StudyUID]
	if st == nil {
		return nil, imagesource.Errorf(404, "not-found", "study %s is not in this image source", p.StudyUID)
	}
	var out []*instance
	if p.SeriesUID == "" {
		for _, se := range st.series {
			out = append(out, se.instances...)
		}
		return out, nil
	}
	se := st.byUID[p.SeriesUID]
	if se == nil {
		return nil, imagesource.Errorf(404, "not-found", "series %s is not in study %s", p.SeriesUID, p.StudyUID)
	}
	if p.InstanceUID == "" {
		return slices.Clone(se.instances), nil
	}
	inst := se.byUID[p.InstanceUID]
	if inst == nil {
		return nil, imagesource.Errorf(404, "not-found", "instance %s is not in series %s of study %s", p.InstanceUID, p.SeriesUID, p.StudyUID)
	}
	return []*instance{inst}, nil
}

// hasPreamble reports whether r holds "DICM" at offset 128.
func hasPreamble(r io.ReaderAt) bool {
	var b [4]byte
	if _, err := r.ReadAt(b[:], 128); err != nil {
		return false
	}
	return bytes.Equal(b[:], []byte("DICM"))
}

// Interface guards
var _ imagesource.Source = (*Source)(nil)
