package graceful

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// peerCred returns the pid and effective ids that the kernel recorded for
// the process at the other end of the Unix socket fd when the connection
// was made (SO_PEERCRED, a struct sockpeercred {uid_t uid; gid_t gid;
// pid_t pid;}, sys/sys/socket.h).
//
// x/sys/unix has no getsockopt for that struct, and OpenBSD takes system
// calls from libc only, which x/sys/unix's functions call there.
// GetsockoptICMPv6Filter is its getsockopt into eight zeroed 32-bit words:
// the kernel fills the first three, copying out the struct's 12 bytes
// (sys_getsockopt copies the smaller of the struct and the room given).
func peerCred(fd int) (Peer, error) {
	w, err := unix.GetsockoptICMPv6Filter(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Peer{}, os.NewSyscallError("getsockopt", err)
	}
	uid, gid, pid := w.Filt[0], w.Filt[1], int32(w.Filt[2])
	// A short answer would leave zeros, and uid 0 is root; no process that
	// connected or listened has pid 0.
	if pid <= 0 {
		return Peer{}, fmt.Errorf("getsockopt SO_PEERCRED: no peer process (pid %d)", pid)
	}
	return Peer{PID: int(pid), UID: int(uid), GID: int(gid)}, nil
}
