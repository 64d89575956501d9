package graceful

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"strconv"

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

// credSpace is room for the credentials that the kernel adds to a message
// on a socket with SO_PASSCRED, before any descriptors.
var credSpace = unix.CmsgSpace(unix.SizeofUcred)

// selfExe names the running binary even once its file is removed.
const selfExe = "/proc/self/exe"

// processGone reports whether the process pid has ended: it does not exist,
// or it is a zombie that its parent has not reaped yet.
func processGone(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := unix.Kill(pid, 0); err == unix.ESRCH {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}
