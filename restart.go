package graceful

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"
)

// Restart starts a successor, this program again with the same arguments
// and environment and its output going where this one's goes, and returns
// nil once the successor is ready (its Ready succeeded, and Done is closed).
// It returns an error if the successor exits before it is ready, or is not
// ready after Config.ReadyTimeout (then it is killed); this instance serves
// on all along, as if nothing had happened. Restart blocks until then; one
// Restart runs at a time, and only between Ready and Done.
//
// The program started is the executable at the path this one was started
// from, so that a new binary installed there takes over. If that file is
// gone (go run removes its build when it ends), this process's own binary is
// started again where the system can name it (/proc/self/exe on Linux);
// elsewhere Restart fails then, and this instance serves on.
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
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("graceful: Restart: %w", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	timer := time.NewTimer(in.readyTimeout)
	defer timer.Stop()
	select {
	case <-in.done:
	case err := <-exited:
		if in.tookOver() {
			return nil
		}
		return fmt.Errorf("graceful: Restart: successor pid %d exited before it was ready: %v", pid, err)
	case <-timer.C:
	}
	if in.tookOver() {
		return nil
	}
	// Not ready in time, or this instance stopped meanwhile: a successor
	// that carried on would take over from nobody, or from an instance
	// that gave up on it.
	cmd.Process.Kill()
	<-exited
	if in.tookOver() {
		return nil
	}
	if in.isFinished() {
		return fmt.Errorf("graceful: Restart: %w: stopped", ErrAborted)
	}
	return fmt.Errorf("graceful: Restart: successor pid %d not ready after %v: %w", pid, in.readyTimeout, errors.Join(ErrAborted, os.ErrDeadlineExceeded))
}

// tookOver reports whether a successor has committed.
func (in *Instance) tookOver() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.succ != nil
}

// executable returns the file to start as a successor.
func executable() (string, error) {
	exe, err := os.Executable()
	if err == nil {
		if _, err = os.Stat(exe); err == nil {
			return exe, nil
		}
	}
	if selfExe != "" {
		if _, serr := os.Stat(selfExe); serr == nil {
			return selfExe, nil
		}
	}
	return "", err
}
