//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package dimse

import (
	"os"

	"go.uber.org/zap"
)

// cacheDirPrefix names the directories a source makes under cache_dir.
const cacheDirPrefix = "smart-imaging-dimse-"

// makeCacheDir makes a new private cache directory under parent. On this
// platform there is no flock(2), so the directory is not locked and
// directories left by a killed gateway are not found at the next start
// (removeStaleCacheDirs does nothing): remove them by hand, or give each
// gateway a cache_dir that is cleared when it starts.
func makeCacheDir(parent string) (string, *os.File, error) {
	root, err := os.MkdirTemp(parent, cacheDirPrefix+"*")
	return root, nil, err
}

// removeStaleCacheDirs does nothing on this platform: without a lock a
// directory left by a dead gateway cannot be told from one in use by a
// live one, and removing a live one would break its transfers.
func removeStaleCacheDirs(string, *zap.Logger) {}
