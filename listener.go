package graceful

import (
	"fmt"
	"net"
	"syscall"
)

// FdListener returns a net.Listener for the listening socket fd, typically
// one that a [Receive] callback got. It takes ownership of fd. On success
// the listener owns the socket, and fd must not be used again. On error fd
// is closed. A number outside [0, 2^31-1] names no descriptor. It is
// rejected with an error satisfying errors.Is(err, syscall.EBADF), and
// nothing is closed. FdListener does not block.
func FdListener(fd int) (net.Listener, error) {
	f, err := fdSocket(fd, "a listening socket", func(_ int, listening bool) bool {
		return listening
	})
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("graceful: %w", err)
	}
	return ln, nil
}

// FdConn returns a net.Conn for fd, a connected stream (or seqpacket)
// socket, not a listening one. It takes ownership of fd as [FdListener]
// does. (Given a TCP listener, it refuses it only once net.FileConn has set
// the options it sets on every TCP connection it makes, keep-alive and no
// delay, which connections the listener accepts then inherit.)
func FdConn(fd int) (net.Conn, error) {
	f, err := fdFile(fd)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("graceful: descriptor %d: %w", fd, err)
	}
	if err := checkConn(fd, fd, c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// FdPacketConn returns a net.PacketConn for fd, a datagram socket (UDP,
// unixgram, or raw IP). It takes ownership of fd as [FdListener] does.
func FdPacketConn(fd int) (net.PacketConn, error) {
	f, err := fdSocket(fd, "a datagram socket", func(typ int, _ bool) bool {
		return typ == syscall.SOCK_DGRAM || typ == syscall.SOCK_RAW
	})
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

// rawConn returns the descriptor access of a net or os object without
// calling Fd, which would switch it to blocking mode.
func rawConn(obj any) (syscall.RawConn, error) {
	sc, ok := obj.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("graceful: %T has no descriptor", obj)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("graceful: %w", err)
	}
	return rc, nil
}

// objectClosed reports whether obj, a net or os object, has been closed.
func objectClosed(obj any) bool {
	rc, err := rawConn(obj)
	return err != nil || rc.Control(func(uintptr) {}) != nil
}
