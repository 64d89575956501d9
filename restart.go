package graceful

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// Restart starts a successor, this program again with the same arguments
// and environment and its output going where this one's goes, and returns
// nil once the successor is ready (its Ready succeeded, and Done is closed).
// It returns an error if the successor exits before it is ready, or is not
// ready within Config.Timeout (to start) and Config.ReadyTimeout (then it
// is killed); this instance serves on all along, as if nothing had
// happened. Restart blocks until then; one Restart runs at a time, and only
// between Ready and Done. If another successor (started beside, by a
// deploy) is ready first, Restart returns nil too; the one it started is
// then refused, and gives up.
//
// The successor gets this instance's sockets at exec, as in a fork/exec
// restart and as fast, with the environment variable GRACEFUL_INHERIT
// saying which descriptors they are; its Start takes them, and the commit
// is the same as for a successor that dials Config.Socket.
//
// The program started is the file at the path this one was started from
// (as os.Executable said when it started), so that a new binary installed
// there takes over, whether the old one was replaced, renamed over or moved
// aside. If no file is there (go run removes its build when it ends), this
// process's own binary is started again where the system can name it
// (/proc/self/exe on Linux); elsewhere Restart fails then, and this instance
// serves on.
func (in *Instance) Restart() error {
	in.mu.Lock()
	if in.phase != serving || in.restart {
		in.mu.Unlock()
		return fmt.Errorf("graceful: Restart: %w", ErrInstanceState)
	}
	in.restart = true
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		in.restart = false
		in.mu.Unlock()
	}()

	exe, err := executable()
	if err != nil {
		return fmt.Errorf("graceful: Restart: %w", err)
	}
	proc, conn, err := in.startChild(exe)
	if err != nil {
		return fmt.Errorf("graceful: Restart: %w", err)
	}
	pid := proc.Pid
	failed := make(chan error, 1)
	in.mu.Lock()
	in.restarting = restarting{pid: pid, failed: failed}
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		in.restarting = restarting{}
		in.mu.Unlock()
	}()
	in.serveWG.Add(1)
	go in.serveChild(conn, pid)
	exited := make(chan error, 1)
	go func() {
		st, err := proc.Wait()
		if err == nil && !st.Success() {
			err = errors.New(st.String())
		}
		exited <- err
	}()
	// The successor's predecessor, this instance, gives up on it
	// ReadyTimeout after its hand-over: give it the time to start first.
	timer := time.NewTimer(in.readyTimeout + in.timeout)
	defer timer.Stop()
	var reason error
	select {
	case <-in.done:
	case err := <-exited:
		if in.tookOver() {
			return nil
		}
		return fmt.Errorf("graceful: Restart: successor pid %d exited before it was ready: %v", pid, err)
	case reason = <-failed:
		if errors.Is(reason, errGone) {
			// It is exiting: its status says more.
			select {
			case err := <-exited:
				return fmt.Errorf("graceful: Restart: successor pid %d exited before it was ready: %v", pid, err)
			case <-timer.C:
			}
		}
	case <-timer.C:
		reason = fmt.Errorf("%w: not ready after %v (%w)", ErrAborted, in.readyTimeout+in.timeout, os.ErrDeadlineExceeded)
	}
	if in.tookOver() {
		return nil
	}
	// Given up on, or this instance stopped meanwhile: a successor that
	// carried on would take over from nobody, or from an instance that
	// gave up on it.
	proc.Kill()
	<-exited
	if in.tookOver() {
		return nil
	}
	if reason == nil {
		reason = fmt.Errorf("%w: stopped", ErrAborted)
	}
	return fmt.Errorf("graceful: Restart: successor pid %d: %w", pid, reason)
}

// restarting is the successor a Restart waits for.
type restarting struct {
	pid    int
	failed chan<- error // why its hand-over failed
}

// handOverFailed tells a Restart waiting for the successor pid that its
// hand-over failed.
func (in *Instance) handOverFailed(pid int, err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.restarting.pid == pid && pid != 0 {
		select {
		case in.restarting.failed <- err:
		default:
		}
	}
}

// tookOver reports whether a successor has committed.
func (in *Instance) tookOver() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.succ != nil
}

// startedAs is the path of the binary when the program started, before a
// deploy could move it aside (os.Executable follows the file where it goes).
var startedAs, _ = os.Executable()

// executable returns the file to start as a successor.
func executable() (string, error) {
	if _, err := os.Stat(startedAs); err == nil {
		return startedAs, nil
	}
	if selfExe != "" {
		if _, err := os.Stat(selfExe); err == nil {
			return selfExe, nil
		}
	}
	return "", fmt.Errorf("the executable %s is gone: %w", startedAs, fs.ErrNotExist)
}

// closeInts closes the descriptors from first to last.
func closeInts(first, last int) {
	for fd := first; fd <= last; fd++ {
		closeFd(fd)
	}
}
