package target

import "syscall"

// sysProcAttr makes the kernel kill kpush if the generator dies, so an
// interrupted benchmark leaves nothing running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
