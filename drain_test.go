//go:build linux

package graceful

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// drainServer serves h through a Drainer on a fresh port of 127.0.0.1 and
// reports each connection state on the returned channel.
type drainServer struct {
	d      *Drainer
	addr   string
	states chan http.ConnState
	served chan error
}

func startDrainServer(t *testing.T, h http.HandlerFunc) *drainServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &drainServer{
		d:      &Drainer{},
		addr:   ln.Addr().String(),
		states: make(chan http.ConnState, 100),
		served: make(chan error, 1),
	}
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, st http.ConnState) { s.states <- st }}
	go func() { s.served <- s.d.Serve(srv, ln) }()
	t.Cleanup(func() {
		s.d.Drain(context.Background())
		<-s.served
	})
	return s
}

// state waits for the next connection state.
func (s *drainServer) state(t *testing.T, want http.ConnState) {
	t.Helper()
	if got := <-s.states; got != want {
		t.Fatalf("connection state %v, want %v", got, want)
	}
}

// drain starts Drain and waits until Serve has returned.
func (s *drainServer) drain(t *testing.T, ctx context.Context) chan error {
	t.Helper()
	drained := make(chan error, 1)
	go func() { drained <- s.d.Drain(ctx) }()
	if err := <-s.served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	s.served <- nil // for the cleanup
	return drained
}

func okHandler(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	fmt.Fprint(w, "ok")
}

// request writes a POST on conn and reads the answer.
func request(t *testing.T, conn net.Conn, br *bufio.Reader) *http.Response {
	t.Helper()
	if _, err := io.WriteString(conn, "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\nbody"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(b) != "ok" {
		t.Fatalf("answer %s %q, %v", resp.Status, b, err)
	}
	return resp
}

func dialDrain(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, bufio.NewReader(conn)
}

// lastRequest sends a request during the drain and checks that the answer
// says Connection: close and that the server then closes the connection.
func lastRequest(t *testing.T, conn net.Conn, br *bufio.Reader) {
	t.Helper()
	if resp := request(t, conn, br); !resp.Close {
		t.Error("the answer during the drain lacks Connection: close")
	}
	expectClosed(t, conn, br)
}

func writeGet(t *testing.T, conn net.Conn, path string) {
	t.Helper()
	if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
}

// expectClosed checks that the server closed conn. The bound only turns a
// hang into a failure.
func expectClosed(t *testing.T, conn net.Conn, br *bufio.Reader) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %q, %v after the last answer, want the end of the connection", b, err)
	}
}

// waitDrained waits for Drain to return nil. The bound is shorter than the
// 5 s grace of a ctx without a deadline: a drain that waits for the grace
// rather than for the connections fails. It also turns a hang into
// a failure.
func waitDrained(t *testing.T, drained chan error) {
	t.Helper()
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("Drain: %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("Drain still waits after every connection closed")
	}
}

// TestDrainNewConnection is the case that Shutdown gets wrong: a connection
// accepted before the drain whose request arrives after it began must be
// answered, not closed.
func TestDrainNewConnection(t *testing.T) {
	checkFds(t)
	// waitDrained fails if the drain waits for the grace instead of for
	// the connection.
	s := startDrainServer(t, okHandler)
	conn, br := dialDrain(t, s.addr)
	s.state(t, http.StateNew)
	drained := s.drain(t, context.Background())

	lastRequest(t, conn, br)
	waitDrained(t, drained)
}

// TestDrainIdleConnection checks that a keep-alive connection idle when the
// drain begins gets its next request answered, with Connection: close.
func TestDrainIdleConnection(t *testing.T) {
	checkFds(t)
	s := startDrainServer(t, okHandler)
	conn, br := dialDrain(t, s.addr)
	if resp := request(t, conn, br); resp.Close {
		t.Fatal("Connection: close before the drain")
	}
	s.state(t, http.StateNew)
	s.state(t, http.StateActive)
	s.state(t, http.StateIdle)
	drained := s.drain(t, context.Background())

	lastRequest(t, conn, br)
	waitDrained(t, drained)
}

// TestDrainInFlight checks that a request in flight when the drain begins
// completes, and that its connection is answered once more.
func TestDrainInFlight(t *testing.T) {
	checkFds(t)
	started, release := make(chan struct{}), make(chan struct{})
	s := startDrainServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		okHandler(w, r)
	})
	conn, br := dialDrain(t, s.addr)
	writeGet(t, conn, "/slow")
	<-started
	drained := s.drain(t, context.Background())
	close(release)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("answer %s", resp.Status)
	}
	lastRequest(t, conn, br)
	waitDrained(t, drained)
}

// TestDrainIdleGrace checks that a connection that stays idle is closed
// once the grace has passed: half the time left before ctx's deadline,
// which leaves Drain the other half to shut down.
func TestDrainIdleGrace(t *testing.T) {
	checkFds(t)
	s := startDrainServer(t, okHandler)
	conn, br := dialDrain(t, s.addr)
	request(t, conn, br)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	drained := s.drain(t, ctx)
	waitDrained(t, drained)
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("Drain returned after %v, before the grace of about 500ms", d)
	}
	expectClosed(t, conn, br)
}

// TestIdleGrace checks the grace that Drain gives idle connections: half
// the time left before ctx's deadline, 5 s at most.
func TestIdleGrace(t *testing.T) {
	for _, tc := range []struct {
		left time.Duration // before the deadline; 0 for none
		want time.Duration
	}{
		{0, 5 * time.Second},
		{time.Hour, 5 * time.Second},
		{10 * time.Second, 5 * time.Second},
		{2 * time.Second, time.Second},
		{-time.Second, 0},
	} {
		ctx := context.Background()
		if tc.left != 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, tc.left)
			defer cancel()
		}
		if got := idleGrace(ctx); got > tc.want || got < tc.want-100*time.Millisecond {
			t.Errorf("deadline in %v: grace %v, want %v", tc.left, got, tc.want)
		}
	}
}

// TestDrainDeadline checks that a handler that does not finish in time is
// cut off when ctx is done, and that Drain says so.
func TestDrainDeadline(t *testing.T) {
	checkFds(t)
	started := make(chan struct{})
	s := startDrainServer(t, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
	})
	conn, br := dialDrain(t, s.addr)
	writeGet(t, conn, "/")
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	drained := s.drain(t, ctx)
	cancel()
	if err := <-drained; !errors.Is(err, context.Canceled) {
		t.Fatalf("Drain: %v, want context.Canceled", err)
	}
	expectClosed(t, conn, br)
}

// TestDrainBeforeServe checks that Serve after Drain returns at once and
// closes its listener.
func TestDrainBeforeServe(t *testing.T) {
	checkFds(t)
	var d Drainer
	if err := d.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Serve(&http.Server{}, ln); !errors.Is(err, ErrServerClosed) || !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on the listener: %v, want net.ErrClosed", err)
	}
}

// TestDrainConnections checks that Drain waits for the last of several
// connections, not the first, to close after its next answer: the others get
// theirs too.
func TestDrainConnections(t *testing.T) {
	checkFds(t)
	s := startDrainServer(t, okHandler)
	type client struct {
		conn net.Conn
		br   *bufio.Reader
	}
	clients := make([]client, 3)
	for i := range clients {
		conn, br := dialDrain(t, s.addr)
		request(t, conn, br)
		s.state(t, http.StateNew)
		s.state(t, http.StateActive)
		s.state(t, http.StateIdle)
		clients[i] = client{conn, br}
	}
	drained := s.drain(t, context.Background())
	for _, c := range clients {
		lastRequest(t, c.conn, c.br)
		// The Drainer has counted the connection out before its hook
		// reports it closed; a Drain that stopped waiting now would shut
		// the server down and close the others unanswered.
		s.state(t, http.StateActive)
		s.state(t, http.StateClosed)
	}
	waitDrained(t, drained)
}
