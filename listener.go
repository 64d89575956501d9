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

// FdListener returns a net.Listener for the listening socket fd, typically
// one received by a [ReceiveCallback]. It takes ownership of fd: on success
// the listener owns the socket and fd must not be used again; on error fd is
// closed.
func FdListener(fd int) (net.Listener, error) {
	f, err := fdFile(fd)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v == 0 {
		return nil, fmt.Errorf("graceful: descriptor %d is not a listening socket", fd)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("graceful: %w", err)
	}
	return ln, nil
}

// FdConn returns a net.Conn for the connected socket fd. It takes ownership
// of fd as [FdListener] does.
func FdConn(fd int) (net.Conn, error) {
	f, err := fdFile(fd)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("graceful: %w", err)
	}
	return c, nil
}

// FdPacketConn returns a net.PacketConn for the datagram socket fd. It takes
// ownership of fd as [FdListener] does.
func FdPacketConn(fd int) (net.PacketConn, error) {
	f, err := fdFile(fd)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("graceful: %w", err)
	}
	return pc, nil
}

func fdFile(fd int) (*os.File, error) {
	f := os.NewFile(uintptr(fd), "")
	if f == nil {
		return nil, fmt.Errorf("graceful: invalid descriptor %d: %w", fd, unix.EBADF)
	}
	return f, nil
}

// Peer is the process at the other end of a connection, as the kernel
// recorded it when the connection was made (SO_PEERCRED).
type Peer struct {
	PID, UID, GID int
}

// SameUser is the default policy of both ends: it allows a peer of this
// process's user, or root, and refuses any other.
func SameUser(p Peer) error {
	if p.UID == 0 || p.UID == os.Geteuid() {
		return nil
	}
	return fmt.Errorf("%w: uid %d (pid %d) is not uid %d", ErrPeerRefused, p.UID, p.PID, os.Geteuid())
}

// checkPeer applies allow, or SameUser if nil, to the peer of conn.
func checkPeer(conn net.Conn, allow func(Peer) error) error {
	if allow == nil {
		allow = SameUser
	}
	rc, err := rawConn(conn)
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("graceful: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("graceful: peer credentials: %w", os.NewSyscallError("getsockopt", cerr))
	}
	if err := allow(Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}); err != nil {
		if !errors.Is(err, ErrPeerRefused) {
			err = fmt.Errorf("%w: %w", ErrPeerRefused, err)
		}
		return err
	}
	return nil
}

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
