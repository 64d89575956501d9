package graceful

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"net"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// A Server serves descriptors to the processes that connect to its Unix
// socket, running Handler for each connection. The zero value is ready to
// use once Handler is set.
type Server struct {
	// Handler says what to send to each receiver.
	Handler Handler
	// Allow decides whether to serve the process that connected; nil means
	// SameUser. A refused client's connection is closed unserved.
	Allow func(Peer) error
	// Mode is the permission of the socket file that ListenAndServe
	// creates; 0 means 0600, or 0660 when Group is set. It does not depend
	// on the umask. An abstract socket (@name) has no file mode: Allow is
	// its only protection.
	Mode fs.FileMode
	// Group, a group name or id, is given the socket file, so that with
	// Mode 0660 (and an Allow that admits them) its members can connect.
	Group string
	// Timeout bounds each wait for the receiver (to take a frame, to
	// acknowledge); 0 means DefaultTimeout and a negative value means no
	// bound. Time spent in the Handler does not count.
	Timeout time.Duration
	// Once makes the server stop after its first transfer that the receiver
	// acknowledged: it closes its listener, removing the socket file, before
	// it closes that connection. Receive in the successor thus returns only
	// when the address is free for it to serve in turn. Transfers run one
	// at a time, so no second receiver gets the same descriptors.
	Once bool
	// ErrorLog, if set, receives a line for each connection that failed;
	// the server logs nothing otherwise.
	ErrorLog *log.Logger

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // one count per active connection
	onceMu sync.Mutex     // serializes transfers when Once is set
	served bool
	// closeMu is held while the listener closes, so that no caller of
	// closeListener returns before it is closed (Once's promise).
	closeMu sync.Mutex
}

// errNoHandler is a Server's error when it has nothing to send: a
// successor would take an empty transfer for a hand-over.
var errNoHandler = errors.New("graceful: Server has no Handler")

// ListenAndServe listens on the Unix socket addr and serves h with a
// Server's defaults. See [Server.ListenAndServe].
func ListenAndServe(addr string, h Handler) error {
	return (&Server{Handler: h}).ListenAndServe(addr)
}

// Serve serves h on ln with a Server's defaults. See [Server.Serve].
func Serve(ln net.Listener, h Handler) error {
	return (&Server{Handler: h}).Serve(ln)
}

// ListenAndServe listens on the Unix socket addr, a path or @name for the
// abstract namespace, and serves until Close or Shutdown. A stale socket
// file left by a crashed process is replaced; if another server is live at
// addr, the error satisfies errors.Is(err, syscall.EADDRINUSE) and that
// server is left alone. The socket file is removed when the server closes.
func (s *Server) ListenAndServe(addr string) error {
	if err := supported(); err != nil {
		return err
	}
	if s.Handler == nil {
		return errNoHandler
	}
	mode, gid, err := s.fileMode()
	if err != nil {
		return err
	}
	ln, err := listenUnix(addr, mode, gid)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

func (s *Server) fileMode() (fs.FileMode, int, error) {
	mode, gid := s.Mode, -1
	if s.Group != "" {
		g, err := user.LookupGroup(s.Group)
		if err != nil {
			g, err = user.LookupGroupId(s.Group)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("graceful: group %q: %w", s.Group, err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return 0, 0, fmt.Errorf("graceful: group %q: %w", s.Group, err)
		}
		if mode == 0 {
			mode = 0o660
		}
	}
	if mode == 0 {
		mode = 0o600
	}
	return mode, gid, nil
}

// Serve accepts connections on ln and serves each in its own goroutine. It
// takes ownership of ln and closes it when it returns. It always returns an
// error; after Close or Shutdown it is [ErrServerClosed].
func (s *Server) Serve(ln net.Listener) error {
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
		if !s.track(conn) {
			conn.Close()
			return ErrServerClosed
		}
		go s.serveConn(conn)
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

func (s *Server) track(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(conn net.Conn) {
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) serveConn(conn net.Conn) {
	defer s.untrack(conn)
	defer conn.Close()
	defer func() {
		if p := recover(); p != nil {
			buf := make([]byte, 16<<10)
			buf = buf[:runtime.Stack(buf, false)]
			s.logf("graceful: panic serving %v: %v\n%s", conn.RemoteAddr(), p, buf)
		}
	}()
	timeout := s.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	// A client earns its turn with its hello before it holds anything: one
	// that connects and stalls costs its own connection only.
	w, err := openTransfer(context.Background(), conn, s.Allow, timeout)
	if err != nil {
		s.logf("graceful: serving pid %s: %v", peerPID(conn), err)
		return
	}
	defer w.close()
	if s.Once {
		s.onceMu.Lock()
		defer s.onceMu.Unlock()
		if s.served {
			return
		}
	}
	err = w.run(func(w *sender) error {
		return s.Handler.Handle(conn, w)
	})
	if err != nil {
		s.logf("graceful: serving pid %s: %v", peerPID(conn), err)
		return
	}
	if s.Once {
		s.served = true
		s.closeListener()
	}
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

// Close stops the server at once: it closes the listener and every active
// connection, whose receivers then fail.
func (s *Server) Close() error {
	s.closeListener()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	return nil
}

// Shutdown closes the listener, so no new receiver connects, then waits for
// the active transfers to finish. When ctx is done first, it closes the
// connections still active, as Close does, and returns ctx's error at once,
// as net/http's Shutdown does: a Handler that ignores its connection may
// still be running then. It must not be called from a Handler without a ctx
// that ends, since it would wait for that Handler.
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
