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
