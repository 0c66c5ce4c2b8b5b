package orthanc

import "syscall"

// sysProcAttr puts Orthanc in its own process group (a terminal's Ctrl-C
// does not reach it before Stop runs) and has the kernel kill it if the
// test process dies without calling Stop.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
