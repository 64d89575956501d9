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
// The idle clock runs on this process's time as much as the peer's: if this
// process was stopped (SIGSTOP, a debugger, a suspended VM) or starved of
// CPU while it waited, its idle timer runs long after it was due, and the
// peer's answer may be waiting in the socket buffer, unread. So a timer that
// runs much later than due (more than lateSlack) does not interrupt: the
// peer was not watched meanwhile, and it gets a fresh idle period from then.
//
// arm, disarm and stop are called by the one goroutine that makes the calls;
// the timer and the context fire from others.
type watchdog struct {
	conn    net.Conn
	idle    time.Duration
	timer   *time.Timer
	idleErr error // the cause when the idle timer fires
	stopCtx func() bool
	mu      sync.Mutex
	// Guarded by mu: the idle timer's function acts only while armed
	// (between arm and disarm) and once due (a run of an earlier arm's
	// timer, late, finds a later due, or armed false).
	armed     bool
	due       time.Time // when the idle period ends, on the monotonic clock
	idleFired bool      // the idle timer interrupted since arm
	cause     error
	stopped   bool
}

// lateSlack is how late the idle timer of a watchdog may run and still
// blame the peer: a timer later than that tells of this process's own
// stall.
func lateSlack(idle time.Duration) time.Duration {
	return max(idle/4, 100*time.Millisecond)
}

// newWatchdog returns nil when there is nothing to watch for.
func newWatchdog(ctx context.Context, conn net.Conn, idle time.Duration) *watchdog {
	if idle <= 0 && ctx.Done() == nil {
		return nil
	}
	w := &watchdog{conn: conn, idle: idle}
	if idle > 0 {
		w.idleErr = fmt.Errorf("peer idle for %v: %w", idle, os.ErrDeadlineExceeded)
		w.timer = time.AfterFunc(time.Hour, w.idleTimer)
		w.timer.Stop()
	}
	if ctx.Done() != nil {
		w.stopCtx = context.AfterFunc(ctx, func() { w.fire(ctx.Err()) })
	}
	return w
}

// idleTimer is the idle timer's function.
func (w *watchdog) idleTimer() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.armed {
		return // disarmed when it was due
	}
	now := time.Now()
	if now.Before(w.due) {
		return // a late run of an earlier arm's timer
	}
	if now.Sub(w.due) > lateSlack(w.idle) {
		// This process was stopped or starved when the timer was
		// due: the peer may have answered meanwhile, unseen.
		w.due = now.Add(w.idle)
		w.timer.Reset(w.idle)
		return
	}
	w.idleFired = true
	w.fireLocked(w.idleErr)
}

func (w *watchdog) fire(cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fireLocked(cause)
}

func (w *watchdog) fireLocked(cause error) {
	if w.stopped || w.cause != nil {
		return
	}
	w.cause = cause
	w.conn.SetDeadline(time.Unix(1, 0))
}

// arm starts the idle clock before a call that waits for the peer.
func (w *watchdog) arm() {
	if w != nil && w.timer != nil {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.armed = true
		w.idleFired = false
		w.due = time.Now().Add(w.idle)
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

// settle stops the idle clock, and reports whether the idle timer fired
// since arm. A run of its function that is under way, or comes later,
// finds the clock stopped and does nothing, so that it cannot set its
// deadline later, during the next call.
func (w *watchdog) settle() (fired bool) {
	if w.timer == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.armed {
		return false
	}
	w.armed = false
	w.timer.Stop()
	fired = w.idleFired
	w.idleFired = false
	return fired
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
