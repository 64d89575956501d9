package graceful

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// streamSocket creates a Unix stream socket, then makes it close-on-exec
// and non-blocking: macOS has no SOCK_CLOEXEC. syscall.ForkLock, held for
// reading as the net package holds it there, keeps a child that os/exec
// starts meanwhile from inheriting the socket.
func streamSocket() (int, error) {
	syscall.ForkLock.RLock()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return -1, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// streamPair creates a connected pair of Unix stream sockets, then makes
// them close-on-exec under syscall.ForkLock, as streamSocket does.
func streamPair() ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	return fds, err
}

// acceptConn is non-zero if the socket fd, of type typ, listens. macOS
// does not answer getsockopt SO_ACCEPTCONN (ENOPROTOOPT: it is missing from
// sogetoptlock in xnu's bsd/kern/uipc_socket.c), so a stream or seqpacket
// socket counts as listening when it has no peer (getpeername fails with
// ENOTCONN). That takes a socket never connected, or whose peer is gone,
// for a listener too: FdConn refuses it, rightly, and a listener made of
// one fails at Accept.
func acceptConn(fd, typ int) (int, error) {
	if typ != unix.SOCK_STREAM && typ != unix.SOCK_SEQPACKET {
		return 0, nil
	}
	switch _, err := unix.Getpeername(fd); err {
	case nil, unix.EAFNOSUPPORT: // the peer's address, which x/sys/unix may not parse
		return 0, nil
	case unix.ENOTCONN:
		return 1, nil
	default:
		return 0, err
	}
}

// dupTo makes newfd a close-on-exec duplicate of oldfd, closing what newfd
// was first; macOS has no dup3, so it is marked close-on-exec after, under
// syscall.ForkLock as streamSocket does.
func dupTo(oldfd, newfd int) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	if err := unix.Dup2(oldfd, newfd); err != nil {
		return err
	}
	unix.CloseOnExec(newfd)
	return nil
}
