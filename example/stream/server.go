package main

import (
	"errors"
	"io"
	"log"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/graceful-go/graceful"
)

// passBatch is how many connections one PassConns carries: what one
// sendmsg does. Smaller transfers let the successor serve the first
// connections sooner; the old instance stops the next batch meanwhile.
const passBatch = 253

// A server holds the sessions of this instance and hands them over.
type server struct {
	logger      *log.Logger
	acceptDone  chan struct{} // closed when accept returns
	receiveDone chan struct{} // closed when the predecessor passes no more

	mu       sync.Mutex
	sessions map[*session]struct{} // open, served here
	emptied  *sync.Cond            // signalled when sessions empties
	queue    chan []*session       // while handing over: to pass on
	failed   bool                  // a PassConns failed: the rest stay here
}

func newServer(logger *log.Logger) *server {
	srv := &server{
		logger:      logger,
		acceptDone:  make(chan struct{}),
		receiveDone: make(chan struct{}),
		sessions:    map[*session]struct{}{},
	}
	srv.emptied = sync.NewCond(&srv.mu)
	return srv
}

// serve serves sessions here.
func (srv *server) serve(ss ...*session) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, s := range ss {
		srv.sessions[s] = struct{}{}
		s.start(srv.forget)
	}
}

// forget drops sessions that are no longer this instance's: closed, or
// passed to the successor.
func (srv *server) forget(ss ...*session) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, s := range ss {
		delete(srv.sessions, s)
	}
	if len(srv.sessions) == 0 {
		srv.emptied.Broadcast()
	}
}

// accept serves the connections of ln until it is closed.
func (srv *server) accept(ln net.Listener) {
	defer close(srv.acceptDone)
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, for instance: wait rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			srv.logger.Printf("accepting: %v; again in %v", err, delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		srv.serve(&session{conn: c})
	}
}

// receive serves the connections that the predecessor passes, or passes
// them on if this instance hands over meanwhile; restore, if not nil, runs
// when the predecessor passes no more. ready is when Ready returned.
func (srv *server) receive(inst *graceful.Instance, ready time.Time, restore func()) {
	defer close(srv.receiveDone)
	var n, midLine int
	var last time.Duration
	for {
		c, m, err := inst.AcceptConn()
		if err != nil {
			if restore != nil {
				restore()
			}
			if n > 0 {
				srv.logger.Printf("took %d connections from the predecessor (%d mid-line), the last %v after Ready", n, midLine, last.Round(10*time.Microsecond))
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				srv.logger.Printf("taking passed connections: %v", err)
			}
			return
		}
		s, err := passedSession(c, m)
		if err != nil {
			srv.logger.Print(err)
			c.Close()
			continue
		}
		n++
		if len(s.in) > 0 {
			midLine++
		}
		last = time.Since(ready)
		srv.mu.Lock()
		q := srv.queue
		if q == nil {
			srv.sessions[s] = struct{}{}
			s.start(srv.forget)
		}
		srv.mu.Unlock()
		if q != nil {
			q <- []*session{s}
		}
	}
}

// handOver passes every session to the successor that has just taken
// over, once the listener is closed: its own, and those the predecessor
// still passes. Those that cannot be passed are served on here.
func (srv *server) handOver(inst *graceful.Instance) {
	start := time.Now()
	succ := inst.SuccessorPID()
	<-srv.acceptDone
	queue := make(chan []*session, 2)
	srv.mu.Lock()
	srv.queue = queue
	own := slices.Collect(maps.Keys(srv.sessions))
	srv.mu.Unlock()
	srv.logger.Printf("pid %d is ready: handing over %d connections", succ, len(own))

	passed := make(chan passStats, 1)
	go func() { passed <- srv.pass(inst, queue) }()
	// Stop a batch while the one before it travels.
	for i := 0; i < len(own) && !srv.hasFailed(); i += passBatch {
		batch := own[i:min(i+passBatch, len(own))]
		for _, s := range batch {
			s.interrupt()
		}
		stopped := batch[:0:0]
		for _, s := range batch {
			if s.wait() {
				stopped = append(stopped, s)
			}
		}
		if len(stopped) > 0 {
			queue <- stopped
		}
	}
	<-srv.receiveDone
	srv.mu.Lock()
	srv.queue = nil
	srv.mu.Unlock()
	close(queue)
	st := <-passed
	// The successor learns that no more connections come.
	inst.Stop()
	if st.passed > 0 {
		srv.logger.Printf("handed %d connections to pid %d in %v (Done to the last PassConns; %d mid-line, %d with answers unsent)",
			st.passed, succ, st.last.Sub(start).Round(10*time.Microsecond), st.midLine, st.unsent)
	}
}

type passStats struct {
	passed, midLine, unsent int
	last                    time.Time // when the last PassConns returned
}

// pass passes the sessions from queue, stopped, to the successor, merging
// what is there up to passBatch per PassConns. After a failure it serves
// every session here.
func (srv *server) pass(inst *graceful.Instance, queue <-chan []*session) (st passStats) {
	for ss := range queue {
		batch := slices.Clone(ss)
	merge:
		for len(batch) < passBatch {
			select {
			case more, ok := <-queue:
				if !ok {
					break merge
				}
				batch = append(batch, more...)
			default:
				break merge
			}
		}
		if srv.hasFailed() {
			srv.serve(batch...)
			continue
		}
		conns := make([]graceful.PassedConn, len(batch))
		midLine, unsent := 0, 0
		for i, s := range batch {
			conns[i] = graceful.PassedConn{Conn: s.conn, Meta: s.meta()}
			if len(s.in) > 0 {
				midLine++
			}
			if len(s.out) > 0 {
				unsent++
			}
		}
		if err := inst.PassConns(conns); err != nil {
			srv.logger.Printf("handing %d connections to pid %d failed, serving them on here: %v", len(batch), inst.SuccessorPID(), err)
			srv.mu.Lock()
			srv.failed = true
			srv.mu.Unlock()
			srv.serve(batch...)
			continue
		}
		srv.forget(batch...)
		st.passed += len(batch)
		st.midLine += midLine
		st.unsent += unsent
		st.last = time.Now()
	}
	return st
}

func (srv *server) hasFailed() bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.failed
}

// serveOn serves what could not be handed over until the clients close it,
// or a signal ends it.
func (srv *server) serveOn(sigs <-chan os.Signal) {
	srv.mu.Lock()
	n := len(srv.sessions)
	srv.mu.Unlock()
	if n == 0 {
		return
	}
	srv.logger.Printf("serving %d connections on until they close", n)
	empty := make(chan struct{})
	go func() {
		srv.mu.Lock()
		for len(srv.sessions) > 0 {
			srv.emptied.Wait()
		}
		srv.mu.Unlock()
		close(empty)
	}()
	for {
		select {
		case <-empty:
			return
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				srv.logger.Print("SIGHUP ignored: handed over already")
				continue
			}
			srv.logger.Printf("signal %v: closing every connection", sig)
			srv.closeAll()
			<-empty
			return
		}
	}
}

// closeAll ends every session once the listener and the predecessor are
// done: what was read is answered, then the connection closed.
func (srv *server) closeAll() {
	<-srv.acceptDone
	<-srv.receiveDone
	srv.mu.Lock()
	all := slices.Collect(maps.Keys(srv.sessions))
	srv.mu.Unlock()
	for _, s := range all {
		s.interrupt()
	}
	for _, s := range all {
		if s.wait() {
			s.answer()
			s.conn.SetWriteDeadline(time.Now().Add(time.Second))
			s.conn.Write(s.out)
			s.conn.Close()
		}
	}
	srv.forget(all...)
}
