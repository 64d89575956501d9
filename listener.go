package graceful

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// FdListener returns a net.Listener for the listening socket fd, typically
// one received by a [ReceiveCallback]. It takes ownership of fd: on success
// the listener owns the socket and fd must not be used again; on error fd is
// closed. A number outside [0, 2^31-1], which names no descriptor, is
// rejected with an error satisfying errors.Is(err, syscall.EBADF), and
// nothing is closed.
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
// does.
func FdConn(fd int) (net.Conn, error) {
	f, err := fdSocket(fd, "a connected stream socket", func(typ int, listening bool) bool {
		return (typ == unix.SOCK_STREAM || typ == unix.SOCK_SEQPACKET) && !listening
	})
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

// FdPacketConn returns a net.PacketConn for fd, a datagram socket (UDP,
// unixgram, or raw IP). It takes ownership of fd as [FdListener] does.
func FdPacketConn(fd int) (net.PacketConn, error) {
	f, err := fdSocket(fd, "a datagram socket", func(typ int, _ bool) bool {
		return typ == unix.SOCK_DGRAM || typ == unix.SOCK_RAW
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
		listening, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
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
