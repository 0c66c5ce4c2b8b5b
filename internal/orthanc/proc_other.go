//go:build !unix

package orthanc

import (
	"errors"
	"os"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr { return nil }

func terminate(p *os.Process) error { return p.Kill() }
func suspend(*os.Process) error     { return errors.New("orthanc: suspend needs a unix system") }
func resume(*os.Process) error      { return nil }
