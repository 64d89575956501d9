package graceful

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// isAbstract reports whether addr names a socket in the abstract namespace,
// which has no file and so no file mode: only credentials protect it.
func isAbstract(addr string) bool {
	return strings.HasPrefix(addr, "@")
}

// listenUnix listens on the Unix socket addr. A file socket is created with
// mode (its group set to gid unless gid is -1) before it listens, so no
// client can connect while the umask's mode is in force. A stale socket file
// is replaced; a live server's address is never taken, nor is a path that is
// not a socket removed.
func listenUnix(addr string, mode fs.FileMode, gid int) (net.Listener, error) {
	if isAbstract(addr) {
		ln, err := net.Listen("unix", addr)
		if err != nil {
			return nil, fmt.Errorf("graceful: %w", err)
		}
		return ln, nil
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("graceful: %w", os.NewSyscallError("socket", err))
	}
	f := os.NewFile(uintptr(fd), addr)
	defer f.Close()
	opErr := func(op string, err error) error {
		return &net.OpError{Op: "listen", Net: "unix", Addr: &net.UnixAddr{Name: addr, Net: "unix"}, Err: os.NewSyscallError(op, err)}
	}
	// bind creates the file with the socket's mode less the umask: never
	// more than mode.
	if err := unix.Fchmod(fd, uint32(mode.Perm())); err != nil {
		return nil, fmt.Errorf("graceful: %w", opErr("fchmod", err))
	}
	sa := &unix.SockaddrUnix{Name: addr}
	for try := 0; ; try++ {
		err = unix.Bind(fd, sa)
		if err != unix.EADDRINUSE || try > 0 {
			break
		}
		if err := removeStale(addr); err != nil {
			return nil, fmt.Errorf("graceful: listen %s: %w", addr, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("graceful: %w", opErr("bind", err))
	}
	st, err := setMode(addr, mode, gid)
	if err == nil {
		err = unix.Listen(fd, unix.SOMAXCONN)
	}
	if err != nil {
		if st.Mode&unix.S_IFMT == unix.S_IFSOCK {
			unix.Unlink(addr)
		}
		return nil, fmt.Errorf("graceful: %w", opErr("listen", err))
	}
	ln, err := net.FileListener(f)
	if err != nil {
		unix.Unlink(addr)
		return nil, fmt.Errorf("graceful: %w", err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	return &fileListener{UnixListener: ul, path: addr, dev: uint64(st.Dev), ino: uint64(st.Ino)}, nil
}

// setMode gives the socket file at path the exact mode (the umask may have
// taken bits off) and the group gid unless it is -1. It works through a
// handle that does not follow symlinks: whoever may write the directory can
// swap the path for a link, and must not make this process change the
// file it points to.
func setMode(path string, mode fs.FileMode, gid int) (unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return st, os.NewSyscallError("open", err)
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return st, os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return st, fmt.Errorf("%s was replaced by a file that is not a socket: %w", path, unix.EADDRINUSE)
	}
	if st.Mode&0o7777 != uint32(mode.Perm()) {
		// The descriptor's entry in /proc names the socket file itself.
		if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), uint32(mode.Perm())); err != nil {
			return st, os.NewSyscallError("chmod", err)
		}
	}
	if gid >= 0 {
		if err := unix.Fchownat(fd, "", -1, gid, unix.AT_EMPTY_PATH); err != nil {
			return st, os.NewSyscallError("fchownat", err)
		}
	}
	return st, nil
}

// removeStale removes the socket file at path if no server listens on it.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket: %w", path, unix.EADDRINUSE)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("a server is listening at %s: %w", path, unix.EADDRINUSE)
	}
	if !errors.Is(err, unix.ECONNREFUSED) {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// fileListener is a Unix listener whose Close removes its socket file, but
// only while the file is still the one it created, so an instance that
// already replaced it keeps its own.
type fileListener struct {
	*net.UnixListener
	path     string
	dev, ino uint64
	once     sync.Once
}

func (l *fileListener) Close() error {
	l.once.Do(func() {
		var st unix.Stat_t
		// Removing the file before closing the socket leaves no moment in
		// which the path names a dead socket that a successor must clean up.
		if unix.Stat(l.path, &st) == nil && uint64(st.Dev) == l.dev && uint64(st.Ino) == l.ino {
			unix.Unlink(l.path)
		}
	})
	return l.UnixListener.Close()
}
