//go:build linux

package graceful

// Hostile peers and faults: strangers, liars, crashes and silence on the
// other side. Every test checks that no descriptor and no goroutine outlives
// it, and where descriptors were sent, that no copy survives anywhere.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// noLeaks fails the test if it ends with more descriptors or goroutines than
// it began with. Goroutines end asynchronously (a server's connection), so it
// waits a little for their number to settle.
func noLeaks(t *testing.T) {
	t.Helper()
	checkFds(t)
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		var after int
		for i := 0; i < 300; i++ {
			if after = runtime.NumGoroutine(); after <= before {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines leaked: %d before, %d after:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	})
}

// A probe is a pipe whose write end the tests send. Once its read end
// reports a hang-up, no copy of the write end is open anywhere: not in this
// process, not in a peer, not in flight in a socket's queue.
type probe struct{ r, w int }

func newProbe(t testing.TB) *probe {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	p := &probe{r: fds[0], w: fds[1]}
	t.Cleanup(func() {
		unix.Close(p.r)
		if p.w >= 0 {
			unix.Close(p.w)
		}
	})
	return p
}

// fds returns n times the probe's write end, to attach to a message.
func (p *probe) fds(n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fds[i] = p.w
	}
	return fds
}

// checkClosed closes the test's own write end and fails the test unless
// every other copy gets closed too.
func (p *probe) checkClosed(t testing.TB) {
	t.Helper()
	unix.Close(p.w)
	p.w = -1
	// Nothing is written to the pipe: poll wakes up at the hang-up (or
	// for a signal, EINTR).
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		pfd := []unix.PollFd{{Fd: int32(p.r), Events: unix.POLLIN}}
		if n, _ := unix.Poll(pfd, int(time.Until(deadline).Milliseconds())+1); n > 0 && pfd[0].Revents&unix.POLLHUP != 0 {
			return
		}
	}
	t.Error("a copy of a sent descriptor is still open somewhere")
}

// rawSend writes data with fds attached in one sendmsg, as a hostile peer
// does.
func rawSend(t testing.TB, c *net.UnixConn, data []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(data, oob, nil); err != nil {
		t.Errorf("sendmsg: %v", err)
	}
}

// answer is a sender's answer to the hello: version 1 picked.
func answer() []byte {
	b := make([]byte, ackLen)
	putAck(b, version, statusOK, 0)
	return b
}

// hello is a receiver's hello.
func hello() []byte {
	b := make([]byte, helloLen)
	putHello(b)
	return b
}

// header returns a frame header.
func header(flags byte, nfds, bodyLen int) []byte {
	b := make([]byte, hdrLen)
	putHeader(b, flags, nfds, bodyLen)
	return b
}

// metaBody returns a frame body holding metas.
func metaBody(metas ...[]byte) []byte {
	var b []byte
	for _, m := range metas {
		b = append(b, byte(len(m)>>24), byte(len(m)>>16), byte(len(m)>>8), byte(len(m)))
		b = append(b, m...)
	}
	return b
}

// fdHandler is a Handler that writes fd with meta, which the caller keeps.
func fdHandler(fd int, meta io.WriterTo) Handler {
	return func(_ net.Conn, w *ResponseWriter) error {
		return w.Write(fd, meta)
	}
}

// receiveAll receives transfers on conn with c until the peer closes it.
func receiveAll(c *Client, conn net.Conn, cb func(fd int, meta io.Reader) error) error {
	_, err := c.receive(context.Background(), conn, cb, true)
	return err
}

// closer is a callback that closes what it gets and counts it.
type closer struct {
	mu sync.Mutex
	n  int
}

func (c *closer) cb(fd int, meta io.Reader) error {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return unix.Close(fd)
}

func (c *closer) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// logBuf collects a log (a Server's or an Instance's ErrorLog, a child's
// stderr) that a test reads while it is written.
type logBuf struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{} // closed at the next write, if not nil
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return l.b.Write(p)
}

// waitFor waits until the log holds s.
func (l *logBuf) waitFor(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		l.mu.Lock()
		if strings.Contains(l.b.String(), s) {
			l.mu.Unlock()
			return
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("no %q in the log:\n%s", s, l.String())
		}
	}
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serve runs srv at addr until the test ends. It listens before returning,
// so no test connection is needed to wait for the server.
func serve(t *testing.T, srv *Server, addr string) {
	t.Helper()
	ln, err := listenUnix(addr, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
}

// shutdown waits for the server's connections to end.
func shutdown(t *testing.T, srv *Server) {
	t.Helper()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// abstractAddr is an address in the abstract namespace, unique to the test.
func abstractAddr(t *testing.T) string {
	return fmt.Sprintf("@graceful-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
}

// TestSocketFileMode checks that ListenAndServe's socket file is 0600, of
// this process's group, under a umask that would otherwise let everyone
// in, or keep even the owner out.
func TestSocketFileMode(t *testing.T) {
	noLeaks(t)
	for _, umask := range []int{0, 0o077, 0o777} {
		addr := sockPath(t)
		old := syscall.Umask(umask)
		srv := &Server{Handler: SequenceHandler()}
		errc, err := listen(srv, addr)
		syscall.Umask(old)
		if err != nil {
			t.Fatalf("umask %o: %v", umask, err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(addr, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o7777 != 0o600 || int(st.Gid) != os.Getegid() {
			t.Errorf("umask %o: socket file mode %o gid %d, want socket 600 gid %d", umask, st.Mode, st.Gid, os.Getegid())
		}
		closeServer(t, srv, errc)
	}
}

// TestAddressNeverStolen checks that ListenAndServe replaces only a stale
// socket: it leaves a live server, and a path that is not a socket, alone.
func TestAddressNeverStolen(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	for _, addr := range []string{sockPath(t), abstractAddr(t)} {
		first := &Server{Handler: fdHandler(p.w, Meta{"server": "first"})}
		serve(t, first, addr)
		var before, after unix.Stat_t
		if !isAbstract(addr) {
			unix.Lstat(addr, &before)
		}
		second := &Server{Handler: fdHandler(p.w, Meta{"server": "second"})}
		if err := second.ListenAndServe(addr); !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("second ListenAndServe at %s: %v, want EADDRINUSE", addr, err)
		}
		if !isAbstract(addr) {
			if err := unix.Lstat(addr, &after); err != nil || after.Ino != before.Ino {
				t.Fatalf("the first server's socket file was replaced: %v", err)
			}
		}
		var got []string
		err := Receive(addr, func(fd int, meta io.Reader) error {
			m, err := MetaFrom(meta)
			got = append(got, m["server"])
			unix.Close(fd)
			return err
		})
		if err != nil || len(got) != 1 || got[0] != "first" {
			t.Fatalf("after the second ListenAndServe: received %q, %v", got, err)
		}
		shutdown(t, first)
	}

	dir := t.TempDir()
	for _, kind := range []string{"file", "directory", "symlink"} {
		addr := filepath.Join(dir, kind)
		var err error
		switch kind {
		case "file":
			err = os.WriteFile(addr, []byte("precious"), 0o600)
		case "directory":
			err = os.Mkdir(addr, 0o700)
		case "symlink":
			// Even a link to a stale socket is not the server's to remove.
			stale := sockPath(t)
			staleSocket(t, stale)
			err = os.Symlink(stale, addr)
		}
		if err != nil {
			t.Fatal(err)
		}
		before, _ := os.Lstat(addr)
		if err := (&Server{Handler: SequenceHandler()}).ListenAndServe(addr); !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("ListenAndServe on a %s: %v, want EADDRINUSE", kind, err)
		}
		after, err := os.Lstat(addr)
		if err != nil || !os.SameFile(before, after) {
			t.Errorf("the %s at the address was replaced: %v", kind, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "file")); string(b) != "precious" {
		t.Errorf("the file at the address now holds %q, %v", b, err)
	}

	// A stale socket is replaced, by a file of the right mode.
	addr := sockPath(t)
	staleSocket(t, addr)
	os.Chmod(addr, 0o777)
	srv := &Server{Handler: SequenceHandler()}
	errc := serveAt(t, srv, addr)
	if fi, err := os.Lstat(addr); err != nil || fi.Mode() != fs.ModeSocket|0o600 {
		t.Errorf("replaced socket file: %v, %v", fi.Mode(), err)
	}
	closeServer(t, srv, errc)
	p.checkClosed(t)
}

// TestModeThroughSymlink races ListenAndServe's setting of the socket
// file's mode and group against someone who may write the directory and
// keeps swapping the path for a symlink to a victim file. The victim must
// never change: an attacker must not turn a root server into a chmod of
// their choosing. On code that follows the link, a thousand rounds (its long
// form; 250 by default) hit the window many times over.
func TestModeThroughSymlink(t *testing.T) {
	noLeaks(t)
	gid := os.Getegid() + 1
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	var want unix.Stat_t
	unix.Stat(victim, &want)
	addr := filepath.Join(dir, "s")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tmp := filepath.Join(dir, "tmp")
		for {
			select {
			case <-stop:
				return
			default:
			}
			os.Remove(tmp)
			os.Symlink(victim, tmp)
			os.Rename(tmp, addr)
		}
	}()
	for range sweep(250, 1000) {
		os.Remove(addr)
		if ln, err := listenUnix(addr, 0o606, gid); err == nil {
			ln.Close()
		}
	}
	close(stop)
	<-done
	var st unix.Stat_t
	if err := unix.Stat(victim, &st); err != nil || st.Mode != want.Mode || st.Gid != want.Gid {
		t.Fatalf("the victim file went from mode %o gid %d to %o gid %d (%v)", want.Mode, want.Gid, st.Mode, st.Gid, err)
	}
}

// needRoot skips a test that runs a peer as another user. A test calls it
// first, before it acquires anything.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: running a peer as nobody needs root")
	}
}

// nobodyCmd returns a command that runs a copy of the test binary as the
// user nobody. The test binary lives in a private directory, so it is copied
// to one that nobody may enter.
func nobodyCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	needRoot(t)
	dir, err := os.MkdirTemp("", "graceful-bin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "graceful.test")
	src, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(bin, src, 0o755)
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	return cmd
}

const nobody = 65534

// allowNobody admits nobody besides the default.
func allowNobody(p Peer) error {
	if p.UID == nobody {
		return nil
	}
	return sameUser(p)
}

// errKind names an error for a child's output.
func errKind(err error) string {
	switch {
	case err == nil:
		return "nil"
	case errors.Is(err, ErrPeerNotAllowed):
		return "peer-refused"
	case errors.Is(err, errTruncated) && errors.Is(err, ErrLimit):
		return "truncated"
	case errors.Is(err, ErrAborted):
		return ErrAborted.Error()
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected-eof"
	}
	return err.Error()
}

// TestStrangerClient checks that a server on an abstract socket, which has
// no file mode to protect it, serves no other user unless Allow admits it.
func TestStrangerClient(t *testing.T) {
	needRoot(t)
	noLeaks(t)
	p := newProbe(t)
	addr := abstractAddr(t)
	var lb logBuf
	srv := &Server{Handler: fdHandler(p.w, nil), ErrorLog: log.New(&lb, "", 0)}
	serve(t, srv, addr)
	c := startChildCmd(t, nobodyCmd(t, addr), "receive")
	// The server closes the connection unserved.
	c.expect("received 0 unexpected-eof")
	c.wait()
	shutdown(t, srv)
	if !strings.Contains(lb.String(), ErrPeerNotAllowed.Error()) {
		t.Errorf("server log does not say it refused the peer:\n%s", lb.String())
	}

	srv = &Server{Handler: fdHandler(p.w, nil), Allow: allowNobody}
	serve(t, srv, addr+"-allow")
	c = startChildCmd(t, nobodyCmd(t, addr+"-allow"), "receive")
	c.expect("received 1 nil")
	c.wait()
	shutdown(t, srv)
	p.checkClosed(t)
}

// TestStrangerServer checks that a client does not trust a server of another
// user unless Allow admits it.
func TestStrangerServer(t *testing.T) {
	needRoot(t)
	noLeaks(t)
	addr := abstractAddr(t)
	c := startChildCmd(t, nobodyCmd(t, addr), "serve")
	c.expect("listening")
	var got closer
	if err := Receive(addr, got.cb); !errors.Is(err, ErrPeerNotAllowed) || got.count() != 0 {
		t.Fatalf("Receive from nobody: %d descriptors, %v; want ErrPeerNotAllowed", got.count(), err)
	}
	var uid string
	err := (&Client{Allow: allowNobody}).Receive(t.Context(), addr, func(fd int, meta io.Reader) error {
		m, err := MetaFrom(meta)
		uid = m["uid"]
		unix.Close(fd)
		return err
	})
	if err != nil || uid != strconv.Itoa(nobody) {
		t.Fatalf("Receive with Allow: server uid %q, %v", uid, err)
	}
	c.wait()
}

// sendFds runs one transfer of n copies of fd, each with meta, on conn, as a
// server's handler would, and returns what the sender learned.
func sendFds(conn net.Conn, fd, n int, meta io.WriterTo) error {
	return transfer(context.Background(), conn, nil, DefaultTimeout, func(s *ResponseWriter) error {
		for i := 0; i < n; i++ {
			if err := s.Write(fd, meta); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestLimits checks that a sender exceeding the receiver's limits is refused
// and told so, and that every descriptor it sent is closed.
func TestLimits(t *testing.T) {
	noLeaks(t)
	big := Meta{"pad": strings.Repeat("x", 1000)}
	for _, tc := range []struct {
		name   string
		client Client
		n      int
		meta   io.WriterTo
	}{
		{"descriptors", Client{maxFds: 100}, 300, nil},
		// The sender is still writing when the receiver gives up.
		{"descriptors while sending", Client{maxFds: 100}, 3000, big},
		{"MaxMetaSize", Client{MaxMetaSize: 16}, 3, bytes.NewBufferString(strings.Repeat("m", 17))},
		{"MaxMetaSize while sending", Client{MaxMetaSize: 16}, 1, bytes.NewBuffer(make([]byte, 4<<20))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProbe(t)
			a, b := socketPair(t)
			sent := make(chan error, 1)
			go func() { sent <- sendFds(a, p.w, tc.n, tc.meta) }()
			var got closer
			err := tc.client.ReceiveFrom(t.Context(), b, got.cb)
			b.Close()
			// Frames within the limit may have been delivered.
			if !errors.Is(err, ErrLimit) || got.count() > max(tc.client.maxFds, 0) {
				t.Errorf("receiver: %d descriptors, %v; want ErrLimit", got.count(), err)
			}
			if err := <-sent; !errors.Is(err, ErrRejected) {
				t.Errorf("sender: %v, want ErrRejected", err)
			}
			a.Close()
			p.checkClosed(t)
		})
	}
	t.Run("one meta past the limit", func(t *testing.T) {
		p := newProbe(t)
		a, b := socketPair(t)
		sent := make(chan error, 1)
		go func() {
			sent <- transfer(context.Background(), a, nil, DefaultTimeout, func(s *ResponseWriter) error {
				s.Write(p.w, nil)
				s.Write(p.w, bytes.NewBufferString(strings.Repeat("m", 17)))
				return s.Write(p.w, nil)
			})
		}()
		var got closer
		err := (&Client{MaxMetaSize: 16}).ReceiveFrom(t.Context(), b, got.cb)
		b.Close()
		if !errors.Is(err, ErrLimit) || got.count() != 0 {
			t.Errorf("receiver: %d descriptors, %v; want ErrLimit before any", got.count(), err)
		}
		if err := <-sent; !errors.Is(err, ErrRejected) {
			t.Errorf("sender: %v, want ErrRejected", err)
		}
		a.Close()
		p.checkClosed(t)
	})
}

// silentServer listens at addr and accepts connections on which it never
// says a word; they stay open until the test ends. accepted receives each.
func silentServer(t *testing.T, addr string) <-chan *net.UnixConn {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan *net.UnixConn, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conns []*net.UnixConn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			conns = append(conns, c)
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return accepted
}

// TestNoHang checks that a server that never speaks, or stops in the middle
// of a transfer, cannot hold Receive beyond its timeout, and that a context
// ends it.
func TestNoHang(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	short := &Client{Timeout: 50 * time.Millisecond}
	t.Run("never speaks", func(t *testing.T) {
		addr := sockPath(t)
		silentServer(t, addr)
		if err := short.Receive(t.Context(), addr, (&closer{}).cb); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Receive: %v, want a timeout", err)
		}
	})
	// The peer's words are in the socket before the receiver starts, so
	// that the timeout measures only the silence after them.
	for _, tc := range []struct {
		name  string
		speak func(*net.UnixConn)
		got   int // descriptors delivered before the silence
	}{
		{"header only", func(c *net.UnixConn) {
			rawSend(t, c, header(flagEnd, 2, 2*(4+10))[:5], p.fds(2)...)
		}, 0},
		{"mid-body", func(c *net.UnixConn) {
			rawSend(t, c, header(flagEnd, 2, 2*(4+10)), p.fds(2)...)
			rawSend(t, c, []byte{0, 0, 0, 10, 'm'})
		}, 0},
		{"between frames", func(c *net.UnixConn) {
			rawSend(t, c, header(0, 1, 0), p.fds(1)...)
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := socketPair(t)
			defer a.Close()
			defer b.Close()
			rawSend(t, a, answer())
			tc.speak(a)
			var got closer
			client := short
			if tc.got > 0 {
				// A receiver stalled as long as the timeout before its
				// first read would time out with none: a margin that a
				// loaded machine does not reach.
				client = &Client{Timeout: 500 * time.Millisecond}
			}
			err := client.ReceiveFrom(t.Context(), b, got.cb)
			if !errors.Is(err, os.ErrDeadlineExceeded) || got.count() != tc.got {
				t.Errorf("ReceiveFrom: %d descriptors, %v; want %d and a timeout", got.count(), err, tc.got)
			}
		})
	}
	t.Run("Client.Receive's ctx", func(t *testing.T) {
		addr := sockPath(t)
		accepted := silentServer(t, addr)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-accepted
			cancel()
		}()
		err := (&Client{Timeout: -1}).Receive(ctx, addr, (&closer{}).cb)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Client.Receive: %v, want context.Canceled", err)
		}
	})
	t.Run("Client.ReceiveFrom's ctx", func(t *testing.T) {
		a, b := socketPair(t)
		defer a.Close()
		defer b.Close()
		rawSend(t, a, answer())
		// A frame that announces a body that never comes.
		rawSend(t, a, header(flagEnd, 1, 5), p.fds(1)...)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		var got closer
		err := (&Client{Timeout: -1}).ReceiveFrom(ctx, b, got.cb)
		if !errors.Is(err, context.DeadlineExceeded) || got.count() != 0 {
			t.Errorf("Client.ReceiveFrom: %d descriptors, %v; want none and context.DeadlineExceeded", got.count(), err)
		}
	})
	p.checkClosed(t)
}

// TestServerNoHang checks that a receiver that never reads or never
// acknowledges cannot hold a server connection beyond the server's timeout,
// and that Shutdown ends such a connection when its context ends.
func TestServerNoHang(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	big := Meta{"pad": strings.Repeat("x", 1000)}
	for _, tc := range []struct {
		name  string
		srv   *Server
		read  bool // whether the stuck receiver reads what comes
		quiet bool // whether it says no hello
	}{
		{"never says hello", &Server{Timeout: 50 * time.Millisecond, Handler: fdHandler(p.w, nil)}, false, true},
		{"never acknowledges", &Server{Timeout: 50 * time.Millisecond, Handler: fdHandler(p.w, nil)}, true, false},
		{"never reads", &Server{Timeout: 50 * time.Millisecond, Handler: Handler(func(_ net.Conn, w *ResponseWriter) error {
			for i := 0; i < 5000; i++ {
				if err := w.Write(p.w, big); err != nil {
					return err
				}
			}
			return nil
		})}, false, false},
		{"Shutdown", &Server{Timeout: -1, Handler: fdHandler(p.w, nil)}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := sockPath(t)
			serve(t, tc.srv, addr)
			c, err := net.Dial("unix", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if !tc.quiet {
				if _, err := c.Write(hello()); err != nil {
					t.Fatal(err)
				}
			}
			hdr := make([]byte, ackLen+hdrLen)
			if tc.read {
				// Now the server waits for the acknowledgement. A plain read
				// takes no descriptors: the kernel closes them.
				if _, err := io.ReadFull(c, hdr); err != nil {
					t.Fatal(err)
				}
			}
			if tc.srv.Timeout < 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				if err := tc.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Shutdown: %v, want the context's error", err)
				}
			}
			// The server ends the connection: the stream ends.
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Errorf("after the server gave up: %v", err)
			}
		})
	}
	// ServeConn's connection is the caller's: Close and Shutdown interrupt
	// its transfer without closing it, and leave no deadline on it.
	for _, stop := range []string{"Close", "Shutdown"} {
		t.Run("ServeConn/"+stop, func(t *testing.T) {
			srv := &Server{Timeout: -1, Handler: fdHandler(p.w, nil)}
			a, b := socketPair(t)
			defer a.Close()
			defer b.Close()
			served := make(chan error, 1)
			go func() { served <- srv.ServeConn(a) }()
			if _, err := b.Write(hello()); err != nil {
				t.Fatal(err)
			}
			// The server waits for the acknowledgement now.
			if _, err := io.ReadFull(b, make([]byte, ackLen+hdrLen)); err != nil {
				t.Fatal(err)
			}
			if stop == "Close" {
				srv.Close()
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Shutdown: %v, want the context's error", err)
				}
			}
			select {
			case err := <-served:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("ServeConn: %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("ServeConn still waits after %s", stop)
			}
			// The connection still carries data, both ways.
			if _, err := b.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(a, make([]byte, 1)); err != nil {
				t.Errorf("reading the caller's connection after ServeConn: %v", err)
			}
			if _, err := a.Write([]byte("y")); err != nil {
				t.Errorf("writing the caller's connection after ServeConn: %v", err)
			}
		})
	}
	p.checkClosed(t)
}

// TestShutdownIgnoredHandler checks that Shutdown returns once its context
// ends, as net/http's does, even while a handler ignores its connection: it
// closes the connections and does not wait for such handlers.
func TestShutdownIgnoredHandler(t *testing.T) {
	noLeaks(t)
	addr := sockPath(t)
	started, release := make(chan struct{}), make(chan struct{})
	srv := &Server{Handler: Handler(func(net.Conn, *ResponseWriter) error {
		close(started)
		<-release
		return nil
	})}
	errc := serveAt(t, srv, addr)
	c, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(hello()); err != nil {
		t.Fatal(err)
	}
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	// The handler is released once Shutdown has returned; a Shutdown that
	// waits for it gets it released after a long while, and fails.
	select {
	case err = <-shut:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatalf("Shutdown returned only once the handler did: %v", <-shut)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown: %v, want the context's error", err)
	}
	// The connection was closed all the same: the stream ends.
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Errorf("after Shutdown: %v", err)
	}
	close(release)
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown once the handler returned: %v", err)
	}
	if err := <-errc; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
}

// passCred makes the kernel attach the sender's credentials to every
// message c receives, which takes room from the control buffer.
func passCred(t testing.TB, c *net.UnixConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBadInput feeds a receiver, through a real socket, streams that break
// the protocol in each way it can be broken, and checks that it fails with
// the right error and that no descriptor the peer sent stays open.
func TestBadInput(t *testing.T) {
	noLeaks(t)
	random := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(4, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	random[0] = 0xa5 // not the version, whatever the seed
	m17 := []byte(strings.Repeat("m", 17))
	wrongVersion := header(flagEnd, 1, 0)
	wrongVersion[0] = version + 1
	for _, tc := range []struct {
		name   string
		client Client
		all    bool // all transfers until the end, rather than ReceiveFrom
		passCr bool // SO_PASSCRED on the receiver's socket
		// noAnswer leaves the answer to the hello to the peer function.
		noAnswer bool
		peer     func(t *testing.T, c *net.UnixConn, p *probe)
		want     error
		got      int // descriptors the callback gets before the error
	}{
		{name: "random bytes", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, random, p.fds(3)...)
		}, want: ErrProtocol},
		{name: "garbage after a transfer", all: true, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(flagEnd, 0, 0))
			rawSend(t, c, answer())
			rawSend(t, c, append(header(flagEnd, 0, 0), random[:100]...), p.fds(1)...)
		}, want: ErrProtocol},
		{name: "garbage body", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, append(header(flagEnd, 2, 16), 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12), p.fds(2)...)
		}, want: ErrProtocol},
		{name: "garbage meta length", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, append(header(flagEnd, 2, 16), bytes.Repeat([]byte{0xff}, 16)...), p.fds(2)...)
		}, want: ErrLimit},
		{name: "descriptors without a frame", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, []byte{version}, p.fds(2)...)
			c.CloseWrite()
		}, want: io.ErrUnexpectedEOF},
		{name: "descriptors with the body", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(flagEnd, 1, 4+3), p.fds(1)...)
			rawSend(t, c, metaBody([]byte("abc")), p.fds(1)...)
		}, want: ErrProtocol},
		{name: "descriptors between frames", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(0, 1, 0), p.fds(1)...)
			rawSend(t, c, []byte{0}, p.fds(1)...)
			rawSend(t, c, header(flagEnd, 0, 0))
		}, want: ErrProtocol, got: 1},
		{name: "more descriptors announced than sent", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(flagEnd, 3, 0), p.fds(2)...)
		}, want: ErrProtocol},
		{name: "fewer descriptors announced than sent", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(flagEnd, 1, 0), p.fds(3)...)
		}, want: ErrProtocol},
		{name: "more than a frame may carry", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(flagEnd, maxBatch+1, 0), p.fds(1)...)
		}, want: ErrProtocol},
		{name: "wrong version", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, wrongVersion, p.fds(1)...)
		}, want: ErrProtocol},
		{name: "unknown flags", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(0x80, 1, 0), p.fds(1)...)
		}, want: ErrProtocol},
		{name: "body without descriptors", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, append(header(flagEnd, 0, 4), 0, 0, 0, 0))
		}, want: ErrProtocol},
		{name: "meta length past the limit", client: Client{MaxMetaSize: 16}, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, append(header(flagEnd, 1, 4+17), metaBody(m17)...), p.fds(1)...)
		}, want: ErrLimit},
		{name: "one meta length past the limit", client: Client{MaxMetaSize: 16}, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, append(header(flagEnd, 2, 4+17+4+1), metaBody(m17, []byte("x"))...), p.fds(2)...)
		}, want: ErrLimit},
		{name: "body of 4 GiB announced", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(flagEnd, 1, 1<<32-1), p.fds(1)...)
		}, want: ErrLimit},
		{name: "header cut short", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(flagEnd, 1, 0)[:5], p.fds(1)...)
			c.CloseWrite()
		}, want: io.ErrUnexpectedEOF},
		{name: "no end frame", peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(flagSync, 1, 0), p.fds(1)...)
			rawSend(t, c, header(0, 2, 0), p.fds(2)...)
			c.CloseWrite()
		}, want: io.ErrUnexpectedEOF, got: 3},
		{name: "answer picks an unknown version", noAnswer: true, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			b := answer()
			b[0] = maxVersion + 1
			rawSend(t, c, append(b, header(flagEnd, 1, 0)...), p.fds(1)...)
		}, want: ErrProtocol},
		{name: "answer refuses", noAnswer: true, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			b := make([]byte, ackLen)
			putAck(b, 0, statusRefused, 5)
			rawSend(t, c, append(b, "vexed"...))
		}, want: errNoVersion},
		{name: "answer with descriptors", noAnswer: true, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, append(answer(), header(flagEnd, 0, 0)...), p.fds(2)...)
		}, want: ErrProtocol},
		{name: "answer with a message", noAnswer: true, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			b := answer()
			b[3] = 3
			rawSend(t, c, append(b, "abc"...))
		}, want: ErrProtocol},
		{name: "answer cut short", noAnswer: true, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, answer()[:2])
			c.CloseWrite()
		}, want: io.ErrUnexpectedEOF},
		// Not bad input: a full batch on a socket whose credentials
		// messages take room in the control buffer.
		{name: "full batch with credentials", passCr: true, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, header(flagEnd, maxBatch, 0), p.fds(maxBatch)...)
		}, got: maxBatch},
		{name: "meta of a body with credentials", passCr: true, peer: func(t *testing.T, c *net.UnixConn, p *probe) {
			rawSend(t, c, append(header(flagEnd, 1, 4+3), metaBody([]byte("abc"))...), p.fds(1)...)
		}, got: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProbe(t)
			a, b := socketPair(t)
			if tc.passCr {
				passCred(t, b)
			}
			if !tc.noAnswer {
				rawSend(t, a, answer())
			}
			tc.peer(t, a, p)
			var got closer
			var err error
			if tc.all {
				err = receiveAll(&tc.client, b, got.cb)
			} else {
				err = tc.client.ReceiveFrom(t.Context(), b, got.cb)
			}
			if tc.want == nil && err != nil || !errors.Is(err, tc.want) || got.count() != tc.got {
				t.Errorf("receiver: %d descriptors, %v; want %d, %v", got.count(), err, tc.got, tc.want)
			}
			if errors.Is(err, ErrLimit) {
				// The peer is told why.
				a.SetReadDeadline(time.Now().Add(10 * time.Second))
				ack := make([]byte, helloLen+ackLen)
				if _, err := io.ReadFull(a, ack); err != nil || ack[helloLen+1] != statusRefused {
					t.Errorf("peer read %v, %v; want a refusal", ack, err)
				}
			}
			a.Close()
			b.Close()
			p.checkClosed(t)
		})
	}
	t.Run("announced body not allocated", func(t *testing.T) {
		// 16 MiB announced, within the limits, and 4 bytes sent.
		p := newProbe(t)
		a, b := socketPair(t)
		rawSend(t, a, answer())
		rawSend(t, a, append(header(flagEnd, maxBatch, maxBatch*(4+defaultMaxMetaSize)), 0, 0, 0, 1), p.fds(maxBatch)...)
		a.CloseWrite()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := ReceiveFrom(b, (&closer{}).cb)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("ReceiveFrom: %v, want io.ErrUnexpectedEOF", err)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
			t.Errorf("the receiver allocated %d bytes for 4 that arrived", n)
		}
		a.Close()
		b.Close()
		p.checkClosed(t)
	})
	t.Run("no callback", func(t *testing.T) {
		p := newProbe(t)
		a, b := socketPair(t)
		rawSend(t, a, answer())
		rawSend(t, a, header(flagEnd, 1, 0), p.fds(1)...)
		if err := ReceiveFrom(b, nil); err == nil {
			t.Error("descriptors for a nil callback were taken")
		}
		a.Close()
		b.Close()
		p.checkClosed(t)
	})
}

// ownFdsInUse counts the descriptors of a child once the runtime's poller
// descriptors, which open on first use, are open.
func ownFdsInUse() (int, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	r.Close()
	w.Close()
	return countOwnFds(), nil
}

// countOwnFds counts the descriptors of this process, for children.
func countOwnFds() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents) - 1
}

// TestTruncated checks MSG_CTRUNC as it happens: a receiver whose descriptor
// table cannot hold a batch gets only part of it from the kernel. It must
// fail, deliver none of the batch, and close the part it got.
func TestTruncated(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	addr := sockPath(t)
	var lb logBuf
	srv := &Server{ErrorLog: log.New(&lb, "", 0), Handler: Handler(func(_ net.Conn, w *ResponseWriter) error {
		for i := 0; i < maxBatch; i++ {
			if err := w.Write(p.w, nil); err != nil {
				return err
			}
		}
		return nil
	})}
	serve(t, srv, addr)
	c := startChild(t, "fulltable", addr)
	c.expect("received 0 truncated leaked 0")
	c.wait()
	shutdown(t, srv)
	p.checkClosed(t)
	// The sender is told why.
	if !strings.Contains(lb.String(), ErrRejected.Error()) || !strings.Contains(lb.String(), errTruncated.Error()) {
		t.Errorf("the server's log: %q, want a rejection for truncation", lb.String())
	}
}

// manyFds is a handler that sends n copies of fd, each with half a kilobyte
// of meta, so that a transfer is far larger than a socket's buffer.
func manyFds(fd, n int) Handler {
	meta := Meta{"pad": strings.Repeat("p", 500)}
	return Handler(func(_ net.Conn, w *ResponseWriter) error {
		for i := 0; i < n; i++ {
			if err := w.Write(fd, meta); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestSenderKilled kills the sender in the middle of a transfer of 10,000
// descriptors: the receiver fails, and keeps no descriptor it did not hand
// to its callback.
func TestSenderKilled(t *testing.T) {
	noLeaks(t)
	addr := sockPath(t)
	c := startChild(t, "server10k", addr)
	c.expect("listening")
	n := 0
	err := Receive(addr, func(fd int, meta io.Reader) error {
		if n++; n == 5000 {
			// Most of the transfer is not even written yet.
			c.cmd.Process.Signal(syscall.SIGKILL)
			c.cmd.Wait()
		}
		return unix.Close(fd)
	})
	if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) || n >= 10000 {
		t.Fatalf("Receive from a killed sender: %d descriptors, %v; want an error", n, err)
	}
	t.Logf("%d descriptors before: %v", n, err)
}

// TestReceiverKilled kills a receiver in the middle of a transfer of 10,000
// descriptors: the server serves the next one all of them, and no copy for
// the dead one stays open.
func TestReceiverKilled(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	addr := sockPath(t)
	var lb logBuf
	srv := &Server{Handler: manyFds(p.w, 10000), ErrorLog: log.New(&lb, "", 0)}
	serve(t, srv, addr)
	c := startChild(t, "stuckreceiver", addr)
	c.expect("got 2000")
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.cmd.Wait()
	var got closer
	if err := Receive(addr, got.cb); err != nil || got.count() != 10000 {
		t.Fatalf("next receiver: %d descriptors, %v", got.count(), err)
	}
	shutdown(t, srv)
	if lb.String() == "" {
		t.Error("the server did not notice the receiver's death")
	}
	p.checkClosed(t)
}

// TestCallbackFails makes the callback fail, by an error and by a panic, at
// the 5th of 300 descriptors: Receive returns the error or lets the panic
// go on, the sender learns the transfer failed, and the other 295 are closed.
func TestCallbackFails(t *testing.T) {
	noLeaks(t)
	boom := errors.New("boom")
	for _, panics := range []bool{false, true} {
		t.Run(fmt.Sprint("panic=", panics), func(t *testing.T) {
			p := newProbe(t)
			addr := sockPath(t)
			var lb logBuf
			srv := &Server{Handler: manyFds(p.w, 300), ErrorLog: log.New(&lb, "", 0)}
			serve(t, srv, addr)
			n := 0
			cb := func(fd int, meta io.Reader) error {
				unix.Close(fd)
				if n++; n == 5 {
					if panics {
						panic(boom)
					}
					return boom
				}
				return nil
			}
			var err error
			var recovered any
			func() {
				defer func() { recovered = recover() }()
				err = Receive(addr, cb)
			}()
			if panics && recovered != boom || !panics && (!errors.Is(err, boom) || recovered != nil) || n != 5 {
				t.Fatalf("Receive: %v, panic %v, after %d descriptors", err, recovered, n)
			}
			shutdown(t, srv)
			if !panics && !strings.Contains(lb.String(), ErrRejected.Error()) {
				t.Errorf("the sender was not told it was refused; its log:\n%s", lb.String())
			}
			if panics && lb.String() == "" {
				t.Error("the sender did not notice the failure")
			}
			p.checkClosed(t)
		})
	}
}

// TestRogueClients has clients send garbage, descriptors and lies to a
// server, and checks that it closes what they sent and serves the next
// client correctly.
func TestRogueClients(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	q := newProbe(t) // what the rogues send
	addr := sockPath(t)
	srv := &Server{Handler: fdHandler(p.w, Meta{"k": "v"})}
	serve(t, srv, addr)
	random := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(2, 4))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	random[0] = 0xa5
	// Idle connections do not keep others from being served.
	var idle []net.Conn
	for i := 0; i < 50; i++ {
		c, err := net.Dial("unix", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	for i, rogue := range [][]byte{
		random,
		{},                                   // says nothing
		{version, statusOK},                  // half an acknowledgement
		{version, 7, 0, 0},                   // unknown status
		{version + 1, statusOK, 0, 0},        // wrong version
		{version, statusRefused, 0xff, 0xff}, // refusal too long
		{version, statusRefused, 0, 10, 'x'}, // refusal cut short
	} {
		for _, fds := range []int{0, 3} {
			c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: addr, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			if len(rogue) > 0 || fds > 0 {
				rawSend(t, c, append([]byte{}, rogue...), q.fds(fds)...)
			}
			c.CloseWrite()
			// The server ends the connection (a reset, when it left
			// bytes unread). Its descriptor, read plainly, is closed by
			// the kernel.
			if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("rogue %d: %v", i, err)
			}
			c.Close()
		}
	}
	// A valid acknowledgement that brings descriptors.
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	rawSend(t, c, []byte{version, statusOK, 0, 0}, q.fds(3)...)
	io.Copy(io.Discard, c)
	c.Close()

	var metas []string
	err = Receive(addr, func(fd int, meta io.Reader) error {
		m, err := MetaFrom(meta)
		metas = append(metas, m["k"])
		unix.Close(fd)
		return err
	})
	if err != nil || len(metas) != 1 || metas[0] != "v" {
		t.Fatalf("legitimate client after the rogues: %q, %v", metas, err)
	}
	for _, c := range idle {
		c.Close()
	}
	shutdown(t, srv)
	q.checkClosed(t)
	p.checkClosed(t)
}
