//go:build darwin || freebsd || linux || netbsd || openbsd

package graceful

import (
	"encoding/base64"
	"errors"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// inheritEnv tells a successor that Restart starts which descriptors it is
// given at exec: "<parent's pid>;<id>;<meta>,<meta>,...", the connection of
// the hand-over being descriptor 3, which id identifies (its device and
// inode), and each base64 meta (as the hand-over's metas) describing
// descriptor 4, 5, ... in turn. So a Restart hands the
// sockets over as a fork/exec does, and as fast, with the same commit.
const inheritEnv = "GRACEFUL_INHERIT"

// startChild starts exe as a successor, with this program's arguments and
// environment, its standard output and error, and this instance's sockets.
// It returns the process and this end of the hand-over's connection.
func (m *machine) startChild(exe string) (*os.Process, *net.UnixConn, error) {
	var fds []int
	defer func() {
		for _, fd := range fds {
			closeFd(fd)
		}
	}()
	metas, err := dupHandedOn(m.snapshot(), &fds)
	if err != nil {
		return nil, nil, err
	}
	pid, conn, err := execSuccessor(exe, successorEnv(), os.Getpid(), metas, fds, nil)
	if err != nil {
		return nil, nil, err
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return proc, conn, nil
}

// execSuccessor starts exe as a successor of the instance pred, with this
// program's arguments, env, its standard output and error, and the
// descriptors fds, which metas describe (they stay the caller's). It
// returns the successor's pid and this end of the hand-over's connection.
func execSuccessor(exe string, env []string, pred int, metas []string, fds []int, sys *syscall.SysProcAttr) (int, *net.UnixConn, error) {
	pair, err := streamPair()
	if err != nil {
		return 0, nil, os.NewSyscallError("socketpair", err)
	}
	defer closeFd(pair[1])
	c, err := FdConn(pair[0])
	if err != nil {
		return 0, nil, err
	}
	conn := c.(*net.UnixConn)
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		conn.Close()
		return 0, nil, err
	}
	defer devNull.Close()
	files := []uintptr{devNull.Fd(), 1, 2, uintptr(pair[1])}
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	env = slices.DeleteFunc(slices.Clone(env), func(e string) bool {
		return strings.HasPrefix(e, inheritEnv+"=") || strings.HasPrefix(e, statePIDEnv+"=")
	})
	env = append(env, inheritEnv+"="+strconv.Itoa(pred)+";"+socketID(pair[1])+";"+strings.Join(metas, ","), statePIDEnv+"=1")
	argv := append([]string{os.Args[0]}, os.Args[1:]...)
	// Not os/exec: it would put the descriptors in blocking mode, for the
	// instance that shares them too.
	pid, err := syscall.ForkExec(exe, argv, &syscall.ProcAttr{Env: env, Files: files, Sys: sys})
	if err != nil {
		conn.Close()
		return 0, nil, &os.PathError{Op: "fork/exec", Path: exe, Err: err}
	}
	return pid, conn, nil
}

// dupHandedOn duplicates the descriptors of the hand-over socket and of
// every object of snap, appending them to fds, and returns their metas,
// base64.
func dupHandedOn(snap *snapshot, fds *[]int) ([]string, error) {
	out := append([]handedOn{{meta: handoverMeta(snap.state), obj: snap.handover}}, snap.out...)
	var metas []string
	for _, h := range out {
		fd, err := dupObject(h.obj)
		if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
			continue // closed by the application: not to be handed on
		}
		if err != nil {
			return nil, err
		}
		*fds = append(*fds, fd)
		b := h.meta.appendBinary(nil)
		metas = append(metas, base64.StdEncoding.EncodeToString(b))
	}
	return metas, nil
}
