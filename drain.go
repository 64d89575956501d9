package graceful

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// defaultIdleGrace is the longest that Drain waits for idle keep-alive
// connections to send one more request.
const defaultIdleGrace = 5 * time.Second

// A Drainer serves an [http.Server] on a listener that a successor shares,
// and drains it after the hand-over without losing a request. Its zero value
// is ready to use; a Drainer serves one server once.
//
// Calling [http.Server.Shutdown] right after the hand-over loses requests,
// for two reasons in net/http. First, a connection accepted just before
// Shutdown whose request is read after Shutdown began is closed without an
// answer (conn.serve checks shuttingDown right after reading a request).
// Second, Shutdown and SetKeepAlivesEnabled(false) close idle keep-alive
// connections, and a client that is sending a request on one at that moment
// loses it; clients retry only idempotent requests, so a POST fails. Drain
// therefore stops accepting and lets Serve return before anything else,
// answers every request from then on with "Connection: close", so that each
// connection closes cleanly after its next response, and waits for the
// connections to close that way. It calls Shutdown only once they have, or
// once a grace period has passed: only a connection that stays idle that
// long can still lose a request, which HTTP/1.1 gives a server no way to
// prevent. (net/http's HTTP/2 server takes "Connection: close" for a GOAWAY,
// so its connections drain the same way.)
type Drainer struct {
	// draining is set by Drain, under mu so that Serve sees it when it
	// starts, and read without a lock by every request (see install).
	draining atomic.Bool

	// mu guards the rest; requests do not take it, connections take it
	// when they open and close.
	mu     sync.Mutex
	srv    *http.Server
	ln     net.Listener
	conns  map[net.Conn]struct{}
	served chan struct{} // closed when Serve has returned
	empty  chan struct{} // made by Drain, closed when conns becomes empty
}

// Serve serves srv on ln until Drain, after which it returns [ErrServerClosed]
// (which also matches [http.ErrServerClosed]). It sets srv.ConnState and
// srv.Handler to track connections and mark responses during the drain; they
// call what srv had (http.DefaultServeMux for a nil Handler), so set those
// fields before the call, not after. Serve takes ownership of ln and closes it
// when Drain starts; a successor keeps accepting on its own copy of the socket.
// Called after Drain, or a second time, Serve closes ln and returns at once.
func (d *Drainer) Serve(srv *http.Server, ln net.Listener) error {
	if srv == nil || ln == nil {
		if ln != nil {
			ln.Close()
		}
		return errors.New("graceful: Drainer.Serve of a nil server or listener")
	}
	d.mu.Lock()
	if d.draining.Load() {
		d.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if d.srv != nil {
		d.mu.Unlock()
		ln.Close()
		return errors.New("graceful: Drainer.Serve called twice")
	}
	d.srv, d.ln = srv, ln
	d.conns = make(map[net.Conn]struct{})
	d.served = make(chan struct{})
	d.install(srv)
	d.mu.Unlock()

	err := srv.Serve(ln)
	// Drain set draining before it closed ln.
	draining := d.draining.Load()
	close(d.served)
	if draining {
		return ErrServerClosed
	}
	return err
}

// install wraps the hooks of srv; d.mu is held.
func (d *Drainer) install(srv *http.Server) {
	hook := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		// StateActive and StateIdle, reported twice a request, take no
		// lock.
		switch st {
		case http.StateNew:
			d.mu.Lock()
			d.conns[c] = struct{}{}
			d.mu.Unlock()
		case http.StateClosed, http.StateHijacked:
			d.mu.Lock()
			delete(d.conns, c)
			if len(d.conns) == 0 && d.empty != nil {
				close(d.empty)
				d.empty = nil
			}
			d.mu.Unlock()
		}
		if hook != nil {
			hook(c, st)
		}
	}
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// No lock, and still no request that starts after Drain began
		// goes unmarked: atomic operations are sequentially consistent,
		// so a Load after Drain's Store sees true, as a lock taken after
		// Drain's would have. A Load before the Store belongs to a
		// request already being served when the drain began: its
		// connection goes idle after the answer, and Drain waits for the
		// next request on it, which is marked.
		if d.draining.Load() {
			// net/http closes the connection after this response, and
			// the client knows not to send on it again.
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// Drain stops accepting. Then it waits until every connection has closed
// after a response marked "Connection: close", or until the grace period
// has passed. The grace is half the time left before ctx's deadline, and
// 5 s at most (5 s without a deadline): the other half lets requests in
// flight finish. Then Drain shuts the server down with
// [http.Server.Shutdown], which closes the connections still idle and
// waits for the active ones. When ctx is done first, Drain closes every
// connection ([http.Server.Close]) and returns ctx's error. Drain returns
// nil once every connection has closed. It blocks until then, or until ctx
// is done. Drain before Serve makes Serve return at once.
func (d *Drainer) Drain(ctx context.Context) error {
	if ctx == nil {
		return errNilContext
	}
	d.mu.Lock()
	d.draining.Store(true)
	srv, ln, served := d.srv, d.ln, d.served
	d.mu.Unlock()
	if srv == nil {
		return nil
	}
	// Every connection Serve accepted is tracked by the time it returns
	// (net/http reports StateNew before it accepts again).
	ln.Close()
	select {
	case <-served:
	case <-ctx.Done():
		srv.Close()
		return ctx.Err()
	}

	// Serve has returned, so connections only close from now on: once
	// conns is empty, it stays so, and empty made now is closed once.
	d.mu.Lock()
	var empty chan struct{}
	if len(d.conns) > 0 {
		if d.empty == nil { // else another Drain waits on it already
			d.empty = make(chan struct{})
		}
		empty = d.empty
	}
	d.mu.Unlock()
	if empty != nil {
		timer := time.NewTimer(idleGrace(ctx))
		defer timer.Stop()
		select {
		case <-empty:
		case <-timer.C:
		case <-ctx.Done():
		}
	}
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
		return err
	}
	return nil
}

// idleGrace is how long Drain waits for idle connections under ctx: half
// the time left before its deadline, defaultIdleGrace at most.
func idleGrace(ctx context.Context) time.Duration {
	grace := defaultIdleGrace
	if deadline, ok := ctx.Deadline(); ok {
		grace = min(grace, time.Until(deadline)/2)
	}
	return max(grace, 0)
}
