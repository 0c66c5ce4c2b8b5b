// Package metacache keeps what viewers ask for again and again in memory:
// WADO-RS metadata answers (study, series and instance level) and the
// answers to study searches, for any imagesource.Source.
//
// A *Source wraps the route's source. It sits behind every check the
// route makes (bearer token, study token, study address, patient): the
// handler calls it with a Retrieval it already validated, and the cache
// adds checks of its own, never removes one:
//
//   - Only answers the wrapped source produced and checked are stored: a
//     200 application/dicom+json answer, in which the source checked every
//     data set's StudyInstanceUID and PatientID (Retrieval.CheckObject).
//     The cache records the distinct PatientID values of the stored data
//     sets; an entry is served only when the request's Retrieval.CheckObject
//     accepts the entry's study and each of those PatientIDs, so a
//     principal that could not fetch the answer from the PACS never gets
//     it from the cache.
//   - URLs in metadata carry the per-request study token (PublicBase). The
//     cache asks the source for the answer under a placeholder base known
//     only to this process and puts the request's own base in its place
//     when serving, so a cached answer never carries another request's
//     token.
//   - Searches are keyed by everything the query holds (the patient's PACS
//     keys, All, study UIDs); one Source serves one route, so nothing is
//     shared across routes.
//
// Freshness: an entry younger than TTL is served as is. Past TTL a
// metadata entry is revalidated with the source's StudyVersion (one cheap
// QIDO study query, a folder index lookup) when the source has it: the
// same version is served and counted as a revalidation, another one is
// fetched again. Every entry is dropped MaxAgeFactor×TTL (at least
// MinMaxAge) after it was fetched, whether used or not, so memory returns and nothing lives on
// revalidations alone. Search answers are never revalidated: past TTL they
// are fetched again.
//
// Size bounds the bytes held (bodies, keys and a fixed overhead per
// entry); the least recently used entries go first. An answer larger than
// a quarter of Size is served but not kept.
package metacache

import (
	"bytes"
	"container/list"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// Defaults and bounds of Config.
const (
	DefaultSize = 256 << 20
	DefaultTTL  = 30 * time.Second
	// MinSize is the smallest Size accepted.
	MinSize = 1 << 20
	// MaxAgeFactor×TTL is how long an entry lives after it was fetched,
	// revalidations included.
	MaxAgeFactor = 10
	// MinMaxAge is the least time an entry lives, for very short TTLs.
	MinMaxAge = time.Minute
	// entryOverhead is what an entry costs besides its bytes (maps, list
	// element, strings' headers), counted against Size.
	entryOverhead = 512
)

// Config sizes a cache.
type Config struct {
	// Size bounds the bytes held, in bytes. 0: DefaultSize.
	Size int64 `json:"size,omitempty"`
	// TTL is how long an entry is served without asking the source again.
	// 0: DefaultTTL.
	TTL time.Duration `json:"ttl,omitempty"`
}

// withDefaults fills in zero fields and checks the rest.
func (c Config) withDefaults() (Config, error) {
	if c.Size == 0 {
		c.Size = DefaultSize
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Size < MinSize {
		return c, fmt.Errorf("metadata_cache: size must be at least %d bytes (1MiB)", MinSize)
	}
	if c.TTL < 0 {
		return c, errors.New("metadata_cache: ttl must not be negative")
	}
	return c, nil
}

// Versioner is implemented by sources that can tell cheaply whether a
// study changed: StudyVersion returns a value that changes when an
// instance is added to or removed from the study (its instance and series
// counts, its patient). An error leaves the entry unused (it is fetched
// again).
type Versioner interface {
	StudyVersion(ctx context.Context, studyUID string) (string, error)
}

// Stats are a cache's counters since it was made.
type Stats struct {
	// Hits are answers served from the cache (304s included).
	Hits int64
	// Misses are answers the source had to produce.
	Misses int64
	// Revalidations are stale entries the source confirmed unchanged.
	Revalidations int64
	// Bytes is what the cache holds now; Entries how many entries.
	Bytes   int64
	Entries int
}

// Source is an imagesource.Source with a cache in front of the wrapped
// one. It is safe for concurrent use. Close releases what it holds.
type Source struct {
	inner       imagesource.Source
	versioner   Versioner
	cfg         Config
	placeholder string // "https://….invalid/wado", unique to this Source
	now         func() time.Time

	mu       sync.Mutex
	lru      *list.List // front: most recently used
	entries  map[string]*list.Element
	bytes    int64
	inflight map[string]chan struct{}
	closed   bool
	stop     chan struct{}

	hits, misses, revalidations atomic.Int64
}

// entry is one cached answer.
type entry struct {
	key     string
	size    int64
	fetched time.Time // when the source produced it
	checked time.Time // when it was last known current
	// metadata
	studyUID    string
	patientIDs  []string // distinct PatientID values of its data sets
	body        []byte   // with the placeholder base
	holes       []int    // offsets of the placeholder base in body
	phLen       int      // its length
	contentType string
	sum         [32]byte // of body
	version     string   // StudyVersion at fetch time ("" without a Versioner)
	// search
	studies []imagesource.Study
}

// New wraps inner. A sweeper drops expired entries until Close.
func New(inner imagesource.Source, cfg Config) (*Source, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("metadata_cache: %w", err)
	}
	s := &Source{
		inner:       inner,
		cfg:         cfg,
		placeholder: "https://metacache-" + hex.EncodeToString(nonce[:]) + ".invalid/wado",
		now:         time.Now,
		lru:         list.New(),
		entries:     map[string]*list.Element{},
		inflight:    map[string]chan struct{}{},
		stop:        make(chan struct{}),
	}
	s.versioner, _ = inner.(Versioner)
	go s.sweep()
	return s, nil
}

// Inner is the wrapped source.
func (s *Source) Inner() imagesource.Source { return s.inner }

// Config is the cache's configuration with defaults filled in.
func (s *Source) Config() Config { return s.cfg }

// Stats reports the counters.
func (s *Source) Stats() Stats {
	s.mu.Lock()
	b, n := s.bytes, len(s.entries)
	s.mu.Unlock()
	return Stats{Hits: s.hits.Load(), Misses: s.misses.Load(), Revalidations: s.revalidations.Load(), Bytes: b, Entries: n}
}

// Close drops every entry and stops the sweeper. The Source still answers
// afterwards, from the wrapped source only.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.stop)
	}
	s.lru.Init()
	clear(s.entries)
	s.bytes = 0
	return nil
}

// Check passes the wrapped source's health check on, when it has one.
func (s *Source) Check(ctx context.Context) error {
	if c, ok := s.inner.(interface{ Check(context.Context) error }); ok {
		return c.Check(ctx)
	}
	return nil
}

// maxAge is how long an entry lives after it was fetched.
func (s *Source) maxAge() time.Duration { return max(MaxAgeFactor*s.cfg.TTL, MinMaxAge) }

// sweep drops expired entries every TTL (at least every second, at most
// every minute) until Close.
func (s *Source) sweep() {
	every := min(max(s.cfg.TTL, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.dropExpired()
		}
	}
}

// dropExpired removes the entries older than maxAge (and, for searches,
// older than TTL: they are never revalidated).
func (s *Source) dropExpired() {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for el := s.lru.Back(); el != nil; {
		prev := el.Prev()
		if e := el.Value.(*entry); s.expired(e, now) {
			s.removeLocked(el)
		}
		el = prev
	}
}

func (s *Source) expired(e *entry, now time.Time) bool {
	if e.studies != nil || e.body == nil {
		return now.Sub(e.fetched) >= s.cfg.TTL
	}
	return now.Sub(e.fetched) >= s.maxAge()
}

// get returns the entry for key, marking it used; nil when absent or
// expired.
func (s *Source) get(key string) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.entries[key]
	if !ok {
		return nil
	}
	e := el.Value.(*entry)
	if s.expired(e, s.now()) {
		s.removeLocked(el)
		return nil
	}
	s.lru.MoveToFront(el)
	return e
}

// put stores e (replacing any entry of its key) and evicts the least
// recently used entries until the cache fits its size.
func (s *Source) put(e *entry) {
	e.size += int64(len(e.key)) + entryOverhead
	if e.size > s.cfg.Size/4 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if el, ok := s.entries[e.key]; ok {
		s.removeLocked(el)
	}
	s.entries[e.key] = s.lru.PushFront(e)
	s.bytes += e.size
	for s.bytes > s.cfg.Size {
		s.removeLocked(s.lru.Back())
	}
}

// touch marks e current (revalidated) when it is still the entry of its
// key.
func (s *Source) touch(e *entry, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.entries[e.key]; ok && el.Value == e {
		e.checked = at
	}
}

// drop removes the entry of key when it is still e.
func (s *Source) drop(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.entries[e.key]; ok && el.Value == e {
		s.removeLocked(el)
	}
}

func (s *Source) removeLocked(el *list.Element) {
	e := el.Value.(*entry)
	s.lru.Remove(el)
	delete(s.entries, e.key)
	s.bytes -= e.size
}

// leader makes one caller the one that fetches key: it returns a done
// function for the leader, or waits (bounded by ctx) for the current
// leader and returns nil.
func (s *Source) leader(ctx context.Context, key string) (done func()) {
	s.mu.Lock()
	ch, busy := s.inflight[key]
	if !busy {
		ch = make(chan struct{})
		s.inflight[key] = ch
		s.mu.Unlock()
		return func() {
			s.mu.Lock()
			delete(s.inflight, key)
			s.mu.Unlock()
			close(ch)
		}
	}
	s.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
	return nil
}

// FindStudies answers from the cache when the same query was answered
// less than TTL ago, else from the wrapped source (and keeps the answer).
// The studies returned share their attributes with other callers: they
// must not be modified (the slice itself is the caller's).
func (s *Source) FindStudies(ctx context.Context, q imagesource.Query) ([]imagesource.Study, error) {
	key := searchKey(q)
	for attempt := 0; ; attempt++ {
		if e := s.get(key); e != nil {
			s.hits.Add(1)
			return slices.Clone(e.studies), nil
		}
		if attempt > 0 {
			break
		}
		if done := s.leader(ctx, key); done != nil {
			defer done()
			break
		}
	}
	s.misses.Add(1)
	fetched := s.now()
	studies, err := s.inner.FindStudies(ctx, q)
	if err != nil {
		return nil, err
	}
	size, err := json.Marshal(studies)
	if err == nil {
		kept := slices.Clone(studies)
		if kept == nil {
			kept = []imagesource.Study{}
		}
		s.put(&entry{key: key, size: int64(len(size)), fetched: fetched, checked: fetched, studies: kept})
	}
	return studies, nil
}

// searchKey is everything a query holds (every field, so that a field
// added later, such as a scope restriction, partitions the cache too), the
// lists order-independent.
func searchKey(q imagesource.Query) string {
	q.PatientIDs = slices.Clone(q.PatientIDs)
	slices.Sort(q.PatientIDs)
	q.StudyUIDs = slices.Clone(q.StudyUIDs)
	slices.Sort(q.StudyUIDs)
	b, err := json.Marshal(q)
	if err != nil {
		panic(fmt.Sprintf("metacache: a query that does not encode: %v", err)) // plain data: cannot happen
	}
	return "search\x00" + string(b)
}

// metadataKey is the WADO-RS path and everything else the request's
// Retrieval holds but its public base (which the cache fills in when
// serving): a request with other PACS keys or another restriction (a
// field added later) has entries of its own.
func metadataKey(req imagesource.Retrieval) string {
	path := req.Path.String()
	req.PublicBase = ""
	req.PatientIDs = slices.Clone(req.PatientIDs)
	slices.Sort(req.PatientIDs)
	b, err := json.Marshal(req)
	if err != nil {
		panic(fmt.Sprintf("metacache: a retrieval that does not encode: %v", err)) // plain data: cannot happen
	}
	return "metadata\x00" + path + "\x00" + string(b)
}

// Retrieve answers WADO-RS metadata requests from the cache when it can
// (see the package documentation) and passes every other request to the
// wrapped source.
func (s *Source) Retrieve(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	if req.Path.Resource != wadopath.Metadata || !acceptsJSON(r.Header) ||
		(r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return s.inner.Retrieve(w, r, req)
	}
	base, err := checkBase(req.PublicBase)
	if err != nil {
		return s.inner.Retrieve(w, r, req) // the source refuses it with its own error
	}
	key := metadataKey(req)
	for attempt := 0; ; attempt++ {
		if e := s.get(key); e != nil {
			served, err := s.serveEntry(w, r, req, base, e)
			if served || err != nil {
				return err
			}
		}
		if attempt > 0 {
			break
		}
		if done := s.leader(r.Context(), key); done != nil {
			defer done()
			break
		}
	}
	s.misses.Add(1)
	if r.Method == http.MethodHead {
		return s.inner.Retrieve(w, r, req)
	}
	return s.fill(w, r, req, base, key)
}

// serveEntry serves e when it may go to this request and is current
// (revalidating it past TTL). served false: the caller fetches instead.
func (s *Source) serveEntry(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval, base string, e *entry) (served bool, err error) {
	if e.studyUID != req.StudyUID {
		return false, nil
	}
	for _, pid := range e.patientIDs {
		if err := req.CheckObject([]string{e.studyUID}, []string{pid}); err != nil {
			// The source would refuse the same data set for this
			// request: let it, so the refusal and its log are the same.
			return false, nil
		}
	}
	now := s.now()
	s.mu.Lock()
	checked := e.checked
	s.mu.Unlock()
	if now.Sub(checked) >= s.cfg.TTL {
		if s.versioner == nil {
			s.drop(e)
			return false, nil
		}
		v, err := s.versioner.StudyVersion(r.Context(), e.studyUID)
		if err != nil || v != e.version {
			s.drop(e)
			return false, nil
		}
		s.touch(e, now)
		s.revalidations.Add(1)
	}
	s.hits.Add(1)
	return true, send(w, r, base, e)
}

// fill asks the wrapped source for the answer under the placeholder base,
// keeps it when it is a checked metadata answer, and serves it.
func (s *Source) fill(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval, base, key string) error {
	fetched := s.now()
	var version string
	if s.versioner != nil {
		// Asked before the fetch: an instance added in between makes the
		// entry look old at the next revalidation, never new.
		v, err := s.versioner.StudyVersion(r.Context(), req.StudyUID)
		if err != nil {
			return s.inner.Retrieve(w, r, req)
		}
		version = v
	}
	rec := &recorder{header: http.Header{}}
	inReq := req
	inReq.PublicBase = s.placeholder
	r2 := r.Clone(r.Context())
	r2.Method = http.MethodGet
	r2.Header.Del("If-None-Match")
	r2.Header.Del("If-Modified-Since")
	if err := s.inner.Retrieve(rec, r2, inReq); err != nil {
		return err
	}
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	ct := rec.header.Get("Content-Type")
	e := &entry{key: key, fetched: fetched, checked: fetched, studyUID: req.StudyUID,
		body: rec.body.Bytes(), contentType: ct, version: version}
	if rec.status != http.StatusOK || !strings.Contains(strings.ToLower(ct), "json") || e.index(s.placeholder) != nil {
		return rec.replay(w, r, s.placeholder, base)
	}
	s.put(e)
	return send(w, r, base, e)
}

// send writes e under base, with its ETag; 304 when the request's
// If-None-Match names it.
func send(w http.ResponseWriter, r *http.Request, base string, e *entry) error {
	etag := entityTag(e, base)
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", "private, no-cache")
	if matchesETag(r.Header.Values("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Type", e.contentType)
	h.Set("Content-Length", strconv.Itoa(e.renderedLen(base)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	if err := e.writeTo(w, base); err != nil {
		return fmt.Errorf("metacache: sending metadata: %w", err)
	}
	return nil
}

// index records what serving e needs: the distinct PatientIDs and
// StudyInstanceUIDs of its data sets (which the source checked), the
// placeholder's offsets, the size and the checksum. An answer it cannot
// read, or that holds no data set, is not kept.
func (e *entry) index(placeholder string) error {
	var sets []struct {
		Study   *element `json:"0020000D"`
		Patient *element `json:"00100020"`
	}
	if err := json.Unmarshal(e.body, &sets); err != nil {
		return fmt.Errorf("metacache: metadata is not DICOM JSON: %w", err)
	}
	if len(sets) == 0 {
		return errors.New("metacache: empty metadata is not kept")
	}
	for _, ds := range sets {
		if ds.Study == nil || len(ds.Study.Value) != 1 || strings.TrimRight(ds.Study.Value[0], " \x00") != e.studyUID {
			return errors.New("metacache: a data set of another study")
		}
		pid := ""
		if ds.Patient != nil && len(ds.Patient.Value) == 1 {
			pid = ds.Patient.Value[0]
		}
		if !slices.Contains(e.patientIDs, pid) {
			e.patientIDs = append(e.patientIDs, pid)
		}
	}
	needle := []byte(placeholder + "/")
	for at := 0; ; {
		i := bytes.Index(e.body[at:], needle)
		if i < 0 {
			break
		}
		e.holes = append(e.holes, at+i)
		at += i + len(needle)
	}
	e.holes = slices.Clip(e.holes)
	e.phLen = len(placeholder)
	e.body = bytes.Clone(e.body)
	e.size = int64(len(e.body)) + int64(len(e.holes))*8
	for _, p := range e.patientIDs {
		e.size += int64(len(p))
	}
	e.sum = sha256.Sum256(e.body)
	return nil
}

// element is a DICOM JSON element whose values are strings.
type element struct {
	Value []string `json:"Value"`
}

// renderedLen is the length of e rendered under base.
func (e *entry) renderedLen(base string) int {
	return len(e.body) + len(e.holes)*(len(base)-e.phLen)
}

// chunkPool holds the buffers writeTo gathers an answer in.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// writeTo sends e rendered under base in chunks of at most 64 KiB, without
// building the whole answer.
func (e *entry) writeTo(w http.ResponseWriter, base string) error {
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := (*bp)[:0]
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		_, err := w.Write(buf)
		buf = buf[:0]
		return err
	}
	add := func(p []byte) error {
		for len(p) > 0 {
			n := min(len(p), cap(buf)-len(buf))
			buf = append(buf, p[:n]...)
			p = p[n:]
			if len(buf) == cap(buf) {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return nil
	}
	at, baseBytes := 0, []byte(base)
	for _, h := range e.holes {
		if err := add(e.body[at:h]); err != nil {
			return err
		}
		if err := add(baseBytes); err != nil {
			return err
		}
		at = h + e.phLen
	}
	if err := add(e.body[at:]); err != nil {
		return err
	}
	return flush()
}

// entityTag is the ETag of e served under base.
func entityTag(e *entry, base string) string {
	h := sha256.New()
	h.Write(e.sum[:])
	h.Write([]byte(base))
	return `"m` + hex.EncodeToString(h.Sum(nil)[:16]) + `"`
}

// matchesETag reports whether an If-None-Match header lists etag (or *).
// Weak comparison, as RFC 9110 asks for If-None-Match.
func matchesETag(values []string, etag string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
			if t == "*" || t == etag {
				return true
			}
		}
	}
	return false
}

// acceptsJSON reports whether the request takes DICOM JSON (no Accept, or
// one naming JSON or a wildcard); other metadata requests go to the source.
func acceptsJSON(h http.Header) bool {
	vs := h.Values("Accept")
	if len(vs) == 0 {
		return true
	}
	for _, v := range vs {
		for _, part := range strings.Split(v, ",") {
			mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
			switch strings.ToLower(strings.TrimSpace(mt)) {
			case "application/dicom+json", "application/json", "*/*", "application/*":
				return true
			}
		}
	}
	return false
}

// checkBase holds the request's public base to the rule the sources hold
// it to (a plain absolute URL that cannot break out of a JSON string) and
// drops a trailing slash.
func checkBase(s string) (string, error) {
	s = strings.TrimRight(s, "/")
	if !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
		return "", errors.New("not an absolute URL")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' {
			return "", errors.New("not a plain URL")
		}
	}
	return s, nil
}

// recorder gathers the wrapped source's answer.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (rc *recorder) Header() http.Header { return rc.header }

func (rc *recorder) WriteHeader(code int) {
	if rc.status == 0 {
		rc.status = code
	}
}

func (rc *recorder) Write(p []byte) (int, error) {
	if rc.status == 0 {
		rc.status = http.StatusOK
	}
	return rc.body.Write(p)
}

// Flush does nothing: the answer is sent whole later.
func (rc *recorder) Flush() {}

// replay sends an answer that is not kept as the source gave it, with the
// request's base in place of the placeholder.
func (rc *recorder) replay(w http.ResponseWriter, r *http.Request, placeholder, base string) error {
	body := bytes.ReplaceAll(rc.body.Bytes(), []byte(placeholder+"/"), []byte(base+"/"))
	for k, vs := range rc.header {
		if k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			w.Header().Add(k, strings.ReplaceAll(v, placeholder+"/", base+"/"))
		}
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rc.status)
	if r.Method == http.MethodHead || rc.status == http.StatusNotModified || rc.status == http.StatusNoContent {
		return nil
	}
	if _, err := w.Write(body); err != nil {
		return fmt.Errorf("metacache: sending metadata: %w", err)
	}
	return nil
}

// Interface guards
var (
	_ imagesource.Source  = (*Source)(nil)
	_ http.ResponseWriter = (*recorder)(nil)
	_ http.Flusher        = (*recorder)(nil)
)
