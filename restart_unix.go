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
func (in *Instance) startChild(exe string) (*os.Process, *net.UnixConn, error) {
	pair, err := streamPair()
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	c, err := FdConn(pair[0])
	if err != nil {
		closeFd(pair[1])
		return nil, nil, err
	}
	conn := c.(*net.UnixConn)
	fds := []int{pair[1]}
	defer func() {
		for _, fd := range fds {
			closeFd(fd)
		}
	}()
	metas, err := in.dupHandedOn(&fds)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	defer devNull.Close()
	files := []uintptr{devNull.Fd(), 1, 2}
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	env := slices.DeleteFunc(os.Environ(), func(e string) bool {
		return strings.HasPrefix(e, inheritEnv+"=") || strings.HasPrefix(e, statePIDEnv+"=")
	})
	env = append(env, inheritEnv+"="+strconv.Itoa(os.Getpid())+";"+socketID(pair[1])+";"+strings.Join(metas, ","), statePIDEnv+"=1")
	argv := append([]string{os.Args[0]}, os.Args[1:]...)
	// Not os/exec: it would put the descriptors in blocking mode, for the
	// instance that shares them too.
	pid, err := syscall.ForkExec(exe, argv, &syscall.ProcAttr{Env: env, Files: files})
	if err != nil {
		conn.Close()
		return nil, nil, &os.PathError{Op: "fork/exec", Path: exe, Err: err}
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return proc, conn, nil
}

// dupHandedOn duplicates the descriptors of the hand-over socket and of
// every object this instance hands on, appending them to fds, and returns
// their metas, base64.
func (in *Instance) dupHandedOn(fds *[]int) ([]string, error) {
	in.mu.Lock()
	out, state, ln := slices.Clone(in.out), in.outState, in.handover
	in.mu.Unlock()
	out = append([]handedOn{{meta: handoverMeta(state), obj: ln}}, out...)
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
