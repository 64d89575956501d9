package graceful

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file is the instance's side of a hand-over: Ready (its commit),
// serving its successors, and Stop.

// Ready commits this instance: from now on it serves. A successor tells its
// predecessor, on the connection of the hand-over, and waits for its answer;
// only then does the predecessor's Done close, and this instance serve the
// hand-over socket for its own successor, write the pid file and tell
// systemd (READY=1, when NOTIFY_SOCKET is set). The sockets inherited or
// passed by systemd that the application never claimed with Listen are
// closed. Ready blocks until the predecessor answers: it decides, within
// Config.ReadyTimeout of its hand-over, and answers at once. If it dies
// meanwhile, Ready succeeds: the sockets are this instance's alone.
//
// Call Ready once the application serves (its listeners accept): the
// predecessor stops accepting right after. Until then both instances accept: a
// successor that dies before its Ready loses the connections it accepted (the
// predecessor keeps all the others), so an application that can fail on its way
// to Ready should do so before it serves. If Ready fails, the predecessor (if
// any) serves on and this instance must not: it should close what it serves and
// exit. The error is [ErrAborted] when the predecessor gave up waiting
// (Config.ReadyTimeout) or stopped.
func (in *Instance) Ready() error {
	in.mu.Lock()
	if in.phase != starting || in.readying {
		err := in.abandoned
		in.mu.Unlock()
		if err != nil {
			return err
		}
		return fmt.Errorf("graceful: Ready: %w", ErrInstanceState)
	}
	// From now on Stop waits for the outcome: once the ready message is
	// on its way, the predecessor decides, and may have committed.
	in.readying = true
	unclaimed := in.closeUnclaimed()
	pred := in.pred
	in.mu.Unlock()
	for _, l := range unclaimed {
		in.logf("%s", l)
	}

	var err error
	if pred != nil {
		err = in.commitTakeOver(pred)
	} else {
		err = in.listenHandover()
	}
	in.mu.Lock()
	in.readying = false
	close(in.readyDone)
	if err != nil {
		in.mu.Unlock()
		in.Stop()
		return err
	}
	in.phase = serving
	in.pred = nil
	ln := in.handover
	in.serveWG.Add(1)
	go in.serveSuccessors(ln)
	in.afterPredecessor(pred)
	in.mu.Unlock()

	if in.cfg.PIDFile != "" {
		if err := writePIDFile(in.cfg.PIDFile); err != nil {
			// Committed already: failing now would leave nobody serving.
			in.logf("pid file: %v", err)
		}
	}
	if err := notify("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid())); err != nil {
		in.logf("telling systemd: %v", err)
	}
	// For a successor that a Restart of its predecessor started and that
	// waited its turn meanwhile: this instance took over, not that one.
	if err := in.lock.record(os.Getpid()); err != nil {
		in.logf("start lock: %v", err)
	}
	in.lock.unlock()
	return nil
}

// commitTakeOver sends the ready message to the predecessor and waits for
// its answer, which watchPredecessor reads. The message carries this
// process's pid if the predecessor asked for it (statePIDEnv): the
// connection does not tell it when it was made at exec by the predecessor
// itself, and the child it started may be a wrapper.
func (in *Instance) commitTakeOver(pred *net.UnixConn) error {
	var pid string
	if in.statePID {
		pid = strconv.Itoa(os.Getpid())
	}
	// A predecessor that gave up may have closed the connection already:
	// its refusal is then read all the same.
	sendAnswer(pred, in.deadline(), statusReady, pid)
	// No bound of this side's own: the predecessor decides, and may have
	// committed when a bound ran out; it answers at once, or it is dead.
	err := <-in.predAnswer
	if errors.Is(err, errPredDied) {
		in.logf("the predecessor, pid %d, died during the hand-over: serving", in.predPID)
		return nil
	}
	return err
}

// errPredDied is a predecessor that closed the hand-over's connection
// without a word, and whose process has ended: it died, and its sockets
// are this instance's alone.
var errPredDied = errors.New("the predecessor died")

// watchPredecessor reads the predecessor's answer to this instance's
// Ready, whenever it comes: a predecessor that gives up (or stops) before
// Ready says so at once, and then this instance stops, releasing the start
// lock, rather than hold it until its Ready, which fails.
func (in *Instance) watchPredecessor(pred *net.UnixConn) {
	err := in.readPredAnswer(pred)
	in.predAnswer <- err
	in.mu.Lock()
	early := in.phase == starting && !in.readying
	if early && err != nil && !errors.Is(err, errPredDied) {
		in.abandoned = err
	} else {
		early = false
	}
	in.mu.Unlock()
	if early {
		in.logf("the predecessor gave up on this instance before its Ready: %v", err)
		in.Stop()
	}
}

// readPredAnswer reads the predecessor's answer: nil to commit, an
// ErrAborted with its reason, or errPredDied.
func (in *Instance) readPredAnswer(pred *net.UnixConn) error {
	status, reason, err := in.readAnswer(pred, "waiting for the predecessor")
	switch {
	case errors.Is(err, errPredDied) || errors.Is(err, ErrProtocol):
		return err
	case err != nil:
		return fmt.Errorf("%w: %w", ErrAborted, err)
	case status == statusOK:
		return nil
	}
	return fmt.Errorf("%w: the predecessor says %s", ErrAborted, reason)
}

// readAnswer reads an answer of the predecessor, its status and message,
// doing what (for errors). A predecessor that gives up says so before it
// closes the connection: one that closed it without a word, and whose
// process has ended, died (errPredDied).
func (in *Instance) readAnswer(pred *net.UnixConn, what string) (status byte, msg []byte, err error) {
	var head [ackLen]byte
	n, err := io.ReadFull(pred, head[:])
	if err != nil {
		err = ioError(what, err)
		// Not while stopping: Stop interrupts the read.
		if n == 0 && errors.Is(err, io.ErrUnexpectedEOF) && in.passing.ctx.Err() == nil && in.predGone() {
			return 0, nil, errPredDied
		}
		return 0, nil, err
	}
	status, n, err = parseAck(head[:], version)
	if err != nil {
		return 0, nil, err
	}
	msg = make([]byte, n)
	if _, err := io.ReadFull(pred, msg); err != nil {
		return 0, nil, ioError(what, err)
	}
	return status, msg, nil
}

// listenHandover creates the hand-over socket of a first instance.
func (in *Instance) listenHandover() error {
	ln, err := listenUnix(in.cfg.Socket, 0o600, -1)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(in.cfg.Socket)
	if err != nil {
		ln.Close()
		return err
	}
	in.mu.Lock()
	in.sockFile, in.handover = fi, ln.(*fileListener).UnixListener
	in.mu.Unlock()
	return nil
}

// serveSuccessors accepts successors on the hand-over socket until it is
// closed. Each is served in a goroutine of its own, so that one that stalls
// before its hello delays no other.
func (in *Instance) serveSuccessors(ln *net.UnixListener) {
	defer in.serveWG.Done()
	var delay time.Duration
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, for instance: wait rather than spin.
			in.logf("accepting a successor: %v", err)
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		in.serveWG.Add(1)
		go in.serveSuccessor(conn)
	}
}

// serveSuccessor hands this instance's sockets to a successor, waits for
// its Ready and commits.
func (in *Instance) serveSuccessor(conn *net.UnixConn) {
	defer in.serveWG.Done()
	if !in.track(conn) {
		conn.Close()
		return
	}
	committed := false
	defer func() {
		in.untrack(conn)
		if !committed {
			conn.Close()
		}
	}()
	pid := peerPIDOf(conn)
	s, err := openTransfer(context.Background(), conn, nil, in.timeout)
	if err != nil {
		if !in.handOverFailed(conn, err) {
			in.logf("hand-over to pid %d failed: %v", pid, err)
		}
		return
	}
	// One successor at a time; a client earns its turn with its hello.
	in.turn.Lock()
	defer in.turn.Unlock()
	if in.isFinished() {
		s.close()
		return
	}
	err = s.run(in.writeHandover)
	s.close()
	if err == nil {
		committed, err = in.awaitCommit(conn, pid)
	}
	if err != nil {
		if !in.handOverFailed(conn, err) {
			in.logf("hand-over to pid %d failed: %v", pid, err)
		}
	}
}

// awaitCommit waits for the Ready of the successor at conn, which holds
// this instance's sockets, and commits. pid is the successor's by its
// connection or, for one that Restart started, the process started, unless
// its ready message states another. It reports whether conn is now the
// committed successor's.
func (in *Instance) awaitCommit(conn *net.UnixConn, pid int) (bool, error) {
	stated, err := in.awaitReady(conn)
	if stated != 0 {
		pid = stated
	}
	if err == nil {
		return in.commit(conn, pid)
	}
	if !errors.Is(err, errGone) {
		// A successor that may still be waiting learns that this one
		// gave up, and never takes it for dead.
		refuse(conn, strings.TrimPrefix(err.Error(), ErrAborted.Error()+": "))
	}
	return false, err
}

// serveChild waits for the Ready of the successor that Restart started
// with this instance's sockets, and commits.
func (in *Instance) serveChild(conn *net.UnixConn, pid int) {
	defer in.serveWG.Done()
	if !in.track(conn) {
		// It holds this instance's sockets since its exec: one that found
		// the connection closed without a word would take this instance
		// for dead, and serve.
		refuse(conn, "the predecessor stopped or handed over to another")
		conn.Close()
		return
	}
	committed, err := in.awaitCommit(conn, pid)
	in.untrack(conn)
	if !committed {
		conn.Close()
	}
	if err != nil {
		if !in.handOverFailed(conn, err) {
			in.logf("hand-over to pid %d failed: %v", pid, err)
		}
	}
}

// writeHandover sends the hand-over socket, with the application's state,
// then every listener, packet socket and file handed on.
func (in *Instance) writeHandover(s *ResponseWriter) error {
	in.mu.Lock()
	out, state, ln := slices.Clone(in.out), in.outState, in.handover
	in.mu.Unlock()
	if err := writeObject(s, ln, handoverMeta(state)); err != nil {
		return err
	}
	for _, h := range out {
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

// awaitReady waits for the successor's ready message, Config.ReadyTimeout
// at most, and returns the pid it states, 0 if none. A successor that stops
// before its Ready says so.
func (in *Instance) awaitReady(conn *net.UnixConn) (int, error) {
	conn.SetReadDeadline(time.Now().Add(in.readyTimeout))
	defer conn.SetReadDeadline(time.Time{})
	// Stop's past deadline may have come before this one, which undid it.
	if in.isFinished() {
		return 0, in.whyFinished()
	}
	var msg [ackLen]byte
	// Plain reads: descriptors sent along would be closed by the kernel.
	_, err := io.ReadFull(conn, msg[:])
	var body []byte
	if err == nil && msg[0] == version && (msg[1] == statusRefused || msg[1] == statusReady) {
		body = make([]byte, min(int(msg[2])<<8|int(msg[3]), maxRefusal))
		_, err = io.ReadFull(conn, body)
	}
	if err != nil {
		if in.isFinished() {
			return 0, in.whyFinished()
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, fmt.Errorf("%w: not ready after %v", ErrAborted, in.readyTimeout)
		}
		return 0, fmt.Errorf("%w: %w", errGone, ioError("waiting for Ready", err))
	}
	if msg[0] == version && msg[1] == statusRefused {
		return 0, fmt.Errorf("%w: %s", errGone, body)
	}
	if msg[0] != version || msg[1] != statusReady {
		return 0, fmt.Errorf("%w: % x instead of ready", ErrProtocol, msg)
	}
	if len(body) == 0 {
		return 0, nil
	}
	pid, err := strconv.Atoi(string(body))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%w: ready for pid %q", ErrProtocol, body)
	}
	return pid, nil
}

// whyFinished says why a finished instance gave up on a successor.
func (in *Instance) whyFinished() error {
	if pid := in.Successor(); pid != 0 {
		return fmt.Errorf("%w: handed over to pid %d", ErrAborted, pid)
	}
	return fmt.Errorf("%w: stopping", ErrAborted)
}

// commit makes the successor at conn the one that serves: this instance
// stops accepting on the hand-over socket, answers, and closes Done. If the
// answer cannot be written, the successor is gone and this instance serves
// on, accepting again.
func (in *Instance) commit(conn *net.UnixConn, pid int) (bool, error) {
	var logs []string // written once the lock is released
	defer func() {
		for _, l := range logs {
			in.logf("%s", l)
		}
	}()
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.phase != serving {
		refuse(conn, "the predecessor stopped or handed over to another")
		return false, fmt.Errorf("%w: stopped or handed over to another", ErrAborted)
	}
	// A spare descriptor keeps the socket, to serve on if need be.
	spare, err := in.handover.File()
	if err != nil {
		refuse(conn, "cannot commit")
		return false, fmt.Errorf("graceful: committing: %w", err)
	}
	defer spare.Close()
	if err := notify("MAINPID=" + strconv.Itoa(pid)); err != nil {
		logs = append(logs, fmt.Sprintf("telling systemd: %v", err))
	}
	in.handover.Close()
	if werr := sendAnswer(conn, in.deadline(), statusOK, ""); werr != nil {
		if err := notify("MAINPID=" + strconv.Itoa(os.Getpid())); err != nil {
			logs = append(logs, fmt.Sprintf("telling systemd: %v", err))
		}
		ln, err := net.FileListener(spare)
		if err != nil {
			// Nothing more can be done: the socket is gone.
			return false, fmt.Errorf("graceful: serving on after a failed commit: %w", err)
		}
		ul := ln.(*net.UnixListener)
		ul.SetUnlinkOnClose(false)
		in.handover = ul
		in.serveWG.Add(1)
		go in.serveSuccessors(ul)
		return false, fmt.Errorf("%w: %w", ErrAborted, ioError("committing", werr))
	}
	in.phase = finished
	in.succ = &successor{conn: conn, pid: pid}
	// Any other successor that holds this instance's sockets (a Restart's,
	// while this one started beside) is refused now, while this process
	// lives: one that found the connection closed without a word would
	// take this instance for dead, and serve too.
	for other := range in.pending {
		if other != conn {
			refuse(other, "the predecessor handed over to another")
			other.SetReadDeadline(time.Unix(1, 0))
		}
	}
	close(in.done)
	return true, nil
}

// errGone marks a successor that went away: there is nobody to tell.
var errGone = errors.New("the successor is gone")

// refuse tells a successor that it will not take over.
func refuse(conn net.Conn, reason string) {
	sendAnswer(conn, time.Now().Add(time.Second), statusRefused, reason)
}

// sendAnswer writes a message of the restart layer on conn, a status and its
// text, by deadline (none for the zero time).
func sendAnswer(conn net.Conn, deadline time.Time, status byte, text string) error {
	b := make([]byte, ackLen, ackLen+len(text))
	putAck(b, version, status, len(text))
	conn.SetWriteDeadline(deadline)
	defer conn.SetWriteDeadline(time.Time{})
	_, err := conn.Write(append(b, text...))
	return err
}

// successor is the instance that took over from this one.
type successor struct {
	conn *net.UnixConn
	pid  int
}

func (in *Instance) track(conn *net.UnixConn) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.phase == finished {
		return false
	}
	in.pending[conn] = struct{}{}
	return true
}

func (in *Instance) untrack(conn *net.UnixConn) {
	in.mu.Lock()
	defer in.mu.Unlock()
	delete(in.pending, conn)
}

func (in *Instance) isFinished() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.phase == finished
}

// Stop ends this instance without a successor: it stops serving the
// hand-over socket, calls off a hand-over under way (that successor's Ready
// fails; before this instance's own Ready, its predecessor serves on), and
// closes Done. An instance that was serving also removes the hand-over
// socket file and the pid file if it names this process, and tells systemd
// STOPPING=1. Stop does not close the application's listeners: the
// application drains them. After a successor took over, Stop only releases
// what the instance still holds: the connection to the successor (which
// then knows that no more connections will be passed) and connections
// passed to this instance and not accepted.
//
// Stop calls off a PassConns under way (it fails, the connections still
// the caller's) and blocks until all that is done, after a Ready under way
// has ended: its outcome decides what there is to stop.
func (in *Instance) Stop() {
	in.mu.Lock()
	for in.readying {
		// Ready's commit is under way: its outcome decides what to stop.
		in.mu.Unlock()
		<-in.readyDone
		in.mu.Lock()
	}
	if in.phase == finished {
		succ, stopping := in.succ, in.stopping
		in.mu.Unlock()
		if succ != nil {
			// A PassConns under way is called off, and says so to the
			// successor; the connection is closed after it, not between
			// its acknowledgement and its commit: the successor would
			// take the batch for its own while PassConns says the
			// connections are still the caller's.
			in.passing.cancel()
			in.passing.send.Lock()
			succ.conn.Close()
			in.passing.send.Unlock()
		}
		if stopping != nil {
			<-stopping // another Stop is cleaning up
		}
		in.stopPassed()
		return
	}
	in.stopping = make(chan struct{})
	defer close(in.stopping)
	wasServing := in.phase == serving
	in.phase = finished
	in.closeInherited()
	if in.pred != nil {
		// The predecessor serves on, and learns why.
		if in.abandoned == nil {
			refuse(in.pred, "it stopped before its Ready")
		}
		in.pred.Close()
		in.pred = nil
	}
	for conn := range in.pending {
		// Interrupted, its hand-over ends with a refusal.
		conn.SetDeadline(time.Unix(1, 0))
	}
	if in.handover != nil {
		in.handover.Close()
	}
	in.mu.Unlock()
	in.serveWG.Wait()

	if wasServing {
		// The socket file goes, unless it was replaced: then it is
		// another's.
		if fi, err := os.Lstat(in.cfg.Socket); err == nil && in.sockFile != nil && os.SameFile(fi, in.sockFile) {
			os.Remove(in.cfg.Socket)
		}
		if in.cfg.PIDFile != "" {
			removePIDFile(in.cfg.PIDFile)
		}
		if err := notify("STOPPING=1"); err != nil {
			in.logf("telling systemd: %v", err)
		}
	} else {
		in.lock.unlock()
	}
	// Only now: an application that exits once Done is closed leaves
	// nothing behind.
	close(in.done)
	in.stopPassed()
}

func (in *Instance) logf(format string, args ...any) {
	if in.cfg.ErrorLog != nil {
		in.cfg.ErrorLog.Printf(format, args...)
	}
}

// handoverMeta is the meta of the hand-over socket: the state, and who
// hands it over.
func handoverMeta(state []byte) Meta {
	return Meta{"kind": kindHandover, "state": string(state), "pid": strconv.Itoa(os.Getpid())}
}
