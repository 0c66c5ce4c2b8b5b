//go:build unix && !linux

package orthanc

import "syscall"

// sysProcAttr puts Orthanc in its own process group.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
