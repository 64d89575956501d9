//go:build darwin || freebsd

package graceful

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// peerCred returns the credentials the kernel recorded for the process at
// the other end of the Unix socket fd when the connection was made
// (LOCAL_PEERCRED), with the pid that xucredPID finds.
func peerCred(fd int) (Peer, error) {
	x, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return Peer{}, os.NewSyscallError("getsockopt", err)
	}
	// cr_groups[0] is the effective group.
	if x.Ngroups < 1 {
		return Peer{}, errors.New("getsockopt LOCAL_PEERCRED: credentials without a group")
	}
	return Peer{PID: xucredPID(fd, x), UID: int(x.Uid), GID: int(x.Groups[0])}, nil
}
