//go:build unix

package orthanc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

func terminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }
func resume(p *os.Process) error    { return p.Signal(syscall.SIGCONT) }

// suspend stops p and returns once every one of its threads has stopped.
// kill(2) returns before the stop reaches threads running on another CPU:
// a request sent right after it could still be answered by a worker
// thread (seen on a loaded 2-core machine). Where /proc exists, the
// threads' states are read until all are stopped (bounded, 5 s).
func suspend(p *os.Process) error {
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	tasks := fmt.Sprintf("/proc/%d/task", p.Pid)
	if _, err := os.Stat(tasks); err != nil {
		return nil // no /proc here: nothing to wait on
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		stopped, err := allStopped(tasks)
		if err != nil || stopped {
			return err
		}
		if time.Now().After(deadline) {
			return errors.New("orthanc: suspend: threads still running 5s after SIGSTOP")
		}
		time.Sleep(time.Millisecond) // poll interval of a condition wait
	}
}

// allStopped reports whether every thread under /proc/PID/task is in state
// T (stopped) or t (traced).
func allStopped(tasks string) (bool, error) {
	stats, err := filepath.Glob(filepath.Join(tasks, "*", "stat"))
	if err != nil || len(stats) == 0 {
		return false, fmt.Errorf("orthanc: suspend: read %s: %v", tasks, err)
	}
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			return false, fmt.Errorf("orthanc: suspend: %w", err)
		}
		// pid (comm) state …: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			return false, fmt.Errorf("orthanc: suspend: unreadable %s", f)
		}
		if st := b[i+2]; st != 'T' && st != 't' {
			return false, nil
		}
	}
	return true, nil
}
