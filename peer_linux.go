package graceful

import (
	"os"

	"golang.org/x/sys/unix"
)

// peerCred returns the credentials the kernel recorded for the process at
// the other end of the Unix socket fd when it connected.
func peerCred(fd int) (Peer, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Peer{}, os.NewSyscallError("getsockopt", err)
	}
	return Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}, nil
}
