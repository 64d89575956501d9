//go:build linux

package graceful

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// countFds counts this process's open descriptors.
func countFds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents) - 1 // the directory's own descriptor
}

// checkFds fails the test if it ends with more descriptors open than it
// started with. Descriptors close asynchronously in places (a goroutine
// finishing a connection), so it waits a little for the count to settle.
func checkFds(t testing.TB) {
	t.Helper()
	// The runtime's poller descriptors open on first use; make sure they are.
	a, b := socketPair(t)
	a.Close()
	b.Close()
	before := countFds(t)
	t.Cleanup(func() {
		var after int
		for i := 0; i < 100; i++ {
			if after = countFds(t); after <= before {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		ents, _ := os.ReadDir("/proc/self/fd")
		var names []string
		for _, e := range ents {
			l, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
			names = append(names, e.Name()+"->"+l)
		}
		t.Errorf("descriptors leaked: %d before, %d after: %v", before, after, names)
	})
}

// socketPair returns two connected Unix stream connections.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}

func sockPath(t testing.TB) string {
	// A short directory: socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "gr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s")
}

// TestHandOverKinds hands a TCP listener, a UDP socket, a Unix listener, a
// file, a pipe and a live TCP connection to another process, which proves
// each works there, and checks the sender's copies still work.
func TestHandOverKinds(t *testing.T) {
	checkFds(t)
	addr := sockPath(t)

	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	unixLn, err := net.Listen("unix", addr+".app")
	if err != nil {
		t.Fatal(err)
	}
	defer unixLn.Close()
	file, err := os.CreateTemp(t.TempDir(), "f")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if _, err := file.WriteString("file contents"); err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	// A live connection: its first bytes are read here, the rest there.
	connLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := net.Dial("tcp", connLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srvConn, err := connLn.Accept()
	connLn.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer srvConn.Close()
	io.WriteString(cli, "part1")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(srvConn, buf); err != nil || string(buf) != "part1" {
		t.Fatalf("read %q, %v", buf, err)
	}

	srv := &Server{Handler: SequenceHandler(
		ListenerHandler(tcpLn, Meta{"kind": "tcp"}),
		ObjectHandler(udp.(*net.UDPConn), Meta{"kind": "udp"}),
		ListenerHandler(unixLn, Meta{"kind": "unix"}),
		FileHandler(file, Meta{"kind": "file", "name": file.Name()}),
		FileHandler(pr, Meta{"kind": "pipe"}),
		ObjectHandler(srvConn.(*net.TCPConn), Meta{"kind": "conn"}),
	)}
	serveErr := serveAt(t, srv, addr)

	c := startChild(t, "kinds", addr)
	c.expect("received tcp udp unix file pipe conn")

	// The listeners accept one connection each and the UDP socket answers
	// one datagram, in the child.
	for _, o := range []struct{ network, addr, name string }{
		{"tcp", tcpLn.Addr().String(), "tcp"},
		{"udp", udp.LocalAddr().String(), "udp"},
		{"unix", addr + ".app", "unix"},
	} {
		oc, err := net.Dial(o.network, o.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer oc.Close()
		expectReply(t, oc, o.name+" child")
		c.expect(o.name + " done")
	}
	// File: the child read it through its descriptor.
	c.expect("file file contents")
	// Pipe: written here, read there.
	io.WriteString(pw, "through the pipe\n")
	c.expect("pipe through the pipe")
	// Live connection: the byte stream goes on in the child.
	io.WriteString(cli, "part2\n")
	expectReply(t, cli, "conn child got part2")
	c.expect("conn done")
	c.wait()

	// The sender's own objects still work.
	go func() {
		if c, err := net.Dial("tcp", tcpLn.Addr().String()); err == nil {
			io.WriteString(c, "x")
			c.Close()
		}
	}()
	ac, err := tcpLn.Accept()
	if err != nil {
		t.Fatalf("sender's listener: %v", err)
	}
	ac.Close()
	if _, err := file.WriteAt([]byte("F"), 0); err != nil {
		t.Fatalf("sender's file: %v", err)
	}
	if _, err := srvConn.Write([]byte("still mine\n")); err != nil {
		t.Fatalf("sender's conn: %v", err)
	}
	expectReply(t, cli, "still mine")

	closeServer(t, srv, serveErr)
	if _, err := os.Lstat(addr); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left behind: %v", err)
	}
}

// expectReply reads one line or datagram from c, after writing a ping
// unless c already has data coming.
func expectReply(t *testing.T, c net.Conn, want string) {
	t.Helper()
	if want != "still mine" && !strings.HasPrefix(want, "conn") {
		io.WriteString(c, "ping\n")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	if got := strings.TrimSpace(string(buf[:n])); got != want {
		t.Fatalf("reply %q, want %q", got, want)
	}
}

func udpChild(fd int) error {
	pc, err := FdPacketConn(fd)
	if err != nil {
		return err
	}
	defer pc.Close()
	buf := make([]byte, 64)
	_, from, err := pc.ReadFrom(buf)
	if err != nil {
		return err
	}
	if _, err := pc.WriteTo([]byte("udp child\n"), from); err != nil {
		return err
	}
	fmt.Println("udp done")
	return nil
}

// TestAdvancedUsage follows the README's lower-level path: application data
// of more than a megabyte on the connection, then three transfers, one with
// custom meta bytes.
func TestAdvancedUsage(t *testing.T) {
	checkFds(t)
	addr := sockPath(t)
	ln, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	file, err := os.Open("graceful.go")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	data := bytes.Repeat([]byte("application state "), 80000) // 1.4 MB
	sum := sha256.Sum256(data)

	c := startChild(t, "advanced", addr, fmt.Sprint(len(data)))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := SendListenerTo(conn, ln, nil); err != nil {
		t.Fatal(err)
	}
	if err := SendFileTo(conn, file, Meta{"name": file.Name()}); err != nil {
		t.Fatal(err)
	}
	buf := new(bytes.Buffer)
	buf.WriteString("Hello, I am meta!")
	if err := SendTo(conn, int(file.Fd()), buf); err != nil {
		t.Fatal(err)
	}
	c.expect(fmt.Sprintf("data %x", sum))
	c.expect("listener <nil>")
	c.expect("file graceful.go")
	c.expect("custom Hello, I am meta!")
	conn.Close()
	c.wait()
}

// serveOnce serves one receiver, as an application does with ServeConn:
// it accepts connections on ln until one is served, then closes ln before
// that connection. The receiver's Receive thus returns only once the
// address is free for it to serve in turn.
func serveOnce(srv *Server, ln net.Listener) error {
	defer ln.Close()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		err = srv.ServeConn(conn)
		if err == nil {
			ln.Close()
			conn.Close()
			return nil
		}
		conn.Close()
		if errors.Is(err, ErrServerClosed) {
			return err
		}
	}
}

// TestServeOnce checks that a server of one receiver, built with
// ServeConn, hands its descriptors to the first receiver only, and that
// the address is free by the time Receive returns.
func TestServeOnce(t *testing.T) {
	checkFds(t)
	addr := sockPath(t)
	f := devNull(t)
	drained := make(chan struct{})
	srv := &Server{Handler: SequenceHandler(
		FileHandler(f, nil),
		CallbackHandler(func() { close(drained) }),
	)}
	ln, err := listenUnix(addr, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- serveOnce(srv, ln) }()

	c := startChild(t, "once", addr)
	c.expect("received 1")
	c.expect("listening")
	c.wait()
	<-drained
	if err := <-served; err != nil {
		t.Fatalf("serveOnce: %v", err)
	}
	// The child removed its own socket file when it exited.
	if _, err := os.Lstat(addr); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file: %v", err)
	}
}

// slowCloseListener holds Close until release is closed.
type slowCloseListener struct {
	net.Listener
	entered, release chan struct{}
	once             sync.Once
}

func (l *slowCloseListener) Close() error {
	l.once.Do(func() { close(l.entered) })
	<-l.release
	return l.Listener.Close()
}

// TestServeOnceWhileShuttingDown checks that a server of one receiver
// keeps its promise while another goroutine, started by the callback as an
// application does, shuts the Server down: ServeConn returns without
// closing the connection, so Receive returns only after the listener is
// closed; Shutdown waits for ServeConn's transfer, and interrupts nothing.
func TestServeOnceWhileShuttingDown(t *testing.T) {
	checkFds(t)
	addr := sockPath(t)
	inner, err := listenUnix(addr, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	ln := &slowCloseListener{Listener: inner, entered: make(chan struct{}), release: make(chan struct{})}
	f := devNull(t)
	srv := &Server{}
	shutdown := make(chan error, 1)
	srv.Handler = SequenceHandler(FileHandler(f, nil), CallbackHandler(func() {
		go func() { shutdown <- srv.Shutdown(context.Background()) }()
	}))
	served := make(chan error, 1)
	go func() { served <- serveOnce(srv, ln) }()
	received := make(chan error, 1)
	go func() {
		received <- Receive(addr, func(fd int, _ io.Reader) error { return unix.Close(fd) })
	}()
	// The transfer is over once serveOnce closes the listener. The bound
	// only gives a wrong Receive the time to return.
	<-ln.entered
	select {
	case err := <-received:
		close(ln.release)
		t.Fatalf("Receive returned (%v) while the listener was still open", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(ln.release)
	if err := <-received; err != nil {
		t.Fatalf("Receive: %v", err)
	}
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("serveOnce: %v", err)
	}
	if err := srv.ServeConn(&net.UnixConn{}); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeConn after Shutdown: %v, want ErrServerClosed", err)
	}
	if _, err := os.Lstat(addr); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file: %v", err)
	}
}

// TestCallbackAfterAck checks that CallbackHandler runs only once the
// receiver accepted what came before it.
func TestCallbackAfterAck(t *testing.T) {
	checkFds(t)
	addr := sockPath(t)
	f := devNull(t)
	var called sync.Mutex // locked while the callback has not run
	called.Lock()
	srv := &Server{Handler: SequenceHandler(
		FileHandler(f, nil),
		CallbackHandler(called.Unlock),
	)}
	defer closeServer(t, srv, serveAt(t, srv, addr))

	refusal := errors.New("not today")
	err := Receive(addr, func(fd int, meta io.Reader) error {
		unix.Close(fd)
		return refusal
	})
	if !errors.Is(err, refusal) {
		t.Fatalf("Receive: %v, want the callback's error", err)
	}
	if called.TryLock() {
		t.Fatal("callback ran although the receiver refused")
	}
	if err := Receive(addr, func(fd int, meta io.Reader) error { return unix.Close(fd) }); err != nil {
		t.Fatal(err)
	}
	called.Lock() // the callback ran before Receive returned
}

// TestNoServer checks that a missing and a stale socket both mean
// ErrNoServer, and that ListenAndServe replaces the stale one.
func TestNoServer(t *testing.T) {
	checkFds(t)
	addr := sockPath(t)
	cb := func(fd int, meta io.Reader) error { return unix.Close(fd) }
	if err := Receive(addr, cb); !errors.Is(err, ErrNoServer) {
		t.Fatalf("missing socket: %v", err)
	}
	staleSocket(t, addr)
	if err := Receive(addr, cb); !errors.Is(err, ErrNoServer) {
		t.Fatalf("stale socket: %v", err)
	}
	srv := &Server{Handler: SequenceHandler()}
	errc := serveAt(t, srv, addr)
	if err := Receive(addr, cb); err != nil {
		t.Fatalf("after replacing the stale socket: %v", err)
	}
	closeServer(t, srv, errc)
}

// TestDeadlinesLeftAlone checks that a transfer neither clears a deadline
// the caller set nor leaves one of its own: on either side, it sets no
// deadline at all unless its watchdog interrupts a call, which a transfer
// between two live ends never needs. (Observing a deadline's effect instead
// races its expiry against the transfer on a loaded machine.)
func TestDeadlinesLeftAlone(t *testing.T) {
	checkFds(t)
	for _, callerDeadline := range []bool{false, true} {
		a, b := socketPair(t)
		if callerDeadline {
			a.SetDeadline(time.Now().Add(time.Hour))
			b.SetDeadline(time.Now().Add(time.Hour))
		}
		sc, rc := &deadlineConn{UnixConn: a}, &deadlineConn{UnixConn: b}
		sent := make(chan error, 1)
		go func() { sent <- SendTo(sc, 0, nil) }()
		if err := ReceiveFrom(rc, func(fd int, meta io.Reader) error { return unix.Close(fd) }); err != nil {
			t.Fatal(err)
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		if len(sc.set) > 0 || len(rc.set) > 0 {
			t.Errorf("caller's deadline %v: the sender set %q, the receiver %q", callerDeadline, sc.set, rc.set)
		}
		// Nor is a past deadline left: data ready to read is read.
		a.Write([]byte("x"))
		if _, err := b.Read(make([]byte, 1)); err != nil {
			t.Errorf("caller's deadline %v: read after the transfer: %v", callerDeadline, err)
		}
		a.Close()
		b.Close()
	}
}

// deadlineConn records the deadlines set on a connection. It is used by one
// goroutine at a time.
type deadlineConn struct {
	*net.UnixConn
	set []string
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.set = append(c.set, "SetDeadline "+t.String())
	return c.UnixConn.SetDeadline(t)
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.set = append(c.set, "SetReadDeadline "+t.String())
	return c.UnixConn.SetReadDeadline(t)
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.set = append(c.set, "SetWriteDeadline "+t.String())
	return c.UnixConn.SetWriteDeadline(t)
}

// devNull opens /dev/null for a test to send, closed when the test ends.
func devNull(t testing.TB) *os.File {
	t.Helper()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestExitInCallback hands a listener over 20 times (100 in the long form)
// from a program that
// exits in the CallbackHandler that follows it: the successor must hold
// the listener and succeed every time, the transfer never cut short.
func TestExitInCallback(t *testing.T) {
	checkFds(t)
	addr := sockPath(t)
	lost, rounds := 0, sweep(20, 100)
	for i := 0; i < rounds; i++ {
		c := startChild(t, "exitincallback", addr)
		c.expect("listening")
		var ln net.Listener
		err := Receive(addr, func(fd int, meta io.Reader) error {
			var err error
			ln, err = FdListener(fd)
			return err
		})
		if err != nil || ln == nil {
			lost++
			t.Errorf("hand-over %d: %v", i, err)
		}
		if ln != nil {
			ln.Close()
		}
		c.wait()
	}
	if lost > 0 {
		t.Errorf("%d of %d hand-overs lost", lost, rounds)
	}
}
