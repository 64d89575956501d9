package graceful

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
)

// This file revives the service when the successor that committed dies
// while this instance passes it connections, or crashes while this
// instance drains: nothing accepts then, since this instance handed its
// sockets over. It keeps a copy of what it handed at the commit, and
// starts a replacement with it, as Restart would; the connections not yet
// passed go to the replacement.

// kept is the copy of what an instance handed to its successor.
type kept struct {
	fds   []int
	metas []string
}

// keepHandedOn duplicates what the successor was handed, at the commit.
func (m *machine) keepHandedOn() {
	var fds []int
	metas, err := dupHandedOn(m.snapshot(), &fds)
	if err != nil {
		closeAll(fds)
		m.in.logf("keeping a copy of the sockets: %v", err)
		return
	}
	m.kept = &kept{fds: fds, metas: metas}
}

// dropKept closes the copy.
func (m *machine) dropKept() {
	if m.kept != nil {
		closeAll(m.kept.fds)
		m.kept = nil
	}
}

// successorDied reports whether the successor at the other end of a
// failed PassConns has died: its connection broke, and its process ended.
func (in *Instance) successorDied(pid int, err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) && in.predGone(pid)
}

// revive starts a replacement for the successor that died, handing it the
// copy of the sockets; PassConns waits for it. It reports whether one was
// started.
func (m *machine) revive() bool {
	if m.kept == nil || m.phase != handedOver {
		return false
	}
	dead := m.succ.pid
	m.succ.conn.Close()
	m.succ = nil
	exe, err := executable()
	s := &successor{handed: true}
	if err == nil {
		// Its predecessor is the successor that died: the start lock
		// names it as the last that got ready.
		s.pid, s.conn, err = execSuccessor(exe, successorEnv(), dead, m.kept.metas, m.kept.fds, nil)
	}
	if err != nil {
		m.passErr = fmt.Errorf("the successor, pid %d, died, and starting another failed: %w", dead, err)
		return false
	}
	m.in.logf("the successor, pid %d, died: starting pid %d with the sockets", dead, s.pid)
	s.conn.SetReadDeadline(time.Now().Add(m.in.readyTimeout))
	m.pending[s] = true
	m.reviving = s
	in := m.in
	m.spawn(func() {
		p, err := in.awaitReady(s.conn)
		in.post(func(m *machine) { m.successorDone(s, p, err) })
	})
	go reap(s.pid)
	return true
}

// successorCrashed takes the crash of the serving successor, which this
// instance started and reaped, while it drains. A keeper, told so, starts
// the next instance, as for any crash. Else this instance starts a
// replacement with its copy of the sockets.
func (m *machine) successorCrashed(st *os.ProcessState) {
	if !tellKeeperExit(m.succ.pid, st) {
		m.revive()
		return
	}
	m.succ.conn.Close()
	m.succ = nil
	m.dropKept()
}

// reap waits for the end of the child pid, which lives on as the service.
func reap(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Wait()
	}
}

// recommit makes the replacement the successor: it serves from now on.
func (m *machine) recommit(s *successor) error {
	m.reviving = nil
	// Named before it learns that it serves, as at a commit: this
	// instance may exit as soon as it has answered.
	m.notify("MAINPID=" + strconv.Itoa(s.pid))
	if err := writeReply(s.conn, m.in.deadline(), statusOK, ""); err != nil {
		m.passErr = fmt.Errorf("the successor died, and its replacement went away: %w", ioError("committing", err))
		m.grantPasses()
		return err
	}
	s.conn.SetReadDeadline(time.Time{})
	m.succ = s
	m.grantPasses()
	return nil
}

// revivalFailed ends a replacement's hand-over that failed.
func (m *machine) revivalFailed(err error) {
	m.reviving = nil
	m.passErr = fmt.Errorf("the successor died, and its replacement failed: %w", err)
	m.grantPasses()
}

// grantPasses answers the PassConns calls that waited for a replacement.
func (m *machine) grantPasses() {
	passes := m.passes
	m.passes = nil
	for _, p := range passes {
		m.passRequest(p)
	}
}
