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
