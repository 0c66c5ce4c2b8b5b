//go:build !linux

package main

import "syscall"

// childSysProcAttr: no parent-death signal outside Linux; the gateway is
// stopped explicitly.
func childSysProcAttr() *syscall.SysProcAttr { return nil }
