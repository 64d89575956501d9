//go:build linux

package graceful

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// passFixture is a first instance in the test process with n live
// connections, each of which has sent "part" and no more.
type passFixture struct {
	inst    *Instance
	sock    string
	addr    string
	clients []net.Conn
	servers []net.Conn
}

// connectTo dials ln and accepts the connection: the client's end and the
// server's, both closed when the test ends.
func connectTo(t *testing.T, ln net.Listener) (client, server net.Conn) {
	t.Helper()
	client, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

func newPassFixture(t *testing.T, n int) *passFixture {
	dir := sockPath(t)
	os.Mkdir(dir, 0o700)
	f := &passFixture{sock: filepath.Join(dir, "s")}
	inst, err := Start(Config{Socket: f.sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inst.Stop)
	f.inst = inst
	ln, err := inst.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f.addr = ln.Addr().String()
	if err := inst.Ready(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		c, s := connectTo(t, ln)
		io.WriteString(c, "part")
		if _, err := io.ReadFull(s, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		f.clients = append(f.clients, c)
		f.servers = append(f.servers, s)
	}
	return f
}

func (f *passFixture) passed() []PassedConn {
	var p []PassedConn
	for i, s := range f.servers {
		p = append(p, PassedConn{Conn: s, Meta: Meta{"id": strconv.Itoa(i), "pending": "part"}})
	}
	return p
}

// TestPassConns passes 300 live connections, more than a system call
// carries, to a successor (in this process): each goes on where it
// stopped, with its pending bytes, and is answered by the successor; no
// descriptor is left over.
func TestPassConns(t *testing.T) {
	noLeaks(t)
	f := newPassFixture(t, 300)
	succ, err := Start(Config{Socket: f.sock})
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Stop()
	ln, err := succ.Listen("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := succ.Ready(); err != nil {
		t.Fatal(err)
	}
	<-f.inst.Done()
	// The successor answers each passed connection's next line, prefixed
	// with the bytes its meta says were pending.
	accepted := make(chan error, 1)
	n := 0
	var replies sync.WaitGroup
	defer replies.Wait()
	go func() {
		for {
			c, m, err := succ.AcceptConn()
			if err != nil {
				accepted <- err
				return
			}
			n++
			replies.Add(1)
			go func() {
				defer replies.Done()
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprintf(c, "successor id=%s line=%s", m["id"], m["pending"]+line)
			}()
		}
	}()
	if err := f.inst.PassConns(f.passed()); err != nil {
		t.Fatal(err)
	}
	f.inst.Stop() // no more come
	if err := <-accepted; err != io.EOF || n != 300 {
		t.Fatalf("the successor accepted %d connections, then %v; want 300, then io.EOF", n, err)
	}
	for i, cl := range f.clients {
		io.WriteString(cl, "-rest\n")
		line, err := bufio.NewReader(cl).ReadString('\n')
		want := fmt.Sprintf("successor id=%d line=part-rest\n", i)
		if line != want || err != nil {
			t.Fatalf("connection %d: %q, %v; want %q", i, line, err, want)
		}
	}
}

// TestPassConnsToReplacement passes connections to a successor that died
// after its Ready: nothing would accept then, so PassConns starts a
// replacement with the sockets, which takes the connections and accepts
// new ones.
func TestPassConnsToReplacement(t *testing.T) {
	noLeaks(t)
	f := newPassFixture(t, 10)
	if err := f.inst.PassConns(f.passed()); !errors.Is(err, ErrInstanceState) {
		t.Fatalf("PassConns before a successor: %v", err)
	}
	c := startChild(t, "takeconns", f.sock, f.addr, "die")
	c.expect("ready")
	<-f.inst.Done()
	fmt.Fprintln(c.in)
	c.wait()
	t.Setenv(childEnv, "takeconns-env")
	t.Setenv("GRACEFUL_TEST_SOCK", f.sock)
	t.Setenv("GRACEFUL_TEST_ADDR", f.addr)
	if err := f.inst.PassConns(f.passed()); err != nil {
		t.Fatalf("PassConns after the successor died: %v", err)
	}
	pid := f.inst.SuccessorPID()
	if pid == c.cmd.Process.Pid || pid == 0 {
		t.Fatalf("SuccessorPID() = %d after the successor %d died", pid, c.cmd.Process.Pid)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	for i, cl := range f.clients {
		io.WriteString(cl, "-rest\n")
		line, err := bufio.NewReader(cl).ReadString('\n')
		want := fmt.Sprintf("pid=%d id=%d line=part-rest\n", pid, i)
		if line != want || err != nil {
			t.Fatalf("connection %d: %q, %v; want %q", i, line, err, want)
		}
	}
	// The replacement accepts new connections too.
	nc, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	f.inst.Stop() // no more passed: the replacement's AcceptConn says EOF
}
