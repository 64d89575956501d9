//go:build darwin || freebsd || linux || netbsd || openbsd

package graceful

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// fdSocket takes ownership of fd if it is a descriptor number, and returns
// it as a file if it is a socket that ok accepts by its type and whether it
// listens; otherwise it closes fd. A number the system calls' int cannot
// hold would reach the kernel truncated, naming another descriptor: it is
// rejected before anything is done with it.
func fdSocket(fd int, want string, ok func(typ int, listening bool) bool) (*os.File, error) {
	if fd < 0 || fd > 1<<31-1 {
		return nil, fmt.Errorf("graceful: invalid descriptor %d: %w", fd, unix.EBADF)
	}
	f := os.NewFile(uintptr(fd), "")
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	var listening int
	if err == nil {
		listening, err = acceptConn(fd, typ)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("graceful: descriptor %d: %w", fd, os.NewSyscallError("getsockopt", err))
	}
	if !ok(typ, listening != 0) {
		f.Close()
		return nil, fmt.Errorf("graceful: descriptor %d is %s, not %s", fd, socketKind(typ, listening != 0), want)
	}
	return f, nil
}

// fdFile takes ownership of fd if it is a descriptor number, and returns it
// as a file. A number the system calls' int cannot hold would reach the
// kernel truncated, naming another descriptor: it is rejected before
// anything is done with it.
func fdFile(fd int) (*os.File, error) {
	if fd < 0 || fd > 1<<31-1 {
		return nil, fmt.Errorf("graceful: invalid descriptor %d: %w", fd, unix.EBADF)
	}
	return os.NewFile(uintptr(fd), ""), nil
}

// checkConn checks that c, which net.FileConn made of descriptor fd, is a
// connected stream or seqpacket socket, as fdSocket checks before: its type
// is told by c's (a datagram or raw socket makes a UDPConn, an IPConn, or a
// UnixConn of network "unixgram"), and a socket with a peer does not
// listen. Only one without a peer (a listener's getpeername fails, and
// net.FileConn leaves the remote address nil) is asked, on probe, a
// descriptor of the same socket.
func checkConn(fd, probe int, c net.Conn) error {
	typ := unix.SOCK_STREAM
	switch c := c.(type) {
	case *net.TCPConn:
	case *net.UnixConn:
		switch c.LocalAddr().Network() {
		case "unixgram":
			typ = unix.SOCK_DGRAM
		case "unixpacket":
			typ = unix.SOCK_SEQPACKET
		}
	case *net.UDPConn:
		typ = unix.SOCK_DGRAM
	default:
		typ = unix.SOCK_RAW
	}
	listening := 0
	if typ == unix.SOCK_STREAM || typ == unix.SOCK_SEQPACKET {
		if c.RemoteAddr() != nil {
			return nil
		}
		var err error
		if listening, err = acceptConn(probe, typ); err != nil {
			return fmt.Errorf("graceful: descriptor %d: %w", fd, os.NewSyscallError("getsockopt", err))
		}
		if listening == 0 {
			return nil
		}
	}
	return fmt.Errorf("graceful: descriptor %d is %s, not a connected stream socket", fd, socketKind(typ, listening != 0))
}

// A connMaker makes net.Conns of many received descriptors, as FdConn
// does, for less. FdConn wraps its descriptor in an os.File, which the
// runtime registers with its poller (the descriptor is non-blocking), then
// removes again when the file is closed; a new socket is ready for writing
// at once, so each registration wakes a thread of the runtime that waits in
// the poller, on another CPU. A connMaker instead keeps a file of its own,
// the carrier, opened on a blocking descriptor, so never registered; each
// socket is duplicated onto the carrier's descriptor number for
// net.FileConn, and the carrier set back to its own file after: three
// system calls around net.FileConn's eleven, against FdConn's four, and
// one wake-up of the poller (net.FileConn's own registration) against two.
// Nothing of the socket changes meanwhile, and once conn returns only the
// net.Conn refers to it.
//
// Its methods may be called from several goroutines: a conn called while
// another is under way does as FdConn does.
type connMaker struct {
	mu      sync.Mutex
	carrier *os.File // nil until the first conn, and after close
	cfd     int      // its descriptor
	idle    int      // what cfd refers to between conns: /dev/null, blocking
	closed  bool
}

// conn makes a net.Conn of fd as FdConn does, taking ownership of fd.
func (m *connMaker) conn(fd int) (net.Conn, error) {
	if fd < 0 || fd > 1<<31-1 || !m.mu.TryLock() {
		return FdConn(fd)
	}
	defer m.mu.Unlock()
	if m.carrier == nil && (m.closed || m.open() != nil) {
		return FdConn(fd)
	}
	cfd := m.cfd
	if err := dupTo(fd, cfd); err != nil {
		closeFd(fd)
		return nil, fmt.Errorf("graceful: descriptor %d: %w", fd, os.NewSyscallError("dup", err))
	}
	c, err := net.FileConn(m.carrier)
	if err != nil {
		err = fmt.Errorf("graceful: descriptor %d: %w", fd, err)
	} else if err = checkConn(fd, cfd, c); err != nil {
		c.Close()
		c = nil
	}
	// The carrier lets go of the socket at once: closing c closes it.
	if derr := dupTo(m.idle, cfd); derr != nil {
		// Not expected; the carrier holds the socket until close.
		m.carrier.Close()
		closeFd(m.idle)
		m.carrier = nil
	}
	closeFd(fd)
	return c, err
}

// open opens the carrier.
func (m *connMaker) open() error {
	idle, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	cfd, err := unix.FcntlInt(uintptr(idle), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		unix.Close(idle)
		return err
	}
	m.idle, m.cfd, m.carrier = idle, cfd, os.NewFile(uintptr(cfd), "carrier")
	return nil
}

// close releases the carrier; conn does as FdConn does from then on.
func (m *connMaker) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	if m.carrier != nil {
		m.carrier.Close()
		closeFd(m.idle)
		m.carrier = nil
	}
}

// socketKind describes a socket for an error.
func socketKind(typ int, listening bool) string {
	switch {
	case listening:
		return "a listening socket"
	case typ == unix.SOCK_STREAM:
		return "a stream socket"
	case typ == unix.SOCK_DGRAM:
		return "a datagram socket"
	case typ == unix.SOCK_SEQPACKET:
		return "a seqpacket socket"
	case typ == unix.SOCK_RAW:
		return "a raw socket"
	}
	return fmt.Sprintf("a socket of type %d", typ)
}

// dupObject returns a duplicate of obj's descriptor, close-on-exec. The
// descriptor is borrowed through SyscallConn (Fd would switch obj to
// blocking mode), for the fcntl call only: closing obj waits for such a
// borrow to end.
func dupObject(obj any) (int, error) {
	rc, err := rawConn(obj)
	if err != nil {
		return -1, err
	}
	var dup int
	var derr error
	err = rc.Control(func(fd uintptr) {
		// Above the standard descriptors, so that one closed by the
		// application is not reused for a socket that the runtime would
		// then write a crash report into.
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
	})
	if err != nil {
		return -1, fmt.Errorf("graceful: %w", err)
	}
	if derr != nil {
		return -1, fmt.Errorf("graceful: duplicating a descriptor to send: %w", os.NewSyscallError("fcntl", derr))
	}
	return dup, nil
}

// closeOnExec marks fd close-on-exec.
func closeOnExec(fd int) {
	unix.CloseOnExec(fd)
}

// socketID identifies the socket open as fd by its device and inode, "" if
// fd is not an open socket.
func socketID(fd int) string {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return ""
	}
	return strconv.FormatUint(uint64(st.Dev), 10) + ":" + strconv.FormatUint(uint64(st.Ino), 10)
}
