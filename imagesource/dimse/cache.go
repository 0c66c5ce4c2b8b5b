package dimse

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/imagesource/folder"

	"github.com/smart-imaging/smart_imaging/pacskey"
)

// The cache holds the instances of retrieved studies in a private
// directory (0700, files 0600) made under the configured cache_dir and
// locked for its life (cachedir_flock.go), so that the directories a killed
// gateway left behind are found and removed when a source next starts
// there, and never one a live source holds. Every
// byte written is reserved first, so the files on disk never exceed the
// limit: a reservation evicts the least recently used complete studies
// nobody is reading, and when that is not enough the study being received
// turns transient: it is no longer shared or kept, each file is deleted as
// soon as every reader streaming it has sent it, and its receipt waits
// (bounded) for room. One lock guards all of it; the work under it is
// small.

var (
	errClosed     = errors.New("dimse image source: closed")
	errTooLarge   = errors.New("the study is larger than the cache (cache_size) and was streamed through without being kept")
	errCacheFull  = errors.New("the cache stayed full: no room for the instance")
	errHugeObject = errors.New("an instance is larger than the whole cache (cache_size)")
)

type cache struct {
	root     string
	lock     *os.File // holds root's flock(2) until root is removed (nil where there is none)
	limit    int64
	ttl      time.Duration
	roomWait time.Duration
	log      *zap.Logger

	base   context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	used    int64
	peak    int64             // the most bytes ever reserved at once
	studies map[string]*entry // shareable entries by study UID
	all     map[*entry]bool
	space   chan struct{} // closed (and replaced) when room may have been freed
	closed  bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// entry is one retrieve of one study and the files it received.
type entry struct {
	c            *cache
	uid          string
	dir          string
	keys         []pacskey.PatientKey
	unrestricted bool
	ctx          context.Context
	cancel       context.CancelFunc

	// Guarded by c.mu.
	files     []*file
	seen      map[string]bool
	done      bool
	err       error
	transient bool
	refs      int
	cursors   map[*cursor]bool
	lastUse   time.Time
	bytes     int64
	changed   chan struct{}
	patient   string // PatientID "\x00" IssuerOfPatientID of the first accepted instance
	patientID string
	refused   int
	removed   bool

	srcOnce sync.Once
	src     *folder.Source
	srcErr  error
}

// file is one received instance.
type file struct {
	path, seriesUID, sopUID, patientID string
	size                               int64
	removed                            bool
}

// cursor is a streaming reader's position in an entry's files.
type cursor struct{ next int }

func newCache(parent string, limit int64, ttl, wait time.Duration, log *zap.Logger) (*cache, error) {
	if parent == "" {
		parent = os.TempDir()
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("dimse image source: cache_dir: %w", err)
	}
	removeStaleCacheDirs(parent, log)
	root, lock, err := makeCacheDir(parent)
	if err != nil {
		return nil, fmt.Errorf("dimse image source: cache_dir: %w", err)
	}
	if err := os.Chmod(root, 0o700); err != nil {
		os.RemoveAll(root)
		closeLock(lock)
		return nil, fmt.Errorf("dimse image source: cache_dir: %w", err)
	}
	base, cancel := context.WithCancel(context.Background())
	c := &cache{root: root, lock: lock, limit: limit, ttl: ttl, roomWait: wait, log: log, base: base, cancel: cancel,
		studies: map[string]*entry{}, all: map[*entry]bool{}, space: make(chan struct{}), stop: make(chan struct{})}
	c.wg.Add(1)
	go c.janitor()
	return c, nil
}

// close interrupts every retrieve and removes the cache directory.
func (c *cache) close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.cancel()
	close(c.stop)
	for e := range c.all {
		c.broadcastLocked(e)
	}
	c.signalSpaceLocked()
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	c.all, c.studies, c.used = map[*entry]bool{}, map[string]*entry{}, 0
	c.mu.Unlock()
	// The lock is released only after the directory is gone, so no
	// other gateway's sweep races this removal.
	err := os.RemoveAll(c.root)
	closeLock(c.lock)
	if err != nil {
		return fmt.Errorf("dimse image source: remove cache: %w", err)
	}
	return nil
}

// closeLock releases a cache directory's lock, if it has one.
func closeLock(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// janitor removes studies unused for longer than the TTL.
func (c *cache) janitor() {
	defer c.wg.Done()
	every := min(max(c.ttl/4, 100*time.Millisecond), 30*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			c.mu.Lock()
			for e := range c.all {
				if e.done && e.refs == 0 && now.Sub(e.lastUse) >= c.ttl {
					c.removeLocked(e)
				}
			}
			c.mu.Unlock()
		}
	}
}

// acquire returns the shared entry of a study, or a new one with started
// true (the caller then runs the retrieve). Either way the caller holds a
// reference it gives back with release.
func (c *cache) acquire(uid string, keys []pacskey.PatientKey, unrestricted bool) (*entry, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, false, errClosed
	}
	if e := c.studies[uid]; e != nil && e.err == nil && !e.transient {
		e.refs++
		e.lastUse = time.Now()
		return e, false, nil
	}
	dir, err := os.MkdirTemp(c.root, "study-*")
	if err != nil {
		return nil, false, fmt.Errorf("dimse image source: cache: %w", err)
	}
	ctx, cancel := context.WithCancel(c.base)
	e := &entry{c: c, uid: uid, dir: dir, keys: slices.Clone(keys), unrestricted: unrestricted, ctx: ctx, cancel: cancel,
		seen: map[string]bool{}, refs: 1, cursors: map[*cursor]bool{}, lastUse: time.Now(), changed: make(chan struct{})}
	c.studies[uid] = e
	c.all[e] = true
	return e, true, nil
}

// release gives back a reference. An entry that will not be reused goes
// when its last reader does (a transient retrieve still running is
// cancelled).
func (c *cache) release(e *entry, cur *cursor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	e.lastUse = time.Now()
	if cur != nil {
		delete(e.cursors, cur)
		if e.transient {
			c.freePassedLocked(e)
		}
	}
	if e.refs > 0 {
		return
	}
	switch {
	case e.transient && !e.done:
		e.cancel()
	case e.done && (e.transient || e.err != nil || len(e.files) == 0):
		c.removeLocked(e)
	}
}

// finish records the end of an entry's retrieve.
func (c *cache) finish(e *entry, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.done, e.err = true, err
	e.cancel()
	if err != nil || len(e.files) == 0 {
		c.unshareLocked(e)
	}
	c.broadcastLocked(e)
	if e.refs == 0 && (e.transient || err != nil || len(e.files) == 0) {
		c.removeLocked(e)
	}
}

func (c *cache) unshareLocked(e *entry) {
	if c.studies[e.uid] == e {
		delete(c.studies, e.uid)
	}
}

func (c *cache) broadcastLocked(e *entry) {
	close(e.changed)
	e.changed = make(chan struct{})
}

func (c *cache) signalSpaceLocked() {
	close(c.space)
	c.space = make(chan struct{})
}

// removeLocked deletes an entry's files and forgets it.
func (c *cache) removeLocked(e *entry) {
	if e.removed {
		return
	}
	e.removed = true
	e.cancel()
	c.unshareLocked(e)
	delete(c.all, e)
	if err := os.RemoveAll(e.dir); err != nil {
		c.log.Warn("dimse image source: remove cached study", zap.Error(err))
	}
	c.used -= e.bytes
	e.bytes = 0
	for _, f := range e.files {
		f.removed = true
	}
	c.signalSpaceLocked()
}

// evictLRULocked removes the least recently used complete entry nobody
// reads, other than keep; it reports whether it removed one.
func (c *cache) evictLRULocked(keep *entry) bool {
	var victim *entry
	for e := range c.all {
		if e == keep || !e.done || e.refs > 0 || e.bytes == 0 {
			continue
		}
		if victim == nil || e.lastUse.Before(victim.lastUse) {
			victim = e
		}
	}
	if victim == nil {
		return false
	}
	c.removeLocked(victim)
	return true
}

// makeTransientLocked stops keeping e: it is no longer shared, waiting
// readers that need the whole study are told, and files every streaming
// reader has passed are deleted.
func (c *cache) makeTransientLocked(e *entry) {
	e.transient = true
	c.unshareLocked(e)
	c.freePassedLocked(e)
	c.broadcastLocked(e)
	c.log.Info("dimse image source: study larger than the room in the cache; streaming it through", zap.String("study", e.uid))
}

// freePassedLocked deletes the files of a transient entry that every
// streaming reader has sent.
func (c *cache) freePassedLocked(e *entry) {
	upto := len(e.files)
	for cur := range e.cursors {
		upto = min(upto, cur.next)
	}
	freed := false
	for _, f := range e.files[:upto] {
		if f.removed {
			continue
		}
		f.removed = true
		os.Remove(f.path)
		c.used -= f.size
		e.bytes -= f.size
		freed = true
	}
	if freed {
		c.signalSpaceLocked()
	}
}

// reserve makes room for n more bytes of e, waiting (bounded by the
// cache's wait and ctx) when nothing can be evicted.
func (c *cache) reserve(ctx context.Context, e *entry, n int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var timer <-chan time.Time
	for {
		if c.closed || e.removed {
			return errClosed
		}
		if c.used+n <= c.limit {
			c.used += n
			c.peak = max(c.peak, c.used)
			e.bytes += n
			return nil
		}
		if c.evictLRULocked(e) {
			continue
		}
		if n > c.limit {
			return errHugeObject
		}
		if !e.transient {
			c.makeTransientLocked(e)
			continue
		}
		if timer == nil {
			timer = time.After(c.roomWait)
		}
		ch := c.space
		c.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctx.Err()
		case <-timer:
			err = errCacheFull
		}
		c.mu.Lock()
		if err != nil {
			return err
		}
	}
}

// unreserve gives back n reserved bytes of e (a dropped instance).
func (c *cache) unreserve(e *entry, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.removed {
		return
	}
	c.used -= n
	e.bytes -= n
	c.signalSpaceLocked()
}

// Usage is the state of a source's cache.
type Usage struct {
	// Bytes are reserved now (files on disk and instances arriving); Peak
	// is the most ever reserved at once; Studies are the entries held.
	Bytes, Peak int64
	Studies     int
}

func (c *cache) usage() Usage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Usage{Bytes: c.used, Peak: c.peak, Studies: len(c.all)}
}

// allowPatient checks an arriving instance's patient against the entry:
// one of the requester's keys (unless unrestricted) and the same patient
// as every instance before it.
func (c *cache) allowPatient(e *entry, patientID, issuer string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !e.unrestricted && !slices.Contains(e.keys, pacskey.PatientKey(patientID)) {
		return false
	}
	key := patientID + "\x00" + issuer
	if e.patient == "" {
		e.patient, e.patientID = key, patientID
		return true
	}
	return e.patient == key
}

// add records a stored instance; it reports false for a duplicate.
func (c *cache) add(e *entry, f *file) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.seen[f.sopUID] || e.removed {
		return false
	}
	e.seen[f.sopUID] = true
	e.files = append(e.files, f)
	c.broadcastLocked(e)
	return true
}

func (c *cache) refuse(e *entry) {
	c.mu.Lock()
	e.refused++
	c.mu.Unlock()
}

// attach registers a streaming reader at the first file.
func (c *cache) attach(e *entry) *cursor {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := &cursor{}
	e.cursors[cur] = true
	return cur
}

// next waits for the reader's next file: it returns the file, or nil when
// the retrieve ended (with its error).
func (c *cache) next(ctx context.Context, e *entry, cur *cursor) (*file, error) {
	for {
		c.mu.Lock()
		if cur.next < len(e.files) {
			f := e.files[cur.next]
			c.mu.Unlock()
			return f, nil
		}
		if e.done || e.removed {
			err := e.err
			if err == nil && e.removed && !e.done {
				err = errClosed
			}
			c.mu.Unlock()
			return nil, err
		}
		ch := e.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// advance moves the reader past the file it sent.
func (c *cache) advance(e *entry, cur *cursor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur.next++
	if e.transient {
		c.freePassedLocked(e)
	}
}

// wait blocks until e's retrieve ended and returns its error; a transient
// entry is errTooLarge at once.
func (c *cache) wait(ctx context.Context, e *entry) error {
	for {
		c.mu.Lock()
		switch {
		case e.transient:
			c.mu.Unlock()
			return errTooLarge
		case e.done:
			err := e.err
			c.mu.Unlock()
			return err
		case e.removed:
			c.mu.Unlock()
			return errClosed
		}
		ch := e.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// source is the folder source over a complete entry's directory.
func (e *entry) source() (*folder.Source, error) {
	e.srcOnce.Do(func() {
		e.src, e.srcErr = folder.Open(e.dir, nil)
	})
	return e.src, e.srcErr
}

// filePath is where an instance is stored.
func (e *entry) filePath(sop string) string {
	return filepath.Join(e.dir, sop+".dcm")
}
