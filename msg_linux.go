package graceful

import (
	"errors"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysRecvmsg and sysSendmsg are the system calls that invoke makes.
const (
	sysRecvmsg = unix.SYS_RECVMSG
	sysSendmsg = unix.SYS_SENDMSG
)

// invoke makes the system call that setMsg set up, directly: Linux keeps
// its system call numbers, and this way no call allocates.
func (m *msgConn) invoke(fd uintptr) (uintptr, syscall.Errno) {
	r, _, e := unix.Syscall(m.trap, fd, uintptr(unsafe.Pointer(&m.msg)), m.flags)
	return r, e
}

// recvFlags makes the kernel install received descriptors close-on-exec.
const recvFlags = unix.MSG_CMSG_CLOEXEC

// maxBatch is SCM_MAX_FD (include/net/scm.h), the most descriptors one
// sendmsg(2) carries.
const maxBatch = 253

// credSpace is room for the credentials that the kernel adds to a message
// on a socket with SO_PASSCRED, before any descriptors.
var credSpace = unix.CmsgSpace(unix.SizeofUcred)

// inFlightLimit reports whether sendmsg failed, sending nothing, because
// the user has as many descriptors in flight as its RLIMIT_NOFILE allows
// (ETOOMANYREFS, for users other than root).
func inFlightLimit(err error) bool {
	return errors.Is(err, unix.ETOOMANYREFS)
}
