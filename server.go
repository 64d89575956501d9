package graceful

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// A Server serves descriptors to the processes that connect to its Unix
// socket, running Handler for each connection. The zero value is ready to
// use once Handler is set. A Server keeps no descriptor of its own but its
// listener and connections: its Handler's objects stay the application's.
type Server struct {
	// Handler says what to send to each receiver.
	Handler Handler
	// Allow decides whether to serve the process that connected. nil
	// means a process of this process's user, or root. A refused
	// client's connection is closed unserved.
	Allow func(Peer) error
	// Timeout bounds each wait for the receiver: to say hello, to take a
	// frame, to acknowledge. 0 means DefaultTimeout; a negative value means
	// no bound. Time spent in the Handler does not count.
	Timeout time.Duration
	// ErrorLog, if set, receives a line for each connection of Serve that
	// failed. The server logs nothing otherwise.
	ErrorLog *log.Logger

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // one count per active transfer
	// ctx is done once the server is closed: it interrupts the waits of
	// ServeConn's transfers, whose connections are not the server's.
	ctx    context.Context
	cancel context.CancelFunc
	// closeMu is held while the listener closes, so that no caller of
	// closeListener returns before it is closed.
	closeMu sync.Mutex
}

// errNoHandler is a Server's error when it has nothing to send: a
// successor would take an empty transfer for a hand-over.
var errNoHandler = errors.New("graceful: Server has no Handler")

// ListenAndServe listens on the Unix socket addr and serves h with a
// Server's defaults. It blocks until the server fails, and leaves h's
// objects to the caller. See [Server.ListenAndServe].
func ListenAndServe(addr string, h Handler) error {
	return (&Server{Handler: h}).ListenAndServe(addr)
}

// ListenAndServe listens on the Unix socket addr, a path or @name for the
// abstract namespace. It serves until Close or Shutdown, and blocks until
// then. The socket file is created 0600, whatever the umask: only this
// user and root may connect. For another mode or group, make the listener
// yourself and call [Server.Serve]. A stale socket file left by a crashed
// process is replaced. If another server is live at addr, the error
// satisfies errors.Is(err, syscall.EADDRINUSE), and that server is left
// alone. The socket file is removed when the server closes.
func (s *Server) ListenAndServe(addr string) error {
	if err := supported(); err != nil {
		return err
	}
	if s.Handler == nil {
		return errNoHandler
	}
	ln, err := listenUnix(addr, 0o600, -1)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Serve accepts connections on ln and serves each in its own goroutine,
// as [Server.ServeConn] does. It blocks until Close or Shutdown. It takes
// ownership of ln, and closes it when it returns. It closes each
// connection once served. It always returns an error; after Close or
// Shutdown it is [ErrServerClosed]. A panic in the Handler is recovered
// and logged: the receiver fails, and the server serves on.
func (s *Server) Serve(ln net.Listener) error {
	if ln == nil {
		return errors.New("graceful: Serve of a nil listener")
	}
	if err := supported(); err != nil {
		ln.Close()
		return err
	}
	if s.Handler == nil {
		ln.Close()
		return errNoHandler
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.ln != nil {
		s.mu.Unlock()
		ln.Close()
		return errors.New("graceful: Serve called twice")
	}
	s.ln = ln
	s.mu.Unlock()
	defer s.closeListener()

	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				// Out of descriptors, for instance: wait rather than spin.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("graceful: accept: %w", err)
		}
		delay = 0
		ctx, ok := s.track(conn)
		if !ok {
			conn.Close()
			return ErrServerClosed
		}
		go s.serveAccepted(ctx, conn)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track counts conn, which Serve accepted, as an active transfer, unless
// the server is closed.
func (s *Server) track(conn net.Conn) (context.Context, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	return s.transferContext(), true
}

func (s *Server) untrack(conn net.Conn) {
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
	s.wg.Done()
}

// transferContext returns the context of the server's transfers, done
// once Close is called; s.mu is held.
func (s *Server) transferContext() context.Context {
	if s.ctx == nil {
		s.ctx, s.cancel = context.WithCancel(context.Background())
	}
	return s.ctx
}

// serveAccepted serves a connection that Serve accepted, then closes it.
func (s *Server) serveAccepted(ctx context.Context, conn net.Conn) {
	defer s.untrack(conn)
	defer conn.Close()
	defer func() {
		if p := recover(); p != nil {
			buf := make([]byte, 16<<10)
			buf = buf[:runtime.Stack(buf, false)]
			s.logf("graceful: panic serving %v: %v\n%s", conn.RemoteAddr(), p, buf)
		}
	}()
	if err := s.serve(ctx, conn); err != nil {
		s.logf("graceful: serving pid %s: %v", peerPID(conn), err)
	}
}

// ServeConn runs Handler as one transfer on conn, a Unix socket connection
// the caller already has, with the server's Timeout and Allow. It blocks
// until the receiver has acknowledged the transfer, or it failed. It does
// not close conn, nor take its descriptor: conn stays the caller's. After
// an error, the rest of the failed transfer may be on conn: close it
// rather than serve on it again. ServeConn sets a past deadline on conn to
// interrupt a stuck call. It leaves conn's deadlines alone otherwise. A
// panic in the Handler goes on to the caller, once the duplicates that
// object handlers queued are closed. Close interrupts the waits of a
// ServeConn under way; Shutdown waits for it, until its ctx is done. Once
// the server is closed, ServeConn returns [ErrServerClosed] at once.
//
// A server that serves one receiver only accepts one connection on its
// listener, calls ServeConn, and closes the listener before conn: the
// receiver's Receive then returns once the address is free.
func (s *Server) ServeConn(conn net.Conn) error {
	if err := supported(); err != nil {
		return err
	}
	if s.Handler == nil {
		return errNoHandler
	}
	if conn == nil {
		return errors.New("graceful: ServeConn of a nil connection")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.wg.Add(1)
	ctx := s.transferContext()
	s.mu.Unlock()
	defer s.wg.Done()
	return s.serve(ctx, conn)
}

// serve runs one transfer of the Handler on conn.
func (s *Server) serve(ctx context.Context, conn net.Conn) error {
	timeout := s.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	// A client earns its turn with its hello before it holds anything:
	// one that connects and stalls costs its own connection only.
	w, err := openTransfer(ctx, conn, s.Allow, timeout)
	if err != nil {
		return err
	}
	defer w.close()
	return w.run(func(w *ResponseWriter) error {
		return s.Handler(conn, w)
	})
}

func peerPID(conn net.Conn) string {
	pid := "?"
	checkPeer(conn, func(p Peer) error {
		pid = strconv.Itoa(p.PID)
		return nil
	})
	return pid
}

func (s *Server) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog.Printf(format, args...)
	}
}

// closeListener marks the server closed and closes its listener, which
// removes the socket file of ListenAndServe.
func (s *Server) closeListener() {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.ln = nil
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

// Close stops the server at once. It closes the listener and every
// connection Serve accepted. It interrupts the transfers of ServeConn,
// leaving their connections open. The receivers of all of them fail.
// Close does not wait for the Handlers to return.
func (s *Server) Close() error {
	s.closeListener()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.transferContext()
	s.cancel()
	s.mu.Unlock()
	return nil
}

// Shutdown closes the listener, so no new receiver connects. Then it
// blocks until the active transfers, ServeConn's included, have finished.
// When ctx is done first, it stops them as Close does, and returns ctx's
// error at once, as net/http's Shutdown does. A Handler that ignores its
// connection may still be running then. Do not call Shutdown from a
// Handler without a ctx that ends: it would wait for that Handler.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListener()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}
