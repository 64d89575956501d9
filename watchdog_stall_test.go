//go:build linux

package graceful

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWatchdogStalledSelf stops the process whose watchdog waits for an
// answer, for three times its idle timeout. The idle timer is then long
// overdue, through no fault of the peer, which was not watched meanwhile:
// the watchdog must not blame the peer, but give it a fresh idle period.
// A peer that really is idle must still time out. (Without the check of a
// timer that runs late, the second and fourth cases time out at once when
// the process resumes.)
func TestWatchdogStalledSelf(t *testing.T) {
	checkFds(t)
	// The idle timeout is as short as lateSlack lets it be: the stop,
	// three times as long, ends 2 idle periods after the timer was due,
	// long after the slack of 100 ms.
	const idle = 200 * time.Millisecond
	tests := []struct {
		name   string
		stop   bool
		answer time.Duration // after the stop ends; -1: while stopped; 0: never
		want   string
	}{
		{"answered while stopped", true, -1, "nil"},
		{"answers just after the stop", true, idle / 5, "nil"},
		{"idle peer", false, 0, "deadline"},
		{"idle peer after the stop", true, 0, "deadline"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Each case waits for its child: they run side by side.
			t.Parallel()
			a, b := socketPair(t)
			bf, err := b.File()
			b.Close()
			if err != nil {
				a.Close()
				t.Fatal(err)
			}
			defer a.Close()
			cmd := exec.Command(os.Args[0], idle.String())
			cmd.ExtraFiles = []*os.File{bf}
			c := startChildCmd(t, cmd, "stalled")
			bf.Close()
			pid := cmd.Process.Pid
			a.SetDeadline(time.Now().Add(10 * time.Second))
			// The request: the child's watchdog is armed.
			if _, err := io.ReadFull(a, make([]byte, 1)); err != nil {
				t.Fatalf("reading the request: %v; stderr:\n%s", err, c.stderr.String())
			}
			if tc.stop {
				stopProcess(t, pid)
				if tc.answer < 0 {
					a.Write([]byte("a")) // waits in the socket buffer
				}
				time.Sleep(3 * idle) // the stop, the scenario itself
				if err := unix.Kill(pid, unix.SIGCONT); err != nil {
					t.Fatal(err)
				}
			}
			resumed := time.Now()
			if tc.answer > 0 {
				time.Sleep(tc.answer) // a peer that answers that late
				a.Write([]byte("a"))
			}
			line := c.line()
			afterResume := time.Since(resumed)
			c.wait()
			msText, got, _ := strings.Cut(line, " ")
			if got != tc.want {
				t.Fatalf("child: %s after %s ms, want %s", got, msText, tc.want)
			}
			t.Logf("child: %s after %s ms, %v after the stop ended (or the request, without a stop)", got, msText, afterResume.Round(time.Millisecond))
			if tc.want != "deadline" {
				return
			}
			// A fresh idle period from the end of the stop, or from the
			// arm if there was none (which the child measures: it came
			// before the request that the test read).
			since := afterResume
			if !tc.stop {
				ms, _ := strconv.Atoi(msText)
				since = time.Duration(ms) * time.Millisecond
			}
			if since < idle*9/10 || afterResume > 3*idle {
				t.Errorf("timed out %v after the stop ended (%s ms after the arm), want about %v", afterResume, msText, idle)
			}
		})
	}
}

// TestWatchdogTimerRuns runs the idle timer's function as it may run:
// early (an earlier arm's timer), on time, late (this process stalled) and
// after disarm.
func TestWatchdogTimerRuns(t *testing.T) {
	checkFds(t)
	a, b := socketPair(t)
	defer a.Close()
	defer b.Close()
	const idle = time.Hour
	w := newWatchdog(context.Background(), a, idle)
	defer w.stop()
	set := func(due time.Time) {
		w.mu.Lock()
		w.due = due
		w.mu.Unlock()
	}
	w.arm()
	w.idleTimer() // an earlier arm's run: not due yet
	if causeSet(w) {
		t.Fatal("fired before due")
	}
	late := time.Now().Add(-2 * lateSlack(idle))
	set(late)
	w.idleTimer()
	if causeSet(w) {
		t.Fatal("fired long after due, when this process had stalled")
	}
	w.mu.Lock()
	due := w.due
	w.mu.Unlock()
	if d := time.Until(due); d < idle-time.Minute || d > idle {
		t.Fatalf("re-armed for %v, want a fresh idle period", d)
	}
	set(time.Now().Add(-lateSlack(idle) / 2))
	if err := w.disarm(nil); err != nil {
		t.Fatal(err)
	}
	w.idleTimer() // after disarm
	if causeSet(w) {
		t.Fatal("fired after disarm")
	}
	w.arm()
	set(time.Now().Add(-lateSlack(idle) / 2))
	w.idleTimer() // on time, give or take the slack
	if !causeSet(w) {
		t.Fatal("did not fire when due")
	}
	_, err := a.Read(make([]byte, 1))
	if err := w.disarm(err); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the call: %v, want os.ErrDeadlineExceeded", err)
	}
}
