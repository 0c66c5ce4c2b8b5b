//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package dimse

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// holderEnv, when set to a directory, turns the test binary into a cache
// holder: a gateway stand-in that opens a source with that cache_dir,
// stores a file in its cache, prints the cache directory and waits (until
// its stdin closes, or it is killed).
const holderEnv = "SMART_IMAGING_DIMSE_CACHE_HOLDER"

// cachedInstance stands for the bytes of a cached instance.
const cachedInstance = "not really an instance, but as private"

func TestMain(m *testing.M) {
	if dir := os.Getenv(holderEnv); dir != "" {
		os.Exit(holdCache(dir))
	}
	os.Exit(m.Run())
}

func holdCache(parent string) int {
	s, err := New(Config{Addr: "127.0.0.1:1", CalledAE: pacsAE, CallingAE: ourAE, CacheDir: parent}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := storeFake(s.CacheDir()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(s.CacheDir())
	bufio.NewReader(os.Stdin).ReadString(0) // until the test closes stdin or kills us
	s.Close()
	return 0
}

// storeFake puts a file in a cache directory the way a retrieve does (a
// directory per study, files 0600).
func storeFake(root string) error {
	study := filepath.Join(root, "study")
	if err := os.Mkdir(study, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(study, "instance"), []byte(cachedInstance), 0o600)
}

// startHolder starts a cache holder process and returns its cache
// directory. The process is killed at the end of the test.
func startHolder(t *testing.T, parent string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holderEnv+"="+parent)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	select {
	case dir := <-line:
		if dir == "" {
			t.Fatal("the cache holder process printed no cache directory")
		}
		return cmd, dir
	case <-time.After(30 * time.Second):
		t.Fatal("the cache holder process did not open its cache within 30s")
		return nil, ""
	}
}

func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no deferred cleanup runs
		t.Fatal(err)
	}
	cmd.Wait()
}

func mustExist(t *testing.T, path, what string) {
	t.Helper()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func mustBeGone(t *testing.T, path, what string) {
	t.Helper()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("%s still there (%v)", what, err)
	}
}

func TestCacheLeftByAKilledGatewayIsRemovedAtTheNextStart(t *testing.T) {
	parent := t.TempDir()
	instance := func(root string) string { return filepath.Join(root, "study", "instance") }

	// A live source of this process (another route, or the old config
	// during a reload) and two gateway processes share the cache_dir.
	inProcess := newSource(t, "127.0.0.1:1", func(c *Config) { c.CacheDir = parent })
	if err := storeFake(inProcess.CacheDir()); err != nil {
		t.Fatal(err)
	}
	killed, killedDir := startHolder(t, parent)
	live, liveDir := startHolder(t, parent)
	kill(t, killed)
	mustExist(t, instance(killedDir), "the killed gateway's cached file (the kill must leave it behind)")

	// Things under cache_dir that are not a source's cache directory.
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(parent, cacheDirPrefix+"link")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(parent, "other-cache")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	var foreign string
	if os.Getuid() == 0 { // only root can make a directory another user owns
		foreign = filepath.Join(parent, cacheDirPrefix+"of-nobody")
		if err := os.Mkdir(foreign, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(foreign, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}

	core, logs := observer.New(zapcore.InfoLevel)
	next, err := New(Config{Addr: "127.0.0.1:1", CalledAE: pacsAE, CallingAE: ourAE, CacheDir: parent}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })

	mustBeGone(t, killedDir, "the killed gateway's cache directory")
	mustExist(t, instance(liveDir), "the live gateway process's cached file")
	mustExist(t, instance(inProcess.CacheDir()), "the live source's cached file")
	mustExist(t, next.CacheDir(), "the new source's own cache directory")
	mustExist(t, link, "the symlink named like a cache directory")
	mustExist(t, filepath.Join(outside, "keep"), "the file behind the symlink")
	mustExist(t, other, "a directory not named like a cache directory")
	if foreign != "" {
		mustExist(t, foreign, "a cache directory of another user")
	}

	removed := logs.FilterMessageSnippet("left by a gateway that is gone").All()
	if len(removed) != 1 {
		t.Fatalf("%d removal log entries, want 1: %v", len(removed), logs.All())
	}
	fields := removed[0].ContextMap()
	if fields["files"] != int64(1) || fields["bytes"] != int64(len(cachedInstance)) {
		t.Errorf("removal logged files=%v bytes=%v, want 1 and %d", fields["files"], fields["bytes"], len(cachedInstance))
	}
	if fields["dir"] != killedDir {
		t.Errorf("removal logged dir %v, want %s", fields["dir"], killedDir)
	}

	// Once the live gateway is killed too, its directory was kept only
	// for its lock: the next start removes it, and the live sources'
	// directories still stay.
	kill(t, live)
	again, err := New(Config{Addr: "127.0.0.1:1", CalledAE: pacsAE, CallingAE: ourAE, CacheDir: parent}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Close() })
	mustBeGone(t, liveDir, "the second killed gateway's cache directory")
	mustExist(t, instance(inProcess.CacheDir()), "the live source's cached file")
	mustExist(t, next.CacheDir(), "the other live source's cache directory")

	// A source that closes removes its directory and its lock with it.
	inProcess.Close()
	mustBeGone(t, inProcess.CacheDir(), "a closed source's cache directory")
}
