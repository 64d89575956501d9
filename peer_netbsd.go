package graceful

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// localPeerEID is LOCAL_PEEREID, at level SOL_LOCAL (0), from NetBSD's
// sys/un.h; x/sys/unix does not define it.
const localPeerEID = 3

// unpcbid is NetBSD's struct unpcbid (sys/un.h).
type unpcbid struct {
	pid int32 // pid_t unp_pid
	uid uint32
	gid uint32
}

// peerCred returns the pid and effective ids that the kernel recorded for
// the process at the other end of the Unix socket fd when the connection
// was made (LOCAL_PEEREID). x/sys/unix has no getsockopt for struct
// unpcbid; NetBSD takes system calls directly, as Go's syscall package
// makes them there.
func peerCred(fd int) (Peer, error) {
	var id unpcbid
	n := uint32(unsafe.Sizeof(id)) // socklen_t
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), 0, localPeerEID,
		uintptr(unsafe.Pointer(&id)), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return Peer{}, os.NewSyscallError("getsockopt", e)
	}
	return Peer{PID: int(id.pid), UID: int(id.uid), GID: int(id.gid)}, nil
}
