//go:build freebsd || linux || netbsd || openbsd

package graceful

import "golang.org/x/sys/unix"

// streamSocket creates a Unix stream socket, close-on-exec and
// non-blocking from the start.
func streamSocket() (int, error) {
	return unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
}
