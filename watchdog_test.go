//go:build linux

package graceful

import (
	"context"
	"errors"
	"testing"
	"time"
)

// causeSet reports whether the watchdog has set its past deadline.
func causeSet(w *watchdog) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cause != nil
}

// TestWatchdogLateFire makes the idle timer fire between a call that
// succeeded and its disarm, as it may when the call ends at the timeout's
// edge. The peer was not idle: the next call must not fail for it.
func TestWatchdogLateFire(t *testing.T) {
	checkFds(t)
	a, b := socketPair(t)
	defer a.Close()
	defer b.Close()
	w := newWatchdog(context.Background(), a, time.Nanosecond)
	defer w.stop()
	// The call succeeds, then the timer fires before disarm.
	_, err := a.Write([]byte("x"))
	w.arm()
	for !causeSet(w) {
		time.Sleep(time.Millisecond)
	}
	if err := w.disarm(err); err != nil {
		t.Fatalf("the call that succeeded: %v", err)
	}
	w.idle = time.Hour
	for _, call := range []func() error{
		func() error { _, err := a.Write([]byte("y")); return err },
		func() error { _, err := a.Read(make([]byte, 1)); return err },
	} {
		b.Write([]byte("z")) // for the read
		w.arm()
		if err := w.disarm(call()); err != nil {
			t.Fatalf("the next call: %v", err)
		}
	}
}

// TestWatchdogContextAfterCall checks that a context that ends after a call
// succeeded fails the next call with the context's error.
func TestWatchdogContextAfterCall(t *testing.T) {
	checkFds(t)
	a, b := socketPair(t)
	defer a.Close()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	w := newWatchdog(ctx, a, time.Hour)
	defer w.stop()
	w.arm()
	_, err := a.Write([]byte("x"))
	cancel()
	for !causeSet(w) {
		time.Sleep(time.Millisecond)
	}
	if err := w.disarm(err); err != nil {
		t.Fatalf("the call that succeeded: %v", err)
	}
	w.arm()
	_, err = a.Write([]byte("y"))
	if err := w.disarm(err); !errors.Is(err, context.Canceled) {
		t.Fatalf("the next call: %v, want context.Canceled", err)
	}
}
