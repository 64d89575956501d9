package graceful

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Restart starts a successor: this program again, with the same arguments,
// environment and output. It returns nil once the successor is ready and
// Done is closed. It fails if the successor exits before it is ready, or is
// not ready within Config.ReadyTimeout (it is then killed). This instance
// serves on all along, as if nothing had happened. If another successor
// (started beside, by a deploy) is ready first, Restart returns nil too,
// and kills the one it started.
//
// Restart blocks until then: run it in a goroutine of its own, so that
// signals are handled meanwhile. Another Restart, or Stop, calls it off:
// its successor is killed, and it fails with ErrAborted. It works only
// between Ready and Done, else it fails with ErrInstanceState.
//
// The successor gets the sockets at exec, as in a fork/exec restart, and
// commits as a successor that dials Config.Socket does. The program
// started is the file at the path this one was started by, so a new binary
// installed there takes over, or a symlink switched to a new release. If
// no file is there (go run removes its build), Linux starts this
// process's own binary again; elsewhere Restart fails.
func (in *Instance) Restart() error {
	exe, err := executable()
	if err != nil {
		return fmt.Errorf("graceful: Restart: %w", err)
	}
	reply := make(chan error, 1)
	in.call(func(m *machine) { m.restartRequest(exe, reply) })
	return <-reply
}

// statePIDEnv set to 1 asks a successor that Restart starts to state its
// pid in its ready message: its connection, made by this process, does not
// tell it, and it may run under a wrapper. A variable of its own, which a
// successor built with an older version of this library ignores (its
// ready message is then without a pid, and the started process's is
// taken), while a predecessor of an older version, which would not read
// one, never sets it.
const statePIDEnv = "GRACEFUL_STATE_PID"

// restartOp is a Restart under way: the successor it started, known by
// the connection of its hand-over (its pid may be a wrapper's, and reused
// once it is gone), and the process started.
type restartOp struct {
	m     *machine
	s     *successor
	proc  *os.Process
	reply chan error // Restart's answer; nil once given

	decided  bool  // the outcome is known: result
	result   error //
	kill     bool  // the process is to end before Restart returns
	exited   bool
	exitErr  error
	detached bool // committed: its exit is not waited for
}

// restartRequest is Restart on the loop: it starts the successor.
func (m *machine) restartRequest(exe string, reply chan error) {
	if m.phase != serving {
		reply <- fmt.Errorf("graceful: Restart: %w", ErrInstanceState)
		return
	}
	if op := m.restart; op != nil {
		// Signalled again (a fixed binary deployed, say): the successor
		// not ready yet goes, and the newer one is started.
		op.decide(fmt.Errorf("graceful: Restart: successor pid %d: %w: another Restart superseded it", op.s.pid, ErrAborted), true, "another Restart superseded it")
	}
	s, proc, err := m.startSuccessor(exe)
	if err != nil {
		reply <- fmt.Errorf("graceful: Restart: %w", err)
		return
	}
	op := &restartOp{m: m, s: s, proc: proc, reply: reply}
	m.restart = op
	in := m.in
	m.spawn(func() {
		st, err := proc.Wait()
		if err == nil && !st.Success() {
			err = errors.New(st.String())
		}
		in.post(func(m *machine) { op.childExited(st, err) })
	})
}

// startSuccessor starts exe with this instance's sockets, and waits for
// its Ready as for a successor that connected.
func (m *machine) startSuccessor(exe string) (*successor, *os.Process, error) {
	proc, conn, err := m.startChild(exe)
	if err != nil {
		return nil, nil, err
	}
	// The loop sets the deadline, so that its own past one, to call the
	// hand-over off, is never undone.
	conn.SetReadDeadline(time.Now().Add(m.in.readyTimeout))
	s := &successor{conn: conn, pid: proc.Pid, handed: true}
	m.pending[s] = true
	in := m.in
	m.spawn(func() {
		pid, err := in.awaitReady(conn)
		in.post(func(m *machine) { m.successorDone(s, pid, err) })
	})
	return s, proc, nil
}

// decide sets the outcome of the Restart, which returns it once the
// process started has ended if it is to be killed, else at once.
func (op *restartOp) decide(err error, kill bool, why string) {
	if op.decided {
		return
	}
	op.decided, op.result, op.kill = true, err, kill
	if op.m.restart == op {
		op.m.restart = nil
	}
	if kill {
		if op.m.pending[op.s] {
			op.m.callOff(op.s, why) // its Ready is not to commit now
		}
		if !op.exited {
			op.proc.Kill()
		}
	}
	op.answer()
}

// answer gives Restart its outcome once there is nothing more to wait for.
func (op *restartOp) answer() {
	if op.reply == nil || !op.decided || op.kill && !op.exited {
		return
	}
	op.reply <- op.result
	op.reply = nil
}

// committed is a successor's commit while the Restart is under way: its
// own, or another's (started beside), which the one started loses to.
func (op *restartOp) committed(s *successor) {
	if s != op.s {
		op.decide(nil, true, "the predecessor handed over to another")
		return
	}
	op.decide(nil, false, "")
	// It serves now: its end is not this instance's to wait for.
	op.detached = true
	if !op.exited { // else childExited counted its end (a wrapper's)
		op.m.links--
	}
}

// linkFailed is the failure of the hand-over of the successor started.
func (op *restartOp) linkFailed(err error) {
	if op.decided {
		return
	}
	switch {
	case !errors.Is(err, errGone):
		op.decide(fmt.Errorf("graceful: Restart: successor pid %d: %w", op.s.pid, err), true, "")
	case op.exited:
		op.decide(op.exitedEarly(err), false, "")
	default:
		// It is exiting: its status says more. Timeout at most.
		time.AfterFunc(max(op.m.in.timeout, time.Second), func() {
			op.m.in.post(func(*machine) {
				op.decide(fmt.Errorf("graceful: Restart: successor pid %d: %w", op.s.pid, err), true, "")
			})
		})
		op.result = err // for childExited
	}
}

// childExited is the end of the process started.
func (op *restartOp) childExited(st *os.ProcessState, err error) {
	op.exited, op.exitErr = true, err
	if !op.detached {
		op.m.linkEnded()
	}
	if !op.decided && op.result != nil {
		// Its hand-over failed first: it went away, and now it exited.
		op.decide(op.exitedEarly(op.result), false, "")
		return
	}
	// Else its hand-over decides: a program started in the background
	// (by a wrapper that exited) may live on.
	op.answer()
	m := op.m
	if op.detached && err != nil && op.proc.Pid == op.s.pid && m.succ == op.s && m.phase == handedOver && !m.passing {
		// The successor that serves crashed while this instance drains:
		// nothing accepts. A PassConns under way revives it itself.
		m.successorCrashed(st)
	}
}

// exitedEarly is the error of a successor that exited before its Ready.
func (op *restartOp) exitedEarly(why error) error {
	err := op.exitErr
	if err == nil {
		err = errors.New("exit status 0")
	}
	return fmt.Errorf("graceful: Restart: successor pid %d exited before it was ready: %v (%w)", op.s.pid, err, why)
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

// closeAll closes the descriptors fds.
func closeAll(fds []int) {
	for _, fd := range fds {
		closeFd(fd)
	}
}
