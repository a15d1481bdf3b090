//go:build !linux

package target

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
