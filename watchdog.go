package graceful

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// watchdog interrupts a blocked call on a connection when the peer has made
// no progress for the idle timeout, or when the context is done, by setting a
// deadline in the past. Until then it never touches the connection's
// deadlines, so a caller's own deadline stays in force and as it was.
//
// arm, disarm and stop are called by the one goroutine that makes the calls;
// the timer and the context fire from others.
type watchdog struct {
	conn    net.Conn
	idle    time.Duration
	timer   *time.Timer
	idleErr error         // the cause when the idle timer fires
	fired   chan struct{} // receives once the idle timer's function has run
	armed   bool          // the idle timer runs: between arm and disarm
	stopCtx func() bool
	mu      sync.Mutex
	cause   error
	stopped bool
}

// newWatchdog returns nil when there is nothing to watch for.
func newWatchdog(ctx context.Context, conn net.Conn, idle time.Duration) *watchdog {
	if idle <= 0 && ctx.Done() == nil {
		return nil
	}
	w := &watchdog{conn: conn, idle: idle}
	if idle > 0 {
		w.idleErr = fmt.Errorf("peer idle for %v: %w", idle, os.ErrDeadlineExceeded)
		w.fired = make(chan struct{}, 1)
		w.timer = time.AfterFunc(time.Hour, func() {
			w.fire(w.idleErr)
			w.fired <- struct{}{}
		})
		w.timer.Stop()
	}
	if ctx.Done() != nil {
		w.stopCtx = context.AfterFunc(ctx, func() { w.fire(ctx.Err()) })
	}
	return w
}

func (w *watchdog) fire(cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || w.cause != nil {
		return
	}
	w.cause = cause
	w.conn.SetDeadline(time.Unix(1, 0))
}

// arm starts the idle clock before a call that waits for the peer.
func (w *watchdog) arm() {
	if w != nil && w.timer != nil {
		w.armed = true
		w.timer.Reset(w.idle)
	}
}

// disarm stops the idle clock after such a call; err is the call's error,
// replaced by the watchdog's reason when it interrupted the call.
func (w *watchdog) disarm(err error) error {
	if w == nil {
		return err
	}
	idleFired := w.settle()
	if err == nil && !idleFired {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		if w.cause == w.idleErr {
			// The timer fired after the call had succeeded, at the
			// edge of the timeout: the peer was not idle, and the past
			// deadline must not fail the next call.
			w.cause = nil
			w.conn.SetDeadline(time.Time{})
		}
		return nil
	}
	if w.cause != nil {
		return w.cause
	}
	return err
}

// settle stops the idle timer, and reports whether it fired. If it did, it
// waits until its function has run, so that it cannot set its deadline
// later, during the next call.
func (w *watchdog) settle() (fired bool) {
	if !w.armed {
		return false
	}
	w.armed = false
	if w.timer.Stop() {
		return false
	}
	<-w.fired
	return true
}

// stop ends the watch. If the watchdog fired after the last call succeeded,
// the deadline it set is cleared again, since the caller's transfer is done.
func (w *watchdog) stop() {
	if w == nil {
		return
	}
	w.settle()
	if w.stopCtx != nil {
		w.stopCtx()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	if w.cause != nil {
		w.conn.SetDeadline(time.Time{})
	}
}
