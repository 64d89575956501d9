//go:build darwin || freebsd || linux || netbsd || openbsd

package graceful

import (
	"cmp"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// This file speaks systemd's two protocols for services, each a few lines:
// readiness notification (sd_notify(3)) and socket activation
// (sd_listen_fds(3)).

// keeperEnv holds the keeper's socket address in the environment of the
// instances it keeps: an instance that has it is kept, and keeps nothing.
const keeperEnv = "GRACEFUL_KEEPER"

// keeperAddr is the keeper's socket when this process is a kept instance.
// The first call takes it, and NOTIFY_SOCKET, out of the environment: the
// application's own children must not speak for the service. Successors
// get both back (successorEnv).
var keeperAddr = sync.OnceValue(func() string {
	addr := os.Getenv(keeperEnv)
	if addr != "" {
		os.Unsetenv(keeperEnv)
		os.Unsetenv("NOTIFY_SOCKET")
	}
	return addr
})

// successorEnv is the environment a successor starts with.
func successorEnv() []string {
	env := os.Environ()
	if addr := keeperAddr(); addr != "" {
		env = append(env, "NOTIFY_SOCKET="+addr, keeperEnv+"="+addr)
	}
	return env
}

// notify sends state to the service manager's socket in NOTIFY_SOCKET, if
// any: a path, or @name in the abstract namespace. The variable stays set,
// for successors, unless a keeper set it.
func notify(state string) error {
	addr := cmp.Or(keeperAddr(), os.Getenv("NOTIFY_SOCKET"))
	if addr == "" {
		return nil
	}
	if addr[0] != '/' && addr[0] != '@' {
		return fmt.Errorf("NOTIFY_SOCKET=%s: not a Unix socket", addr)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// activation holds the sockets that systemd passed to this process.
type activation struct {
	fds []int // -1 once taken
}

// activated takes the sockets that systemd passed, if they are meant for
// this process (LISTEN_PID), and clears the variables so that no successor
// takes them for its own. The descriptors are made close-on-exec.
func activated() (*activation, error) {
	pid, n := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if pid == "" || n == "" {
		return nil, nil
	}
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	// The keeper passes its own on to its first instance, its child.
	kept := keeperAddr() != "" && pid == strconv.Itoa(os.Getppid())
	if pid != strconv.Itoa(os.Getpid()) && !kept {
		return nil, nil
	}
	count, err := strconv.Atoi(n)
	if err != nil || count < 0 || count > 1<<16 {
		return nil, fmt.Errorf("graceful: LISTEN_FDS=%q: %w", n, unix.EINVAL)
	}
	const first = 3 // SD_LISTEN_FDS_START
	a := &activation{}
	for fd := first; fd < first+count; fd++ {
		unix.CloseOnExec(fd)
		a.fds = append(a.fds, fd)
	}
	return a, nil
}

// take returns a passed socket of kind (kindListener, kindPacket) bound to
// network and address, or -1. The descriptor is then the caller's.
func (a *activation) take(kind, network, address string) int {
	if a == nil {
		return -1
	}
	for i, fd := range a.fds {
		if fd >= 0 && socketMatches(fd, kind, network, address) {
			a.fds[i] = -1
			return fd
		}
	}
	return -1
}

// unclaimed counts the passed sockets nobody took.
func (a *activation) unclaimed() int {
	n := 0
	if a != nil {
		for _, fd := range a.fds {
			if fd >= 0 {
				n++
			}
		}
	}
	return n
}

// close closes the passed sockets nobody took.
func (a *activation) close() {
	if a == nil {
		return
	}
	for i, fd := range a.fds {
		if fd >= 0 {
			unix.Close(fd)
			a.fds[i] = -1
		}
	}
}

// socketMatches reports whether the socket fd is of kind and bound to the
// address that network and address name. An address without a host (":80")
// matches a socket bound to the unspecified address (0.0.0.0 or ::).
func socketMatches(fd int, kind, network, address string) bool {
	if !socketIsKind(fd, kind) {
		return false
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return false
	}
	var ip net.IP
	var port int
	switch sa := sa.(type) {
	case *unix.SockaddrUnix:
		return strings.HasPrefix(network, "unix") && sa.Name == address
	case *unix.SockaddrInet4:
		if strings.HasSuffix(network, "6") {
			return false
		}
		ip, port = net.IP(sa.Addr[:]), sa.Port
	case *unix.SockaddrInet6:
		if strings.HasSuffix(network, "4") {
			return false
		}
		ip, port = net.IP(sa.Addr[:]), sa.Port
	default:
		return false
	}
	want, ok := resolveAddr(network, address)
	if !ok || want.Port != port {
		return false
	}
	if len(want.IP) == 0 || want.IP.IsUnspecified() {
		return ip.IsUnspecified()
	}
	return want.IP.Equal(ip)
}

// socketIsKind reports whether fd is a listening stream socket for
// kindListener, a datagram socket for kindPacket.
func socketIsKind(fd int, kind string) bool {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return false
	}
	if kind != kindListener {
		return typ == unix.SOCK_DGRAM
	}
	if typ != unix.SOCK_STREAM && typ != unix.SOCK_SEQPACKET {
		return false
	}
	acc, err := acceptConn(fd, typ)
	return err == nil && acc != 0
}

// resolveAddr resolves a TCP or UDP address, as an IP and a port.
func resolveAddr(network, address string) (*net.UDPAddr, bool) {
	switch {
	case strings.HasPrefix(network, "tcp"):
		a, err := net.ResolveTCPAddr(network, address)
		if err != nil {
			return nil, false
		}
		return &net.UDPAddr{IP: a.IP, Port: a.Port}, true
	case strings.HasPrefix(network, "udp"):
		a, err := net.ResolveUDPAddr(network, address)
		return a, err == nil
	}
	return nil, false
}
