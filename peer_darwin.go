package graceful

import "golang.org/x/sys/unix"

// xucredPID returns the pid of the last process that used the other end of
// fd (LOCAL_PEERPID), 0 once the peer has closed it.
func xucredPID(fd int, _ *unix.Xucred) int {
	pid, err := unix.GetsockoptInt(fd, unix.SOL_LOCAL, unix.LOCAL_PEERPID)
	if err != nil {
		return 0
	}
	return pid
}
