//go:build linux

package graceful

// The sender of objects (the object handlers and Send*To functions): it
// sends a duplicate of each object's descriptor, so that the application may
// close its objects whatever the receiver does, and it closes every
// duplicate on every path.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stallBound is how long a test lets Close run while the receiver stalls
// before it calls Close blocked: far longer than a Close takes, and shorter
// than DefaultTimeout, after which the Send* functions give up and a Close
// held by them would return.
const stallBound = 5 * time.Second

// A sentObject is an application's object that a test sends, as a handler
// and as a Send*To call (ServeConn for those without one), with a check
// that the receiver's copy works.
type sentObject struct {
	obj     io.Closer
	handler Handler
	send    func(conn net.Conn) error
	// check runs while the stall child (see below) uses its copy, and
	// checks the answer it gives through it.
	check func(t *testing.T)
}

var objectKinds = []string{"listener", "packet", "conn", "file"}

// newSentObject returns an object of the kind, with meta {"kind": kind}.
// It is closed when the test ends, if the test has not closed it.
func newSentObject(t *testing.T, kind string) *sentObject {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	meta := Meta{"kind": kind}
	want := "child " + kind
	var o sentObject
	switch kind {
	case "listener":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		must(err)
		o = sentObject{ln, ListenerHandler(ln, meta),
			func(conn net.Conn) error { return SendListenerTo(conn, ln, meta) },
			dialCheck("tcp", ln.Addr().String(), want)}
	case "packet":
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		must(err)
		h := ObjectHandler(pc.(*net.UDPConn), meta)
		o = sentObject{pc, h,
			func(conn net.Conn) error { return (&Server{Handler: h}).ServeConn(conn) },
			dialCheck("udp", pc.LocalAddr().String(), want)}
	case "conn":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		must(err)
		defer ln.Close()
		cli, err := net.Dial("tcp", ln.Addr().String())
		must(err)
		t.Cleanup(func() { cli.Close() })
		c, err := ln.Accept()
		must(err)
		h := ObjectHandler(c.(*net.TCPConn), meta)
		o = sentObject{c, h,
			func(conn net.Conn) error { return (&Server{Handler: h}).ServeConn(conn) },
			func(t *testing.T) { expectLine(t, cli, want) }}
	case "file":
		r, w, err := os.Pipe()
		must(err)
		t.Cleanup(func() { r.Close() })
		o = sentObject{w, FileHandler(w, meta),
			func(conn net.Conn) error { return SendFileTo(conn, w, meta) },
			func(t *testing.T) { expectLine(t, r, want) }}
	default:
		t.Fatalf("unknown kind %q", kind)
	}
	t.Cleanup(func() { o.obj.Close() })
	return &o
}

// dialCheck returns a check that dials addr, says "ping" and expects want.
func dialCheck(network, addr, want string) func(t *testing.T) {
	return func(t *testing.T) {
		c, err := net.Dial(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			t.Fatal(err)
		}
		expectLine(t, c, want)
	}
}

// expectLine reads a line (or a datagram) from r, bounded in time, and
// checks it.
func expectLine(t *testing.T, r interface {
	io.Reader
	SetReadDeadline(time.Time) error
}, want string) {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 256)
	n, err := r.Read(buf)
	if got := strings.TrimSpace(string(buf[:n])); err != nil || got != want {
		t.Fatalf("read %q, %v; want %q", got, err, want)
	}
}

// answerThrough writes "child <kind>" through the received descriptor fd, and
// closes it.
func answerThrough(kind string, fd int) error {
	reply := []byte("child " + kind + "\n")
	switch kind {
	case "listener":
		ln, err := FdListener(fd)
		if err != nil {
			return err
		}
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		// The ping is read, lest the close reset the connection.
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			return err
		}
		_, err = c.Write(reply)
		return err
	case "packet":
		pc, err := FdPacketConn(fd)
		if err != nil {
			return err
		}
		defer pc.Close()
		_, from, err := pc.ReadFrom(make([]byte, 64))
		if err != nil {
			return err
		}
		_, err = pc.WriteTo(reply, from)
		return err
	case "conn":
		c, err := FdConn(fd)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(reply)
		return err
	case "file":
		f := os.NewFile(uintptr(fd), kind)
		defer f.Close()
		_, err := f.Write(reply)
		return err
	}
	unix.Close(fd)
	return fmt.Errorf("unknown kind %q", kind)
}

// TestCloseWhileReceiverStalls has a receiver read the frame that carries an
// object and stall without acknowledging it, while the application closes
// the object: Close must return, through a handler with no timeout served
// by Serve and by ServeConn, and through Send*To. Then the receiver's copy
// must work although the sender's is closed.
func TestCloseWhileReceiverStalls(t *testing.T) {
	noLeaks(t)
	for _, way := range []string{"handler", "serveconn", "send"} {
		for _, kind := range objectKinds {
			t.Run(way+"/"+kind, func(t *testing.T) {
				o := newSentObject(t, kind)
				addr := sockPath(t)
				sent := make(chan error, 1)
				if way != "handler" {
					send := o.send
					if way == "serveconn" {
						send = (&Server{Timeout: -1, Handler: o.handler}).ServeConn
					}
					ln, err := net.Listen("unix", addr)
					if err != nil {
						t.Fatal(err)
					}
					defer ln.Close()
					go func() {
						conn, err := ln.Accept()
						if err != nil {
							sent <- err
							return
						}
						defer conn.Close()
						sent <- send(conn)
					}()
				} else {
					var lb logBuf
					srv := &Server{Timeout: -1, Handler: o.handler, ErrorLog: log.New(&lb, "", 0)}
					serve(t, srv, addr)
					defer func() {
						shutdown(t, srv)
						if lb.String() != "" {
							t.Errorf("server: %s", lb.String())
						}
					}()
					sent <- nil
				}
				c := startChild(t, "stall", addr)
				c.expect("got " + kind)

				closed := make(chan error, 1)
				go func() { closed <- o.obj.Close() }()
				select {
				case err := <-closed:
					if err != nil {
						t.Errorf("Close: %v", err)
					}
				case <-time.After(stallBound):
					t.Errorf("Close of the sent %s still blocked after %v, while the receiver stalls", kind, stallBound)
					// It returns once the receiver goes on.
					defer func() { <-closed }()
				}
				io.WriteString(c.in, "go on\n")
				o.check(t)
				c.wait()
				if err := <-sent; err != nil {
					t.Errorf("send: %v", err)
				}
			})
		}
	}
}

// pipeProbe returns the write end of a pipe, to send as a file, and a check
// that closes it and fails the test unless every other copy gets closed
// too: in this process, in a peer, in flight.
func pipeProbe(t *testing.T) (w *os.File, allClosed func(t *testing.T)) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		w.Close()
	})
	return w, func(t *testing.T) {
		t.Helper()
		w.Close()
		// The read end reads the end of the stream once no write end is
		// left anywhere.
		r.SetReadDeadline(time.Now().Add(stallBound))
		if _, err := r.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("a copy of the sent file is still open somewhere (read: %v)", err)
		}
	}
}

// failingMeta fails to encode.
type failingMeta struct{}

func (failingMeta) WriteTo(io.Writer) (int64, error) {
	return 0, errors.New("meta out of order")
}

// TestObjectsNoLeak sends a file through its handler on each path a
// transfer can take after the handler queued it, and checks that no copy of
// the descriptor is left: not the sender's duplicate, not one in flight.
func TestObjectsNoLeak(t *testing.T) {
	noLeaks(t)
	boom := errors.New("boom")
	refusal := errors.New("not today")
	for _, tc := range []struct {
		name string
		// after runs after the file's handler.
		after Handler
		meta  io.WriterTo
		// receive plays the receiver at addr and checks how it ends.
		receive func(t *testing.T, addr string)
		log     string // what the server's log says; "" for nothing
	}{
		{name: "success", receive: receiveOK, log: ""},
		{
			name: "send fails",
			// The end frame goes out on a connection shut for writing.
			after: Handler(func(conn net.Conn, _ *ResponseWriter) error {
				return conn.(*net.UnixConn).CloseWrite()
			}),
			receive: receiveFails,
			log:     syscall.EPIPE.Error(),
		},
		{
			name: "receiver refuses",
			receive: func(t *testing.T, addr string) {
				err := Receive(addr, func(fd int, _ io.Reader) error {
					unix.Close(fd)
					return refusal
				})
				if !errors.Is(err, refusal) {
					t.Errorf("Receive: %v, want the refusal", err)
				}
			},
			log: ErrRejected.Error(),
		},
		{
			name: "receiver dies",
			receive: func(t *testing.T, addr string) {
				c := startChild(t, "stall", addr)
				c.expect("got file")
				c.cmd.Process.Signal(syscall.SIGKILL)
				c.cmd.Wait()
			},
			log: "reading from the receiver",
		},
		{
			name:    "handler fails",
			after:   Handler(func(net.Conn, *ResponseWriter) error { return boom }),
			receive: receiveFails,
			log:     boom.Error(),
		},
		{
			name:    "handler panics",
			after:   Handler(func(net.Conn, *ResponseWriter) error { panic(boom) }),
			receive: receiveFails,
			log:     "panic",
		},
		{name: "meta fails", meta: failingMeta{}, receive: receiveFails, log: "meta out of order"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, allClosed := pipeProbe(t)
			meta := tc.meta
			if meta == nil {
				meta = Meta{"kind": "file"}
			}
			h := FileHandler(f, meta)
			if tc.after != nil {
				h = SequenceHandler(h, tc.after)
			}
			addr := sockPath(t)
			var lb logBuf
			srv := &Server{Handler: h, ErrorLog: log.New(&lb, "", 0)}
			serve(t, srv, addr)
			tc.receive(t, addr)
			shutdown(t, srv)
			if got := lb.String(); tc.log == "" && got != "" || !strings.Contains(got, tc.log) {
				t.Errorf("server's log: %q, want %q", got, tc.log)
			}
			allClosed(t)
		})
	}
}

// receiveN receives from addr and checks that n descriptors came.
func receiveN(addr string, n int) error {
	var got closer
	if err := Receive(addr, got.cb); err != nil || got.count() != n {
		return fmt.Errorf("Receive: %d descriptors, %v; want %d", got.count(), err, n)
	}
	return nil
}

func receiveOK(t *testing.T, addr string) {
	t.Helper()
	if err := receiveN(addr, 1); err != nil {
		t.Error(err)
	}
}

func receiveFails(t *testing.T, addr string) {
	t.Helper()
	var got closer
	if err := Receive(addr, got.cb); err == nil || got.count() != 0 {
		t.Errorf("Receive: %d descriptors, %v; want none and an error", got.count(), err)
	}
}

// TestAfterTransferEnded uses a handler's ResponseWriter after its transfer
// ended: Write, flush and the handlers fail with an error that matches
// net.ErrClosed, and the object handler's duplicate is closed. A
// ResponseWriter that no Server made fails the same calls, and panics not.
func TestAfterTransferEnded(t *testing.T) {
	noLeaks(t)
	f, allClosed := pipeProbe(t)
	addr := sockPath(t)
	var kept *ResponseWriter
	srv := &Server{Handler: Handler(func(_ net.Conn, w *ResponseWriter) error {
		kept = w
		return nil
	})}
	serve(t, srv, addr)
	if err := receiveN(addr, 0); err != nil {
		t.Error(err)
	}
	shutdown(t, srv) // the handler's write of kept happened before
	called := false
	for name, err := range map[string]error{
		"Write":           kept.Write(0, nil),
		"flush":           kept.flush(),
		"FileHandler":     FileHandler(f, nil)(nil, kept),
		"CallbackHandler": CallbackHandler(func() { called = true })(nil, kept),
	} {
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s after the transfer ended: %v, want net.ErrClosed", name, err)
		}
	}
	if called {
		t.Error("CallbackHandler's function ran after the transfer ended")
	}
	for _, w := range []*ResponseWriter{nil, new(ResponseWriter)} {
		for name, err := range map[string]error{
			"Write":           w.Write(0, nil),
			"FileHandler":     FileHandler(f, nil)(nil, w),
			"CallbackHandler": CallbackHandler(func() {})(nil, w),
		} {
			if !errors.Is(err, errNoTransfer) {
				t.Errorf("%s on %#v: %v, want errNoTransfer", name, w, err)
			}
		}
	}
	allClosed(t)
}

// fdLinks counts the descriptors in the directory dir (/proc/.../fd) that
// refer to the object named link ("pipe:[1234]").
func fdLinks(dir, link string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); l == link {
			n++
		}
	}
	return n, nil
}

// pipeLink is the name under which /proc/.../fd shows f, a pipe.
func pipeLink(t *testing.T, f *os.File) string {
	t.Helper()
	var st unix.Stat_t
	rc, err := f.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
	}
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("pipe:[%d]", st.Ino)
}

// TestDuplicatesCloseOnExec starts a process while an object handler's
// duplicate is queued: the duplicate exists, and the new process does not
// inherit it.
func TestDuplicatesCloseOnExec(t *testing.T) {
	noLeaks(t)
	f, allClosed := pipeProbe(t)
	link := pipeLink(t, f)
	before, err := fdLinks("/proc/self/fd", link)
	if err != nil {
		t.Fatal(err)
	}
	queued := make(chan int) // the file's descriptors here, once queued
	release := make(chan struct{})
	srv := &Server{Handler: Handler(func(conn net.Conn, w *ResponseWriter) error {
		n := -1
		err := FileHandler(f, nil)(conn, w)
		if err == nil {
			n, err = fdLinks("/proc/self/fd", link)
		}
		queued <- n
		<-release
		return err
	})}
	addr := sockPath(t)
	serve(t, srv, addr)
	received := make(chan error, 1)
	go func() { received <- receiveN(addr, 1) }()
	func() {
		defer close(release) // also when the test fails
		if n := <-queued; n != before+1 {
			t.Errorf("%d descriptors of the file before the handler, %d after it; want a duplicate queued", before, n)
		}
		c := startChild(t, "fdlinks", link)
		c.expect("0")
		c.wait()
	}()
	if err := <-received; err != nil {
		t.Error(err)
	}
	shutdown(t, srv)
	allClosed(t)
}

// TestObjectHandlersShareFrame checks that consecutive object handlers send
// their descriptors in one frame, and that a CallbackHandler between them
// still ends that frame (it waits for the acknowledgement).
func TestObjectHandlersShareFrame(t *testing.T) {
	noLeaks(t)
	f, allClosed := pipeProbe(t)
	drained := make(chan struct{})
	srv := &Server{Handler: SequenceHandler(
		FileHandler(f, nil),
		FileHandler(f, nil),
		FileHandler(f, nil),
		CallbackHandler(func() { close(drained) }),
		FileHandler(f, nil),
	)}
	addr := sockPath(t)
	serve(t, srv, addr)
	c := startChild(t, "framecount", addr)
	c.expect("3 2 1 1")
	c.wait()
	<-drained
	shutdown(t, srv)
	allClosed(t)
}
