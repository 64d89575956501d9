//go:build darwin || freebsd || netbsd || openbsd

package graceful

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// credSpace is 0: these systems add credentials to a message only on a
// socket that asked for them (LOCAL_CREDS), which this library never does.
const credSpace = 0

// sysRecvmsg and sysSendmsg tell invoke which call to make: it calls
// functions, not system call numbers.
const (
	sysRecvmsg = iota + 1
	sysSendmsg
)

// invoke makes the system call that setMsg set up, through x/sys/unix's
// wrappers: macOS, and OpenBSD since 7.5 removed syscall(2), take system
// calls from libc only, which the wrappers call there.
func (m *msgConn) invoke(fd uintptr) (uintptr, syscall.Errno) {
	p := unsafe.Slice(m.iov.Base, m.iov.Len)
	oob := unsafe.Slice(m.msg.Control, m.msg.Controllen)
	var n int
	var err error
	if m.trap == sysSendmsg {
		n, err = unix.SendmsgN(int(fd), p, oob, nil, int(m.flags))
	} else {
		var oobn, flags int
		if cmsgCloexec {
			n, oobn, flags, _, err = unix.Recvmsg(int(fd), p, oob, int(m.flags))
		} else {
			n, oobn, flags, err = recvmsgForkLocked(int(fd), p, oob, int(m.flags))
		}
		m.msg.SetControllen(oobn)
		m.msg.Flags = int32(flags)
	}
	if err == nil {
		return uintptr(n), 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return 0, e
	}
	return 0, syscall.EINVAL // the wrappers fail with errnos only
}

// recvmsgForkLocked receives where recvmsg cannot install descriptors
// close-on-exec (macOS has no MSG_CMSG_CLOEXEC), and marks them right
// after. It holds syscall.ForkLock for reading meanwhile, as the net
// package does around socket(2) there, so that no child that os/exec or
// syscall.ForkExec starts inherits them; a process forked by other means
// (from C, or by a raw system call) between the two calls still can. The
// receive does not wait (MSG_DONTWAIT) even if the descriptor is in
// blocking mode, so the lock is never held for long.
func recvmsgForkLocked(fd int, p, oob []byte, flags int) (n, oobn, recvflags int, err error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	n, oobn, recvflags, _, err = unix.Recvmsg(fd, p, oob, flags|unix.MSG_DONTWAIT)
	if oobn > 0 {
		var buf [maxBatch]int32
		for _, r := range appendRights(buf[:0], oob[:oobn]) {
			unix.CloseOnExec(int(r))
		}
	}
	return n, oobn, recvflags, err
}
