//go:build freebsd || linux || netbsd || openbsd

package graceful

// The systems of this file have SOCK_CLOEXEC and SO_ACCEPTCONN; macOS has
// neither (sock_darwin.go).

import "golang.org/x/sys/unix"

// streamSocket creates a Unix stream socket, close-on-exec and
// non-blocking from the start.
func streamSocket() (int, error) {
	return unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
}

// streamPair creates a connected pair of Unix stream sockets,
// close-on-exec.
func streamPair() ([2]int, error) {
	return unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
}

// acceptConn is non-zero if the socket fd, of type typ, listens
// (SO_ACCEPTCONN).
func acceptConn(fd, _ int) (int, error) {
	return unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
}

// dupTo makes newfd a close-on-exec duplicate of oldfd, closing what newfd
// was first, in one call.
func dupTo(oldfd, newfd int) error {
	return unix.Dup3(oldfd, newfd, unix.O_CLOEXEC)
}
