package main

import "syscall"

// childSysProcAttr puts the gateway in its own process group (a terminal's
// Ctrl-C reaches only this program, which then stops it) and has the
// kernel kill it if this program dies without stopping it.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
