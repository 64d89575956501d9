package graceful

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file is the predecessor's side of a hand-over: serving the
// hand-over socket, handing the sockets to a successor, waiting for its
// ready message, and the commit.

// successor is this instance's link to an instance that takes over from
// it. Its goroutine reads and writes conn; the loop decides.
type successor struct {
	conn *net.UnixConn
	// pid is the successor's by its connection or, for one that Restart
	// started, the process started; its ready message may state another.
	pid int
	// handed is set once the successor holds the sockets: from then on a
	// refusal is what it reads next, not garbage inside a transfer.
	handed bool
	// calledOff says why its hand-over was called off before then.
	calledOff string
}

// snapshot is what a successor is handed: the hand-over socket, the state
// and the objects, as the loop had them.
type snapshot struct {
	handover *net.UnixListener
	state    []byte
	out      []handedOn
}

func (m *machine) snapshot() *snapshot {
	return &snapshot{handover: m.handover, state: m.outState, out: slices.Clone(m.out)}
}

// turnRequest asks the loop for the turn to hand over: one successor at a
// time is handed the sockets, until its Ready or failure. grant receives
// what to hand, or nil if there is nothing to hand any more.
type turnRequest struct {
	s     *successor
	grant chan *snapshot
}

// listenHandover creates the hand-over socket of a first instance.
func (m *machine) listenHandover() error {
	ln, err := listenUnix(m.in.cfg.Socket, 0o600, -1)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(m.in.cfg.Socket)
	if err != nil {
		ln.Close()
		return err
	}
	m.sockFile, m.handover = fi, ln.(*fileListener).UnixListener
	return nil
}

// acceptSuccessors accepts successors on the hand-over socket until it is
// closed. Each is served in a goroutine of its own, so that one that stalls
// before its hello delays no other.
func (in *Instance) acceptSuccessors(ln *net.UnixListener) {
	defer in.post(func(m *machine) { m.linkEnded() })
	var delay time.Duration
	for {
		conn, err := ln.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of descriptors, for instance: wait rather than spin.
			in.logf("accepting a successor: %v", err)
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s := &successor{conn: conn, pid: peerPIDOf(conn)}
		in.post(func(m *machine) { m.accepted(s) })
	}
}

// accepted serves a successor that connected to the hand-over socket.
func (m *machine) accepted(s *successor) {
	if m.phase != serving {
		s.conn.Close()
		return
	}
	m.pending[s] = true
	m.spawn(func() { m.in.serveSuccessor(s) })
}

// serveSuccessor hands this instance's sockets to a successor, once it has
// said its hello and has its turn, and waits for its Ready.
func (in *Instance) serveSuccessor(s *successor) {
	tr, err := openTransfer(context.Background(), s.conn, nil, in.timeout)
	if err == nil {
		// A client earns its turn with its hello.
		t := turnRequest{s: s, grant: make(chan *snapshot, 1)}
		in.post(func(m *machine) { m.wantTurn(t) })
		snap := <-t.grant
		if snap == nil {
			err = errFinished
		} else {
			err = tr.run(func(tr *ResponseWriter) error { return writeHandover(tr, snap) })
		}
		tr.close()
		if snap != nil && in.calledOff(s, err == nil) {
			err = errFinished
		}
	}
	var pid int
	if err == nil {
		pid, err = in.awaitReady(s.conn)
	}
	in.post(func(m *machine) { m.successorDone(s, pid, err) })
}

// calledOff tells the loop that the transfer to s ended, done or not, and
// reports whether its hand-over was called off meanwhile. Then s is told
// so, now that no frame is being written: having taken the transfer, it
// reads the refusal as the answer to its Ready; in the middle of it, as a
// frame it cannot parse, which it fails on too.
func (in *Instance) calledOff(s *successor, done bool) bool {
	called := make(chan string, 1)
	in.post(func(m *machine) { m.handed(s, done, called) })
	reason := <-called
	if reason != "" {
		refuse(s.conn, reason)
	}
	return reason != ""
}

// errFinished is a successor served after this instance stopped or
// handed over: the loop says why.
var errFinished = errors.New("finished")

// wantTurn grants the turn to hand over, or queues the request.
func (m *machine) wantTurn(t turnRequest) {
	if m.phase != serving || !m.pending[t.s] {
		t.grant <- nil
	} else if m.turn == nil {
		m.turn = t.s
		// The loop sets the connection's deadlines, so that its own (past,
		// to call the hand-over off) is never undone.
		t.s.conn.SetReadDeadline(time.Now().Add(m.in.readyTimeout))
		t.grant <- m.snapshot()
	} else {
		m.queue = append(m.queue, t)
	}
}

// writeHandover sends the hand-over socket, with the application's state,
// then every listener, packet socket and file handed on.
func writeHandover(s *ResponseWriter, snap *snapshot) error {
	if err := writeObject(s, snap.handover, handoverMeta(snap.state)); err != nil {
		return err
	}
	for _, h := range snap.out {
		err := writeObject(s, h.obj, h.meta)
		if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
			// Closed by the application: not to be handed on.
			continue
		}
		if err != nil {
			return fmt.Errorf("graceful: handing on %s %s: %w", h.meta["network"], h.meta["address"]+h.meta["name"], err)
		}
	}
	return nil
}

// handoverMeta is the meta of the hand-over socket: the state, and who
// hands it over.
func handoverMeta(state []byte) Meta {
	return Meta{"kind": kindHandover, "state": string(state), "pid": strconv.Itoa(os.Getpid())}
}

// awaitReady waits for the successor's ready message, by the read
// deadline the loop set, and returns the pid it states, 0 if none. A
// successor that stops before its Ready says so.
func (in *Instance) awaitReady(conn *net.UnixConn) (int, error) {
	status, body, err := readReply(conn)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, fmt.Errorf("%w: not ready after %v", ErrAborted, in.readyTimeout)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errGone, ioError("waiting for Ready", err))
	}
	switch {
	case status == statusRefused:
		return 0, fmt.Errorf("%w: %s", errGone, body)
	case status != statusReady:
		return 0, fmt.Errorf("%w: status %d instead of ready", ErrProtocol, status)
	case len(body) == 0:
		return 0, nil
	}
	pid, err := strconv.Atoi(string(body))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%w: ready for pid %q", ErrProtocol, body)
	}
	return pid, nil
}

// errGone marks a successor that went away: there is nobody to tell.
var errGone = errors.New("the successor is gone")

// successorDone takes the outcome of a successor's hand-over: its ready
// message (err nil, with the pid it states, if any), or why it failed.
func (m *machine) successorDone(s *successor, pid int, err error) {
	defer m.linkEnded()
	if m.turn == s {
		m.nextTurn()
	}
	if !m.pending[s] {
		s.conn.Close() // refused already
		return
	}
	delete(m.pending, s)
	if pid != 0 {
		s.pid = pid
	}
	if err == nil {
		err = m.commit(s)
	} else if !errors.Is(err, errGone) {
		// A successor that may still be waiting learns that this one
		// gave up, and never takes it for dead.
		m.refuse(s, m.whyRefused(err))
	}
	if err != nil {
		s.conn.Close()
		m.handOverFailed(s, err)
	}
}

// refuse tells a successor that holds the sockets that it will not take
// over; one that does not yet will find the connection closed.
func (m *machine) refuse(s *successor, reason string) {
	if s.handed {
		refuse(s.conn, reason)
	}
}

// callOff calls off the hand-over to a pending successor: it is refused,
// and its goroutine interrupted (its end is then ignored).
func (m *machine) callOff(s *successor, reason string) {
	delete(m.pending, s)
	m.refuse(s, reason)
	s.calledOff = reason
	s.conn.SetDeadline(time.Unix(1, 0))
}

// handed takes the end of a successor's transfer: done, it holds the
// sockets now. called receives why it was called off meanwhile, if it was.
func (m *machine) handed(s *successor, done bool, called chan<- string) {
	if m.pending[s] {
		s.handed = done
		if done {
			// ReadyTimeout counts from here. The transfer's watchdog may
			// have cleared the deadline set at the turn, firing as its
			// last call succeeded.
			s.conn.SetReadDeadline(time.Now().Add(m.in.readyTimeout))
		}
		called <- ""
		return
	}
	called <- cmp.Or(s.calledOff, "the predecessor stopped")
}

// nextTurn gives the turn to the next successor waiting for it.
func (m *machine) nextTurn() {
	m.turn = nil
	for len(m.queue) > 0 && m.turn == nil {
		t := m.queue[0]
		m.queue = m.queue[1:]
		m.wantTurn(t)
	}
}

// whyRefused says why this instance gave up on a successor.
func (m *machine) whyRefused(err error) string {
	switch {
	case m.succ != nil:
		return "the predecessor handed over to another"
	case m.phase != serving || errors.Is(err, errFinished):
		return "the predecessor stopped"
	}
	return strings.TrimPrefix(err.Error(), ErrAborted.Error()+": ")
}

// handOverFailed reports a failed hand-over: to the Restart that waits
// for it, else in the log.
func (m *machine) handOverFailed(s *successor, err error) {
	if s == m.reviving {
		m.revivalFailed(err)
		return
	}
	if op := m.restart; op != nil && op.s == s {
		op.linkFailed(err)
		return
	}
	if errors.Is(err, errFinished) || m.phase >= stopping {
		return
	}
	m.in.logf("hand-over to pid %d failed: %v", s.pid, err)
}

// commit makes the successor s the one that serves: this instance stops
// accepting on the hand-over socket, answers, and closes Done. If the
// answer cannot be written, the successor is gone and this instance
// serves on, accepting again.
func (m *machine) commit(s *successor) error {
	if s == m.reviving && m.phase == handedOver {
		return m.recommit(s)
	}
	if m.phase != serving {
		m.refuse(s, m.whyRefused(errFinished))
		return fmt.Errorf("%w: stopped or handed over to another", ErrAborted)
	}
	// A spare descriptor keeps the socket, to serve on if need be.
	spare, err := m.handover.File()
	if err != nil {
		m.refuse(s, "cannot commit")
		return fmt.Errorf("graceful: committing: %w", err)
	}
	defer spare.Close()
	m.keepHandedOn() // to revive the service if the successor dies
	m.notify("MAINPID=" + strconv.Itoa(s.pid))
	m.handover.Close()
	if werr := writeReply(s.conn, m.in.deadline(), statusOK, ""); werr != nil {
		m.dropKept()
		m.notify("MAINPID=" + strconv.Itoa(os.Getpid()))
		return m.serveOn(spare, werr)
	}
	s.conn.SetReadDeadline(time.Time{}) // for PassConns
	m.phase, m.succ = handedOver, s
	// Any other successor that holds this instance's sockets (a Restart's,
	// while this one started beside) is refused now, while this process
	// lives: one that found the connection closed without a word would
	// take this instance for dead, and serve too.
	for other := range m.pending {
		m.callOff(other, "the predecessor handed over to another")
	}
	for _, t := range m.queue {
		t.grant <- nil
	}
	m.queue = nil
	if op := m.restart; op != nil {
		op.committed(s)
	}
	close(m.in.done)
	return nil
}

// serveOn serves the hand-over socket again, from its spare descriptor,
// after a commit that could not be written.
func (m *machine) serveOn(spare *os.File, werr error) error {
	ln, err := net.FileListener(spare)
	if err != nil {
		// Nothing more can be done: the socket is gone.
		return fmt.Errorf("graceful: serving on after a failed commit: %w", err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	m.handover = ul
	m.spawn(func() { m.in.acceptSuccessors(ul) })
	return fmt.Errorf("%w: %w", ErrAborted, ioError("committing", werr))
}

// notify tells systemd, logging a failure.
func (m *machine) notify(state string) {
	if err := notify(state); err != nil {
		m.in.logf("telling systemd: %v", err)
	}
}
