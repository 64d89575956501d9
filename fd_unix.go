//go:build darwin || freebsd || linux || netbsd || openbsd

package graceful

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// fdSocket takes ownership of fd if it is a descriptor number, and returns
// it as a file if it is a socket that ok accepts by its type and whether it
// listens; otherwise it closes fd. A number the system calls' int cannot
// hold would reach the kernel truncated, naming another descriptor: it is
// rejected before anything is done with it.
func fdSocket(fd int, want string, ok func(typ int, listening bool) bool) (*os.File, error) {
	if fd < 0 || fd > 1<<31-1 {
		return nil, fmt.Errorf("graceful: invalid descriptor %d: %w", fd, unix.EBADF)
	}
	f := os.NewFile(uintptr(fd), "")
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	var listening int
	if err == nil {
		listening, err = acceptConn(fd, typ)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("graceful: descriptor %d: %w", fd, os.NewSyscallError("getsockopt", err))
	}
	if !ok(typ, listening != 0) {
		f.Close()
		return nil, fmt.Errorf("graceful: descriptor %d is %s, not %s", fd, socketKind(typ, listening != 0), want)
	}
	return f, nil
}

// socketKind describes a socket for an error.
func socketKind(typ int, listening bool) string {
	switch {
	case listening:
		return "a listening socket"
	case typ == unix.SOCK_STREAM:
		return "a stream socket"
	case typ == unix.SOCK_DGRAM:
		return "a datagram socket"
	case typ == unix.SOCK_SEQPACKET:
		return "a seqpacket socket"
	case typ == unix.SOCK_RAW:
		return "a raw socket"
	}
	return fmt.Sprintf("a socket of type %d", typ)
}

// dupObject returns a duplicate of obj's descriptor, close-on-exec. The
// descriptor is borrowed through SyscallConn (Fd would switch obj to
// blocking mode), for the fcntl call only: closing obj waits for such a
// borrow to end.
func dupObject(obj any) (int, error) {
	rc, err := rawConn(obj)
	if err != nil {
		return -1, err
	}
	var dup int
	var derr error
	err = rc.Control(func(fd uintptr) {
		// Above the standard descriptors, so that one closed by the
		// application is not reused for a socket that the runtime would
		// then write a crash report into.
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
	})
	if err != nil {
		return -1, fmt.Errorf("graceful: %w", err)
	}
	if derr != nil {
		return -1, fmt.Errorf("graceful: duplicating a descriptor to send: %w", os.NewSyscallError("fcntl", derr))
	}
	return dup, nil
}

// closeOnExec marks fd close-on-exec.
func closeOnExec(fd int) {
	unix.CloseOnExec(fd)
}

// socketID identifies the socket open as fd by its device and inode, "" if
// fd is not an open socket.
func socketID(fd int) string {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return ""
	}
	return strconv.FormatUint(uint64(st.Dev), 10) + ":" + strconv.FormatUint(uint64(st.Ino), 10)
}
