package graceful

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Restart starts a successor, this program again with the same arguments
// and environment and its output going where this one's goes, and returns
// nil once the successor is ready (its Ready succeeded, and Done is closed).
// It returns an error if the successor exits before it is ready (a process
// that lives on with its connection, as a wrapper's background job, is
// waited for), or is not ready within Config.Timeout (to start) and
// Config.ReadyTimeout (then it is killed); this instance serves on all
// along, as if nothing had happened. Restart blocks until then; one Restart
// runs at a time, and only between Ready and Done (otherwise it fails with
// ErrInstanceState). If another successor (started beside, by a deploy) is
// ready first, Restart returns nil too; the one it started is then refused,
// and gives up.
//
// The successor gets this instance's sockets at exec, as in a fork/exec
// restart and as fast, with the environment variable GRACEFUL_INHERIT
// saying which descriptors they are; its Start takes them, and the commit
// is the same as for a successor that dials Config.Socket.
//
// The program started is the file at the path this one was started by
// (its os.Args[0], found in PATH if need be and taken from the working
// directory at start if relative, if it named this program then; or else
// os.Executable), so that a new binary installed there takes over, whether
// the old one was replaced, renamed over or moved aside, or a symlink on
// the path now names a new release. If no file is there (go run removes its
// build when it ends), this process's own binary is started again where the
// system can name it (/proc/self/exe on Linux); elsewhere Restart fails
// then, and this instance serves on.
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
	// The child's hand-over counts as served from now on: Stop waits for
	// it, and one that came first leaves no child to start.
	in.mu.Lock()
	if in.phase != serving {
		in.mu.Unlock()
		return fmt.Errorf("graceful: Restart: %w", ErrInstanceState)
	}
	in.serveWG.Add(1)
	in.mu.Unlock()
	proc, conn, err := in.startChild(exe)
	if err != nil {
		in.serveWG.Done()
		return fmt.Errorf("graceful: Restart: %w", err)
	}
	pid := proc.Pid
	failed := make(chan error, 1)
	in.mu.Lock()
	in.restarting = restarting{conn: conn, failed: failed}
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		in.restarting = restarting{}
		in.mu.Unlock()
	}()
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
	bound := in.readyTimeout + max(in.timeout, 0)
	timer := time.NewTimer(bound)
	defer timer.Stop()
	var reason error
	exitedEarly := func(err error, why error) error {
		if err == nil {
			err = errors.New("exit status 0")
		}
		if why != nil {
			return fmt.Errorf("graceful: Restart: successor pid %d exited before it was ready: %v (%w)", pid, err, why)
		}
		return fmt.Errorf("graceful: Restart: successor pid %d exited before it was ready: %v", pid, err)
	}
	var exitErr error
	hasExited := false
wait:
	for {
		select {
		case <-in.done:
			break wait
		case exitErr = <-exited:
			hasExited, exited = true, nil
			if in.tookOver() {
				break wait
			}
			// The program may live on in a process of its own (a wrapper
			// started it in the background): its hand-over decides, and
			// ends at once if nobody holds the connection any more.
		case reason = <-failed:
			if errors.Is(reason, errGone) && !hasExited {
				// It is exiting: its status says more.
				select {
				case exitErr = <-exited:
					hasExited = true
				case <-timer.C:
				}
			}
			if errors.Is(reason, errGone) && hasExited {
				return exitedEarly(exitErr, reason)
			}
			break wait
		case <-timer.C:
			reason = fmt.Errorf("%w: not ready after %v (%w)", ErrAborted, bound, os.ErrDeadlineExceeded)
			// The hand-over's own deadline, no later than this one,
			// decides: a Ready read just now commits.
			select {
			case <-in.done:
			case <-failed:
			}
			break wait
		}
	}
	kill := func() {
		if !hasExited {
			proc.Kill()
			<-exited
		}
	}
	if in.committedTo(conn) {
		return nil
	} else if in.tookOver() {
		// Another successor came first: this one is refused, and goes.
		kill()
		return nil
	}
	// Given up on (this instance refused it already, so it cannot commit
	// now), or this instance stopped meanwhile: a successor that carried
	// on would take over from nobody, or from an instance that gave up on
	// it.
	kill()
	if reason == nil {
		reason = fmt.Errorf("%w: stopped", ErrAborted)
	}
	return fmt.Errorf("graceful: Restart: successor pid %d: %w", pid, reason)
}

// statePIDEnv set to 1 asks a successor that Restart starts to state its
// pid in its ready message: its connection, made by this process, does not
// tell it, and it may run under a wrapper. A variable of its own, which a
// successor built with an older version of this library ignores (its
// ready message is then without a pid, and the started process's is
// taken), while a predecessor of an older version, which would not read
// one, never sets it.
const statePIDEnv = "GRACEFUL_STATE_PID"

// restarting is the successor a Restart waits for, by the connection of
// its hand-over (its pid may be a wrapper's, and reused once it is gone).
type restarting struct {
	conn   *net.UnixConn
	failed chan<- error // why its hand-over failed
}

// handOverFailed tells a Restart waiting for the successor at conn that its
// hand-over failed, and reports whether one did: that Restart returns the
// error, else the caller logs it.
func (in *Instance) handOverFailed(conn *net.UnixConn, err error) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.restarting.conn == conn && conn != nil {
		select {
		case in.restarting.failed <- err:
			return true
		default:
		}
	}
	return false
}

// committedTo reports whether the successor at conn has committed.
func (in *Instance) committedTo(conn *net.UnixConn) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.succ != nil && in.succ.conn == conn
}

// tookOver reports whether a successor has committed.
func (in *Instance) tookOver() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.succ != nil
}

// startedAs is the path the program was started by, taken when it
// started: before a deploy could move the binary aside (os.Executable
// follows the file where it goes), and through any symlink, which a deploy
// may switch to a new release (os.Executable resolves it).
var startedAs = startPath()

func startPath() string {
	exe, _ := os.Executable()
	arg0 := os.Args[0]
	if !strings.Contains(arg0, "/") {
		arg0, _ = exec.LookPath(arg0) // as a shell found it
	}
	if p, err := filepath.Abs(arg0); err == nil && arg0 != "" {
		// Only the path of this very program: an argv[0] set to something
		// else ("-name", a name of another program in PATH) is not.
		fi, err := os.Stat(p)
		xi, xerr := os.Stat(exe)
		if err == nil && xerr == nil && fi.Mode().IsRegular() && os.SameFile(fi, xi) {
			return p
		}
	}
	return exe
}

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
