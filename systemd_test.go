//go:build linux

package graceful

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notifySocket is a service manager's notification socket: it receives
// each datagram with the credentials of its sender.
type notifySocket struct {
	t    *testing.T
	conn *net.UnixConn
	addr string
}

func newNotifySocket(t *testing.T, addr string) *notifySocket {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	passCred(t, c)
	return &notifySocket{t: t, conn: c, addr: addr}
}

// next returns the next message and the pid that sent it.
func (n *notifySocket) next() (string, int) {
	n.t.Helper()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	n.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	m, oobn, _, _, err := n.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		n.t.Fatalf("notification: %v", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		n.t.Fatalf("notification without credentials: %v", err)
	}
	cred, err := unix.ParseUnixCredentials(&msgs[0])
	if err != nil {
		n.t.Fatal(err)
	}
	return string(buf[:m]), int(cred.Pid)
}

// TestNotify follows the sd_notify(3) messages of a chain of instances as a
// service manager with NotifyAccess=main sees them: every message comes from
// the main process of the moment, the main pid moves to each successor
// before the old instance exits, and each instance says READY=1 as main.
func TestNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(map[bool]string{false: "path", true: "abstract"}[abstract], func(t *testing.T) {
			addr := filepath.Join(t.TempDir(), "notify")
			if abstract {
				addr = fmt.Sprintf("@graceful-notify-%d", os.Getpid())
			}
			ns := newNotifySocket(t, addr)
			c := newChain(t, "NOTIFY_SOCKET="+addr)
			first := c.startFirst()
			main := first
			expect := func(want string) {
				t.Helper()
				msg, pid := ns.next()
				if pid != main {
					t.Errorf("%q from pid %d, not the main pid %d", msg, pid, main)
				}
				if msg != want {
					t.Errorf("notification %q, want %q", msg, want)
				}
			}
			expect(fmt.Sprintf("READY=1\nMAINPID=%d", first))
			for i := 0; i < 2; i++ {
				if i == 0 {
					syscall.Kill(main, syscall.SIGHUP)
				} else {
					c.start()
				}
				next := c.readyAfter(map[int]bool{first: true, main: true})
				expect(fmt.Sprintf("MAINPID=%d", next))
				old := main
				main = next
				expect(fmt.Sprintf("READY=1\nMAINPID=%d", next))
				c.wait(old, "exit ")
			}
			c.stop(main)
			expect("STOPPING=1")
		})
	}
}

// socketActivate runs an instance under systemd-socket-activate, which
// listens on a free address, with env added to the instance's. It returns
// once a connection was answered: the first makes it start the instance.
func socketActivate(t *testing.T, env ...string) (*chain, *exec.Cmd) {
	bin, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian's systemd package has it)")
	}
	c := newChain(t)
	c.addr = freeAddr(t)
	args := []string{"-l", c.addr}
	for _, e := range append(env, instanceEnv()...) {
		args = append(args, "-E", e)
	}
	cmd := exec.Command(bin, append(args, os.Args[0], c.sock, c.addr, c.pid)...)
	c.startCmd(cmd)
	for i := 0; ; i++ {
		conn, err := net.Dial("tcp", c.addr)
		if err == nil {
			conn.Close()
			return c, cmd
		}
		if i == 1000 {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // nothing tells when it listens
	}
}

// TestSocketActivation starts a first instance with the sockets a service
// manager passes: by systemd-socket-activate, and by the environment set
// here, with a socket the application does not ask for. The instance serves
// the socket it was given, closes the other at Ready, and hands the first
// on to a successor.
func TestSocketActivation(t *testing.T) {
	t.Run("systemd-socket-activate", func(t *testing.T) {
		c, cmd := socketActivate(t)
		addr := c.addr
		l := startLoad(t, addr)
		pid := cmd.Process.Pid
		c.wait(pid, "ready "+addr+" inherited=false")
		c.wait(pid, "activated kept 1 of 1")
		l.answered(t, pid, 20)
		syscall.Kill(pid, syscall.SIGHUP)
		next := c.readyAfter(map[int]bool{pid: true})
		l.answered(t, next, 20)
		l.check(t)
		c.stop(next)
	})
	t.Run("systemd-socket-activate with a keeper", func(t *testing.T) {
		c, cmd := socketActivate(t, "GRACEFUL_TEST_KEEP=1")
		addr := c.addr
		// The keeper passes systemd's socket to its first instance.
		keeper := cmd.Process.Pid
		pid := c.readyAfter(map[int]bool{keeper: true})
		c.wait(pid, "ready "+addr+" inherited=false")
		c.wait(pid, "activated kept 1 of 1")
		l := startLoad(t, addr)
		l.answered(t, pid, 20)
		syscall.Kill(keeper, syscall.SIGHUP)
		next := c.readyAfter(map[int]bool{keeper: true, pid: true})
		l.answered(t, next, 20)
		l.check(t)
		syscall.Kill(keeper, syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("the keeper ended with %v, want status 0", err)
		}
	})
	t.Run("environment", func(t *testing.T) {
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		udp, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tf, err := tcp.(*net.TCPListener).File()
		tcp.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer tf.Close()
		uf, err := udp.(*net.UDPConn).File()
		udp.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer uf.Close()
		c := newChain(t)
		c.addr = tcp.Addr().String()
		// LISTEN_PID names the process that execs from the shell.
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, os.Args[0], c.sock, c.addr, c.pid)
		cmd.Env = append(os.Environ(), instanceEnv()...)
		cmd.Env = append(cmd.Env, "LISTEN_FDS=2", "LISTEN_FDNAMES=http:dns")
		cmd.ExtraFiles = []*os.File{tf, uf}
		c.startCmd(cmd)
		tf.Close()
		uf.Close()
		pid := cmd.Process.Pid
		c.wait(pid, "ready "+c.addr+" inherited=false")
		c.wait(pid, "activated kept 1 of 2")
		c.wait(pid, "log closing 1 socket(s) from systemd: no Listen asked for them")
		l := startLoad(t, c.addr)
		l.answered(t, pid, 20)
		c.start()
		next := c.readyAfter(map[int]bool{pid: true})
		if strings.Contains(c.wait(next, "ready "), "inherited=false") {
			t.Error("the successor did not take over")
		}
		l.answered(t, next, 20)
		l.check(t)
		c.stop(next)
	})
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "127.0.0.1:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
