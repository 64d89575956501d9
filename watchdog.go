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
type watchdog struct {
	conn    net.Conn
	idle    time.Duration
	timer   *time.Timer
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
		w.timer = time.AfterFunc(time.Hour, func() {
			w.fire(fmt.Errorf("peer idle for %v: %w", idle, os.ErrDeadlineExceeded))
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
		w.timer.Reset(w.idle)
	}
}

// disarm stops the idle clock after such a call; err is the call's error,
// replaced by the watchdog's reason when it interrupted the call.
func (w *watchdog) disarm(err error) error {
	if w == nil {
		return err
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	if err == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cause != nil {
		return w.cause
	}
	return err
}

// stop ends the watch. If the watchdog fired after the last call succeeded,
// the deadline it set is cleared again, since the caller's transfer is done.
func (w *watchdog) stop() {
	if w == nil {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
	}
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
