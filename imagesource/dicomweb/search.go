package dicomweb

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// studyFields are the study attributes the FHIR mapping needs. Orthanc
// ignores includefield=all, so they are named.
var studyFields = []string{
	dicomjson.TagStudyDate,
	dicomjson.TagStudyTime,
	dicomjson.TagAccessionNumber,
	dicomjson.TagModalitiesInStudy,
	dicomjson.TagReferringPhysicianName,
	dicomjson.TagTimezoneOffsetFromUTC,
	dicomjson.TagStudyDescription,
	dicomjson.TagPatientName,
	dicomjson.TagPatientID,
	dicomjson.TagIssuerOfPatientID,
	dicomjson.TagPatientBirthDate,
	dicomjson.TagPatientSex,
	dicomjson.TagStudyInstanceUID,
	dicomjson.TagStudyID,
	dicomjson.TagNumberOfStudyRelatedSeries,
	dicomjson.TagNumberOfStudyRelatedInst,
}

// seriesFields are the series attributes the FHIR mapping needs.
var seriesFields = []string{
	dicomjson.TagSeriesDate,
	dicomjson.TagSeriesTime,
	dicomjson.TagModality,
	dicomjson.TagTimezoneOffsetFromUTC,
	dicomjson.TagSeriesDescription,
	dicomjson.TagStudyInstanceUID,
	dicomjson.TagSeriesInstanceUID,
	dicomjson.TagSeriesNumber,
	dicomjson.TagNumberOfSeriesRelatedInst,
	tagBodyPartExamined,
}

// tagBodyPartExamined is BodyPartExamined (0018,0015), which the FHIR
// mapping shows as the series' bodySite.
const tagBodyPartExamined = "00180015"

// FindStudies asks the PACS for the studies matching q, then for each
// study's series (concurrently, at most MaxConcurrentQIDO calls at a time).
//
// With q.All it lists every study. Otherwise it issues one exact
// studies?PatientID=<key> query per key; every key must pass
// pacskey.Parse again (else a 400 before any call), and every study
// the PACS returns must carry exactly that PatientID: PACSs match
// case-insensitively or with wildcards, so other studies are dropped (and
// logged). q.StudyUIDs restricts the answer to those studies.
//
// The PACS's RetrieveURL values are removed from the answers: the gateway
// gives its own WADO-RS address.
func (s *Source) FindStudies(ctx context.Context, q imagesource.Query) ([]imagesource.Study, error) {
	for _, uid := range q.StudyUIDs {
		if err := wadopath.CheckUID(uid); err != nil {
			return nil, imagesource.Errorf(http.StatusBadRequest, "invalid", "study UID %q is not a valid DICOM UID: %v", uid, err)
		}
	}
	var keys []string
	if !q.All {
		seen := map[string]bool{}
		for _, k := range q.PatientIDs {
			if err := pacskey.Check(string(k)); err != nil {
				return nil, &imagesource.Error{Status: http.StatusBadRequest, Code: "invalid",
					Message: "refusing a patient key: " + err.Error(), Err: err}
			}
			if !seen[string(k)] {
				seen[string(k)] = true
				keys = append(keys, string(k))
			}
		}
		if len(keys) == 0 {
			return nil, nil
		}
	}

	base := url.Values{}
	base.Set("includefield", strings.Join(studyFields, ","))
	if len(q.StudyUIDs) > 0 {
		base.Set("StudyInstanceUID", strings.Join(q.StudyUIDs, ","))
	}

	// One study query per key (or one for everything), concurrently.
	var queries []url.Values
	if q.All {
		queries = []url.Values{base}
	} else {
		for _, k := range keys {
			v := cloneValues(base)
			v.Set("PatientID", k)
			queries = append(queries, v)
		}
	}
	results := make([][]dicomjson.Dataset, len(queries))
	err := s.forEach(ctx, len(queries), func(ctx context.Context, i int) error {
		list, err := s.qido(ctx, "studies", queries[i])
		results[i] = list
		return err
	})
	if err != nil {
		return nil, err
	}

	wantUID := map[string]bool{}
	for _, u := range q.StudyUIDs {
		wantUID[u] = true
	}
	var studies []imagesource.Study
	seenStudy := map[string]bool{}
	dropped := 0
	for i, list := range results {
		for _, ds := range list {
			uid := ds.String(dicomjson.TagStudyInstanceUID)
			if wadopath.CheckUID(uid) != nil {
				s.logger.Warn("PACS returned a study without a valid StudyInstanceUID; dropped")
				dropped++
				continue
			}
			if !q.All && !samePatientID(ds, keys[i]) {
				s.logger.Warn("PACS returned a study of another patient for an exact PatientID query (wildcard or case-insensitive matching); dropped",
					zap.String("study", uid))
				dropped++
				continue
			}
			if len(wantUID) > 0 && !wantUID[uid] {
				continue
			}
			if seenStudy[uid] {
				continue
			}
			seenStudy[uid] = true
			stripPACSURLs(ds)
			studies = append(studies, imagesource.Study{Attributes: ds})
		}
	}
	if dropped > 0 {
		s.logger.Info("studies dropped by the exact PatientID check", zap.Int("dropped", dropped), zap.Int("kept", len(studies)))
	}

	if q.StudiesOnly {
		return studies, nil
	}
	// The series of every study, concurrently.
	seriesQuery := url.Values{}
	seriesQuery.Set("includefield", strings.Join(seriesFields, ","))
	err = s.forEach(ctx, len(studies), func(ctx context.Context, i int) error {
		uid := studies[i].Attributes.String(dicomjson.TagStudyInstanceUID)
		list, err := s.qido(ctx, "studies/"+uid+"/series", seriesQuery)
		if err != nil {
			return err
		}
		for _, ds := range list {
			if su := ds.String(dicomjson.TagStudyInstanceUID); su != "" && su != uid {
				s.logger.Warn("PACS returned a series of another study; dropped", zap.String("study", uid))
				continue
			}
			if wadopath.CheckUID(ds.String(dicomjson.TagSeriesInstanceUID)) != nil {
				s.logger.Warn("PACS returned a series without a valid SeriesInstanceUID; dropped", zap.String("study", uid))
				continue
			}
			stripPACSURLs(ds)
			studies[i].Series = append(studies[i].Series, imagesource.Series{Attributes: ds})
		}
		// The PACS's order is arbitrary: series by number (numbered ones
		// first), then UID, as the folder source lists them.
		slices.SortStableFunc(studies[i].Series, compareSeries)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return studies, nil
}

// compareSeries orders series by SeriesNumber (numbered ones first), then
// by SeriesInstanceUID.
func compareSeries(a, b imagesource.Series) int {
	an, aok := a.Attributes.Int(dicomjson.TagSeriesNumber)
	bn, bok := b.Attributes.Int(dicomjson.TagSeriesNumber)
	switch {
	case aok && bok:
		if c := cmp.Compare(an, bn); c != 0 {
			return c
		}
	case aok:
		return -1
	case bok:
		return 1
	}
	return cmp.Compare(a.Attributes.String(dicomjson.TagSeriesInstanceUID), b.Attributes.String(dicomjson.TagSeriesInstanceUID))
}

// samePatientID reports whether the study's PatientID is key exactly
// (DICOM's insignificant padding spaces aside). A multi-valued or missing
// PatientID never matches.
func samePatientID(ds dicomjson.Dataset, key string) bool {
	vs := ds.Strings(dicomjson.TagPatientID)
	return len(vs) == 1 && strings.Trim(vs[0], " ") == strings.Trim(key, " ")
}

// stripPACSURLs removes the PACS's own addresses from a QIDO answer.
func stripPACSURLs(ds dicomjson.Dataset) {
	delete(ds, dicomjson.TagRetrieveURL)
	for _, e := range ds {
		e.BulkDataURI = ""
	}
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v)+1)
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// forEach runs fn(0..n-1) with at most s.maxConc at a time. The first error
// cancels the others and is returned.
func (s *Source) forEach(ctx context.Context, n int, fn func(context.Context, int) error) error {
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, s.maxConc)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(ctx, i); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dicomweb: search: %w", err)
	}
	return nil
}

// qido GETs base/path?query and decodes the DICOM JSON list. 204 and an
// empty body are no results.
func (s *Source) qido(ctx context.Context, path string, query url.Values) ([]dicomjson.Dataset, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, s.timeout, errQIDOTimeout)
	defer cancel()
	u := s.baseStr + "/" + path
	if len(query) > 0 {
		u += "?" + encodeQuery(query)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("dicomweb: build QIDO-RS request: %w", err)
	}
	req.Header.Set("Accept", "application/dicom+json")
	s.setAuth(req.Header)
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, transportError(ctx, err, "QIDO-RS", s.timeout)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNoContent:
		return nil, nil
	case resp.StatusCode != http.StatusOK:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // keep the connection reusable
		e := qidoStatusError(resp.StatusCode, resp.Header.Get("Retry-After"))
		e.Err = fmt.Errorf("QIDO-RS %s: HTTP %d", path, resp.StatusCode)
		return nil, e
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxQIDOBody+1))
	if err != nil {
		return nil, transportError(ctx, err, "QIDO-RS", s.timeout)
	}
	if len(body) > MaxQIDOBody {
		return nil, imagesource.Errorf(http.StatusBadGateway, "too-costly",
			"the PACS's search answer is larger than %d MiB", MaxQIDOBody>>20)
	}
	list, err := dicomjson.DecodeList(body)
	if err != nil {
		return nil, &imagesource.Error{Status: http.StatusBadGateway, Code: "exception",
			Message: "the PACS's search answer is not DICOM JSON", Err: err}
	}
	return list, nil
}

// encodeQuery encodes like url.Values.Encode but writes spaces as %20 (not
// every PACS reads '+' as a space) and leaves commas alone: they separate
// list values (StudyInstanceUID=a,b; viewport=w,h) and Orthanc does not
// split an encoded %2C.
func encodeQuery(v url.Values) string {
	return strings.NewReplacer("+", "%20", "%2C", ",").Replace(v.Encode())
}

// Check asks the PACS for at most one study, for readiness probes: it
// proves the PACS answers QIDO-RS with the configured credentials.
func (s *Source) Check(ctx context.Context) error {
	_, err := s.qido(ctx, "studies", url.Values{"limit": {"1"}, "includefield": {"0020000D"}})
	return err
}
