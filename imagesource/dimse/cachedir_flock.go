//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package dimse

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"go.uber.org/zap"
)

// A cache directory is locked for its whole life: the directory itself is
// opened and locked with flock(2) (exclusive, non-blocking) right after it
// is made, and unlocked only after it is removed. flock locks belong to an
// open file description, so they conflict between two sources of one
// process (two routes, or the old and new config during a reload) as well
// as between processes, and the kernel drops them when the process dies,
// however it dies. A directory whose lock can be taken is therefore one
// nobody uses any more: a gateway killed with SIGKILL, crashed or cut off
// by a power loss left it behind, with patient images in it.
//
// Locking the directory rather than a file in it leaves no window in which
// a live cache has no lock to take: a sweeper that locks a directory
// between its creation and its owner's lock removes an empty directory,
// and the owner, finding its lock refused or its directory gone, makes
// another one.

// cacheDirPrefix names the directories a source makes under cache_dir;
// only those are ever swept.
const cacheDirPrefix = "smart-imaging-dimse-"

// makeCacheDir makes and locks a new private cache directory under parent.
// The returned file holds the lock; close it only after the directory is
// removed.
func makeCacheDir(parent string) (string, *os.File, error) {
	var lastErr error
	for range 5 {
		root, err := os.MkdirTemp(parent, cacheDirPrefix+"*")
		if err != nil {
			return "", nil, err
		}
		lock, err := lockDir(root)
		if err != nil {
			// Locked or removed by another gateway's sweep in the instant
			// between the mkdir and the lock: it was empty; make another.
			lastErr = err
			continue
		}
		return root, lock, nil
	}
	return "", nil, fmt.Errorf("lock a new cache directory: %w", lastErr)
}

var errNotLockable = errors.New("not a directory of ours that can be locked")

// lockDir opens path (never through a symlink) and takes its exclusive
// lock without waiting. It fails when another source holds the lock, or
// when path no longer names the directory locked (removed or replaced).
func lockDir(path string) (*os.File, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, &fs.PathError{Op: "flock", Path: path, Err: err}
	}
	held, err1 := f.Stat()
	named, err2 := os.Lstat(path)
	if err1 != nil || err2 != nil || !os.SameFile(held, named) || !owned(held) {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, errNotLockable)
	}
	return f, nil
}

// owned reports whether fi is a directory owned by this process's user
// with at least one link (not already removed).
func owned(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && fi.IsDir() && st.Nlink > 0 && int(st.Uid) == os.Getuid()
}

// removeStaleCacheDirs removes the cache directories under parent that no
// live source holds: each whose lock it can take. It touches only
// directories named smart-imaging-dimse-* and owned by this user, never
// follows a symlink, and logs how much it removed (never a file name: the
// files are named by UIDs). Failures are logged, not returned: a start is
// not refused for another process's leftovers.
func removeStaleCacheDirs(parent string, log *zap.Logger) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		log.Warn("dimse image source: look for stale cache directories", zap.String("cache_dir", parent), zap.Error(err))
		return
	}
	for _, de := range entries {
		// The type comes from the directory entry (lstat): a symlink is
		// not a directory here.
		if !strings.HasPrefix(de.Name(), cacheDirPrefix) || de.Type() != fs.ModeDir {
			continue
		}
		path := filepath.Join(parent, de.Name())
		lock, err := lockDir(path)
		if err != nil {
			continue // in use by a live source, someone else's, or gone
		}
		files, bytes := countFiles(path)
		err = os.RemoveAll(path)
		lock.Close()
		if err != nil {
			log.Warn("dimse image source: remove a stale cache directory", zap.String("dir", path), zap.Error(err))
			continue
		}
		log.Info("dimse image source: removed a cache directory left by a gateway that is gone",
			zap.String("dir", path), zap.Int("files", files), zap.Int64("bytes", bytes))
	}
}

// countFiles counts the regular files under root and their bytes, without
// following symlinks.
func countFiles(root string) (files int, bytes int64) {
	filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			files++
			bytes += fi.Size()
		}
		return nil
	})
	return files, bytes
}
