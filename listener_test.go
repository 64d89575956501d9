//go:build linux

package graceful

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fdWrappers are the functions that turn a received descriptor into a net
// object.
var fdWrappers = []struct {
	name string
	wrap func(int) (io.Closer, error)
}{
	{"FdListener", func(fd int) (io.Closer, error) { return FdListener(fd) }},
	{"FdConn", func(fd int) (io.Closer, error) { return FdConn(fd) }},
	{"FdPacketConn", func(fd int) (io.Closer, error) { return FdPacketConn(fd) }},
}

// TestFdBadNumber gives the wrappers numbers that name no descriptor. One
// that the kernel's int cannot hold must be rejected before any system call,
// which would take its low 32 bits, an unrelated descriptor, and close it;
// a closed descriptor must say EBADF.
func TestFdBadNumber(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("an int of 32 bits holds no number the kernel would truncate")
	}
	checkFds(t)
	f := devNull(t)
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var victim int
	rc.Control(func(fd uintptr) { victim = int(fd) })
	bads := []int{-1, math.MinInt}
	for _, n := range []uint64{1<<32 + uint64(victim), 1<<63 - 1<<32 + uint64(victim), 1 << 31, 1<<31 - 1} {
		bads = append(bads, int(n)) // the last one is in range, and closed
	}
	for _, bad := range bads {
		for _, w := range fdWrappers {
			c, err := w.wrap(bad)
			if err == nil {
				c.Close()
			}
			if !errors.Is(err, syscall.EBADF) {
				t.Errorf("%s(%d): %v, want EBADF", w.name, bad, err)
			}
			if _, err := unix.FcntlInt(uintptr(victim), unix.F_GETFD, 0); err != nil {
				t.Fatalf("%s(%d) closed descriptor %d: %v", w.name, bad, victim, err)
			}
		}
	}
}

// TestFdWrongKind gives each wrapper every kind of descriptor: it must take
// only its own kind, and close any other (checkFds counts them).
func TestFdWrongKind(t *testing.T) {
	checkFds(t)
	kinds := []struct {
		name string
		open func(t *testing.T) int
		want string // the wrapper that takes it, if any
	}{
		{"a TCP listener", func(t *testing.T) int {
			return socketFd(t, mustListen(t))
		}, "FdListener"},
		{"a TCP connection", func(t *testing.T) int {
			ln := mustListen(t)
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			return socketFd(t, c)
		}, "FdConn"},
		{"a UDP socket", func(t *testing.T) int {
			c, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			return socketFd(t, c)
		}, "FdPacketConn"},
		{"a Unix stream connection", func(t *testing.T) int {
			a, b := socketPair(t)
			b.Close()
			return socketFd(t, a)
		}, "FdConn"},
		{"an unbound Unix datagram socket", func(t *testing.T) int {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}, "FdPacketConn"},
		{"a file", func(t *testing.T) int {
			fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}, ""},
	}
	for _, k := range kinds {
		for _, w := range fdWrappers {
			c, err := w.wrap(k.open(t))
			if err == nil {
				c.Close()
			}
			if w.name == k.want && err != nil {
				t.Errorf("%s of %s: %v", w.name, k.name, err)
			}
			if w.name != k.want && err == nil {
				t.Errorf("%s took %s", w.name, k.name)
			}
			if k.want == "" && !errors.Is(err, syscall.ENOTSOCK) {
				t.Errorf("%s of a file: %v, want ENOTSOCK", w.name, err)
			}
		}
	}
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// socketFd returns a descriptor of its own for obj's socket, and closes obj.
func socketFd(t *testing.T, obj io.Closer) int {
	t.Helper()
	defer obj.Close()
	rc, err := rawConn(obj)
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestConnMaker gives a connMaker every kind of descriptor TestFdWrongKind
// gives the wrappers: it must take what FdConn takes and refuse the rest,
// closing each descriptor; a connection it made must end, for its peer, when
// the application closes it (the carrier holds no copy), and work before.
func TestConnMaker(t *testing.T) {
	checkFds(t)
	var m connMaker
	defer m.close()
	ln := mustListen(t)
	defer ln.Close()
	for i := range 3 {
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c, err := m.conn(socketFd(t, server))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if _, ok := c.(*net.TCPConn); !ok || c.RemoteAddr().String() != client.LocalAddr().String() {
			t.Errorf("connection %d: %T from %v", i, c, c.RemoteAddr())
		}
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		c.Close()
		b := make([]byte, 2)
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := io.ReadFull(client, b); n != 1 || err != io.ErrUnexpectedEOF {
			t.Errorf("connection %d, closed: the peer read %q, %v; want x and its end", i, b[:n], err)
		}
	}
	a, b := socketPair(t)
	defer b.Close()
	c, err := m.conn(socketFd(t, a))
	if err != nil {
		t.Fatalf("a Unix stream connection: %v", err)
	}
	c.Close()
	refuse := map[string]func() int{
		"a TCP listener": func() int { return socketFd(t, mustListen(t)) },
		"a UDP socket": func() int {
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			return socketFd(t, pc)
		},
		"a file": func() int {
			fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		},
	}
	for name, open := range refuse {
		fd := open()
		if c, err := m.conn(fd); err == nil {
			c.Close()
			t.Errorf("took %s", name)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("descriptor %d", fd)) {
			t.Errorf("%s: the error names another descriptor: %v", name, err)
		}
	}
	if _, err := m.conn(1 << 31); !errors.Is(err, syscall.EBADF) {
		t.Errorf("a number out of range: %v, want EBADF", err)
	}
	// Once closed, it makes connections as FdConn does.
	m.close()
	a, b = socketPair(t)
	defer b.Close()
	if c, err := m.conn(socketFd(t, a)); err != nil {
		t.Errorf("after close: %v", err)
	} else {
		c.Close()
	}
}
