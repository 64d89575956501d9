package graceful

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// This file is the restart layer's state machine. One goroutine, run,
// owns the phase, the predecessor, the successors and the hand-overs
// under way. The methods of Instance send it requests and wait for its
// answers; the goroutines that read and write the hand-over connections
// post it events. Every method of machine runs on that goroutine (or in
// Start, before it runs, or after it ended).

type phase int

const (
	starting   phase = iota // from Start to Ready's outcome
	serving                 // committed: successors are served
	handedOver              // a successor committed: Done is closed
	stopping                // Stop: the links are ending
	stopped
)

// machine is the state of an Instance, owned by its loop.
type machine struct {
	in    *Instance
	phase phase
	// from is the phase Stop was called in.
	from phase

	// What this instance inherited and has not handed to the application,
	// and what it hands on.
	inherit  map[string]int
	active   *activation
	out      []handedOn
	outState []byte
	handover *net.UnixListener
	sockFile os.FileInfo // the hand-over socket's file, to remove at Stop
	lock     *fileLock   // held from Start until Ready or Stop
	pidFile  *pidFile    // written at Ready, in place once committed
	rebound  string      // why the socket file could not be bound again

	// The predecessor's side: this instance takes over.
	pred      *predecessor
	early     error      // the predecessor's answer before Ready, if any
	ready     chan error // Ready's answer, while its commit is under way
	abandoned error      // why the predecessor gave up on this instance
	refusal   string     // why this instance gives up, to tell it
	vanished  time.Time  // when a predecessor went away unannounced

	// The successors' side: this instance hands over.
	links    int // goroutines that post events and have not ended
	turn     *successor
	queue    []turnRequest
	pending  map[*successor]bool // handed their sockets, not yet ready
	making   map[string]bool     // addresses a Listen makes a socket for
	succ     *successor          // the successor that committed
	restart  *restartOp
	passes   []chan passGrant // PassConns waiting their turn
	passing  bool             // a PassConns runs
	passErr  error            // why passing ended for good
	kept     *kept            // what the successor was handed, to revive
	reviving *successor       // a replacement for a successor that died

	stops []chan struct{} // Stop's callers, answered once stopped
}

// run is the loop: it runs the requests and events it is sent until the
// instance has stopped.
func (in *Instance) run() {
	defer close(in.ended)
	for in.m.phase != stopped {
		f := <-in.calls
		f()
	}
}

// call runs f on the loop and waits for it. Once the loop has ended, the
// state no longer changes, and f runs on the caller's goroutine.
func (in *Instance) call(f func(m *machine)) {
	done := make(chan struct{})
	select {
	case in.calls <- func() { f(&in.m); close(done) }:
		<-done
	case <-in.ended:
		in.frozen.Lock()
		defer in.frozen.Unlock()
		f(&in.m)
	}
}

// post sends the loop an event from one of its links. An event that comes
// once the loop has ended (a timer's) has nobody to change.
func (in *Instance) post(f func(m *machine)) {
	select {
	case in.calls <- func() { f(&in.m) }:
	case <-in.ended:
	}
}

// spawn runs f as a link: a goroutine whose end the loop waits for before
// it stops. f's last event says it ended.
func (m *machine) spawn(f func()) {
	m.links++
	go f()
}

// linkEnded counts a link's end; it is part of each link's last event.
func (m *machine) linkEnded() {
	m.links--
	m.settleStop()
}

// start begins serving once this instance has committed: it serves the
// hand-over socket for its successors, and tells the pid file, systemd and
// the start lock.
func (m *machine) start() {
	m.phase = serving
	m.pred = nil
	ln := m.handover
	m.spawn(func() { m.in.acceptSuccessors(ln) })
	in := m.in
	if err := tellKeeper(m.snapshot()); err != nil {
		in.logf("telling the keeper: %v", err)
	}
	if m.pidFile != nil {
		if err := m.pidFile.commit(); err != nil {
			// Committed already: failing now would leave nobody serving.
			in.logf("%v", err)
		}
	}
	m.watchSocketFile()
	if err := notify("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid())); err != nil {
		in.logf("telling systemd: %v", err)
	}
	// For a successor that a Restart of the predecessor started and that
	// waited its turn meanwhile: this instance took over, not that one.
	if err := m.lock.record(os.Getpid()); err != nil {
		in.logf("start lock: %v", err)
	}
	m.lock.unlock()
}

// readyRequest is Ready on the loop.
func (m *machine) readyRequest(reply chan error) {
	if m.phase != starting || m.ready != nil {
		if m.abandoned != nil {
			reply <- m.abandoned
		} else {
			reply <- fmt.Errorf("graceful: Ready: %w", ErrInstanceState)
		}
		return
	}
	for _, l := range m.closeUnclaimed() {
		m.in.logf("%s", l)
	}
	// The pid file is part of getting ready: an instance that cannot
	// write it does not take over.
	if err := m.preparePIDFile(); err != nil {
		m.refusal = "it cannot write its pid file: " + err.Error()
		m.readyFailed(reply, err)
		return
	}
	if m.pred == nil {
		if err := m.ownHandover(); err != nil {
			m.readyFailed(reply, err)
			return
		}
		m.start()
		reply <- nil
		return
	}
	m.ready = reply
	if m.early != nil {
		// The predecessor died before this Ready: nobody to tell.
		m.predAnswered(m.early)
		return
	}
	// A predecessor that gave up may have closed the connection already:
	// its refusal is then read all the same.
	m.pred.sendReady(m.in.deadline())
}

// predAnswered takes the predecessor's answer to Ready: nil to commit,
// errPredDied, or why it refuses. It may come before Ready.
func (m *machine) predAnswered(err error) {
	if m.phase != starting {
		return // stopped meanwhile
	}
	if m.ready == nil {
		if err == nil {
			err = fmt.Errorf("%w: a commit before Ready", ErrProtocol)
		}
		if errors.Is(err, errPredDied) {
			m.early = err // Ready serves alone
			return
		}
		m.abandoned = err
		m.in.logf("the predecessor gave up on this instance before its Ready: %v", err)
		m.beginStop()
		return
	}
	reply := m.ready
	m.ready = nil
	if errors.Is(err, errPredDied) {
		m.in.logf("the predecessor, pid %d, died during the hand-over: serving", m.pred.pid)
		err = nil
	}
	if err != nil {
		m.abandoned = err
		reply <- err
		m.beginStop()
		return
	}
	m.start()
	reply <- nil
	m.settleStop() // a Stop that waited for this outcome
}

// stopRequest is Stop on the loop; done is closed once stopped.
func (m *machine) stopRequest(done chan struct{}) {
	m.stops = append(m.stops, done)
	if m.ready == nil {
		// Else Ready's commit is under way: its outcome decides what
		// there is to stop, and settleStop begins it then.
		m.beginStop()
	}
}

// readyFailed answers a Ready that failed here and stops. As when the
// predecessor refuses, the listeners Listen returned accept no more.
func (m *machine) readyFailed(reply chan error, err error) {
	m.closeHandedOn()
	reply <- err
	m.beginStop()
}

// beginStop ends what this instance does: it calls off the hand-overs
// under way and closes what it holds. The links then end, and settleStop
// finishes.
func (m *machine) beginStop() {
	if m.phase >= stopping {
		m.settleStop()
		return
	}
	m.from, m.phase = m.phase, stopping
	m.in.cancel() // PassConns, and the reception of passed connections
	m.closeInherited()
	if m.abandoned != nil {
		// The predecessor gave up on this instance: what the application
		// accepts on, it must accept on no more.
		m.closeHandedOn()
	}
	if m.pidFile != nil {
		m.pidFile.abort()
	}
	if m.pred != nil {
		// The predecessor serves on, and learns why.
		if m.abandoned == nil && m.early == nil {
			m.pred.refuse(cmp.Or(m.refusal, "it stopped before its Ready"))
		}
		m.pred.conn.Close()
	}
	for s := range m.pending {
		m.callOff(s, "the predecessor stopped")
	}
	for _, t := range m.queue {
		t.grant <- nil
	}
	m.queue = nil
	if op := m.restart; op != nil {
		op.decide(fmt.Errorf("graceful: Restart: successor pid %d: %w: stopped", op.s.pid, ErrAborted), true, "the predecessor stopped")
	}
	if m.handover != nil && m.from != handedOver {
		m.handover.Close()
	}
	m.settleStop()
}

// settleStop finishes a Stop once nothing is under way any more: no Ready
// awaiting its answer, no link, no PassConns. Each of those calls it as it
// ends.
func (m *machine) settleStop() {
	switch {
	case m.ready != nil:
		return
	case m.phase < stopping:
		if len(m.stops) > 0 {
			m.beginStop()
		}
		return
	case m.phase == stopping:
		if m.links > 0 || m.passing {
			return
		}
		m.finish()
	}
	for _, done := range m.stops {
		close(done)
	}
	m.stops = nil
}

// finish releases the files and the connections once every link has ended.
func (m *machine) finish() {
	in := m.in
	if m.from == serving {
		// The socket file goes, unless it was replaced: then it is
		// another's.
		if fi, err := os.Lstat(in.cfg.Socket); err == nil && m.sockFile != nil && os.SameFile(fi, m.sockFile) {
			os.Remove(in.cfg.Socket)
		}
		if in.cfg.PIDFile != "" {
			removePIDFile(in.cfg.PIDFile)
		}
		if err := notify("STOPPING=1"); err != nil {
			in.logf("telling systemd: %v", err)
		}
	}
	m.lock.unlock()
	m.dropKept()
	for _, p := range m.passes {
		p <- passGrant{err: fmt.Errorf("graceful: PassConns: %w: stopped", net.ErrClosed)}
	}
	m.passes = nil
	if m.succ != nil {
		// It learns that no more connections come.
		m.succ.conn.Close()
	}
	m.phase = stopped
	// Only now: an application that exits once Done is closed leaves
	// nothing behind.
	if m.from != handedOver {
		close(in.done)
	}
}

// closeHandedOn closes the listeners and packet sockets that Listen
// handed the application: an instance that must not serve accepts on them
// no more. Files stay the application's.
func (m *machine) closeHandedOn() {
	for _, h := range m.out {
		if c, ok := h.obj.(interface{ Close() error }); ok && h.meta["kind"] != kindFile {
			c.Close()
		}
	}
}

// deadline is the deadline of a step of a hand-over that starts now: none
// for a negative Config.Timeout.
func (in *Instance) deadline() time.Time {
	if in.timeout < 0 {
		return time.Time{}
	}
	return time.Now().Add(in.timeout)
}

// preparePIDFile writes the pid file beside its place, if there is one.
func (m *machine) preparePIDFile() error {
	if m.in.cfg.PIDFile == "" {
		return nil
	}
	p, err := preparePIDFile(m.in.cfg.PIDFile)
	m.pidFile = p
	return err
}

// ownHandover makes the hand-over socket of an instance that takes over
// from nobody: a new one, or that of a predecessor that died handing it.
func (m *machine) ownHandover() error {
	if m.handover == nil {
		return m.listenHandover()
	}
	fi, err := os.Lstat(m.in.cfg.Socket)
	if err != nil {
		// Gone: a socket of its own, for the next instance.
		m.handover.Close()
		return m.listenHandover()
	}
	m.sockFile = fi
	return nil
}

// watchSocketFile checks, once a second while serving, that Config.Socket
// is still this instance's socket file. One removed (rm, a directory made
// anew) or replaced by a stale file is bound again, so that an instance
// started beside finds this one.
func (m *machine) watchSocketFile() {
	time.AfterFunc(socketFileCheck, func() { m.in.post(func(m *machine) { m.checkSocketFile() }) })
}

// socketFileCheck is how often watchSocketFile checks: a variable for a
// test to shorten.
var socketFileCheck = time.Second

func (m *machine) checkSocketFile() {
	if m.phase != serving {
		return
	}
	defer m.watchSocketFile()
	fi, err := os.Lstat(m.in.cfg.Socket)
	if err == nil && os.SameFile(fi, m.sockFile) {
		return
	}
	old := m.handover
	if err := m.listenHandover(); err != nil {
		if err.Error() != m.rebound {
			m.in.logf("the hand-over socket %s is gone, and binding it again failed: %v", m.in.cfg.Socket, err)
		}
		m.rebound = err.Error()
		return
	}
	m.rebound = ""
	m.in.logf("the hand-over socket %s was gone: bound it again", m.in.cfg.Socket)
	ln := m.handover
	m.spawn(func() { m.in.acceptSuccessors(ln) })
	old.Close()
	if err := tellKeeper(m.snapshot()); err != nil {
		m.in.logf("telling the keeper: %v", err)
	}
}
