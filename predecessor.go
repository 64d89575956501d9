package graceful

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// This file is the successor's side of a hand-over: taking over the
// predecessor's sockets at Start, telling it Ready, and reading its answer.

// predecessor is this instance's link to the instance it takes over from.
type predecessor struct {
	conn *net.UnixConn
	// pid is the predecessor's by its hand-over socket's meta, not the
	// connection's credentials: on a socket handed down, they name the
	// instance that first listened.
	pid int
	// statePID says to state this process's pid in the ready message:
	// the predecessor started this process, maybe through a wrapper.
	statePID bool
}

// takeOver takes what this instance starts with: the sockets systemd
// passed, the predecessor's, given at exec or received from it, and the
// start lock. It runs in Start, before the loop.
func (m *machine) takeOver() error {
	active, err := activated()
	m.active = active
	if err != nil {
		return err
	}
	inherited := true
	if err := m.inheritFromParent(); errors.Is(err, errNotInherited) {
		inherited = false
	} else if err != nil {
		return err
	}
	cfg := m.in.cfg
	// Another user who can write where the socket is could put anything
	// there: the directory is this user's, made if missing.
	if err := makeDir(filepath.Dir(cfg.Socket)); err != nil {
		return err
	}
	if m.lock, err = lockFile(cfg.Socket+".lock", m.in.readyTimeout); err != nil {
		return err
	}
	if inherited {
		// While this process waited for its turn, another successor of
		// the same predecessor may have taken over (the predecessor then
		// refuses this one, unless it died meanwhile): its sockets are
		// that one's now.
		if last := m.lock.recorded(); last != 0 && last != m.pred.pid {
			return fmt.Errorf("%w: pid %d took over from pid %d first", ErrAborted, last, m.pred.pid)
		}
	}
	if cfg.PIDFile != "" {
		if err := checkPIDFileDir(cfg.PIDFile); err != nil {
			return err
		}
	}
	if !inherited {
		err := m.dialPredecessor()
		if !errors.Is(err, ErrNoServer) {
			return err // nil: taken over
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			// A socket file nobody listens on: its instance may have
			// died a moment ago, and still hold its addresses.
			m.vanished = time.Now()
		}
	}
	return nil // the first instance
}

// errNotInherited: no descriptors were given at exec for this process.
var errNotInherited = errors.New("nothing inherited")

// inheritFromParent takes the descriptors that the predecessor's Restart
// gave this process at exec (inheritEnv), if it did.
func (m *machine) inheritFromParent() error {
	v, ok := os.LookupEnv(inheritEnv)
	statePID := os.Getenv(statePIDEnv) == "1"
	// Not for a successor of this process: its own Restart says anew.
	os.Unsetenv(inheritEnv)
	os.Unsetenv(statePIDEnv)
	if !ok {
		return errNotInherited
	}
	ppid, rest, _ := strings.Cut(v, ";")
	id, list, _ := strings.Cut(rest, ";")
	pid, err := strconv.Atoi(ppid)
	// Descriptor 3 is the connection the predecessor made for this
	// process, or the variable is not for it: checked by the socket's
	// identity, not by who the parent is (a wrapper may run in between,
	// or the predecessor may be gone and this process reparented).
	if err != nil || socketID(3) != id {
		return errNotInherited
	}
	metas := strings.Split(list, ",")
	const first = 3 // the connection, then one descriptor per meta
	for fd := first; fd <= first+len(metas); fd++ {
		closeOnExec(fd)
	}
	conn, err := inheritedConn(first)
	if err != nil {
		closeInts(first+1, first+len(metas))
		return fmt.Errorf("graceful: taking over from pid %s: %w", ppid, err)
	}
	for i, meta := range metas {
		b, err := base64.StdEncoding.DecodeString(meta)
		if err == nil {
			err = m.inherited(first+1+i, bytes.NewReader(b))
		} else {
			closeFd(first + 1 + i)
		}
		if err == nil && m.handover == nil && i == len(metas)-1 {
			err = fmt.Errorf("%w: no hand-over socket among the descriptors", ErrProtocol)
		}
		if err != nil {
			conn.Close()
			closeInts(first+2+i, first+len(metas))
			return fmt.Errorf("graceful: taking over from pid %s: %w", ppid, err)
		}
	}
	m.connected(conn, pid)
	m.pred.statePID = statePID
	return nil
}

// inheritedConn returns the hand-over's connection given at exec as fd.
func inheritedConn(fd int) (*net.UnixConn, error) {
	c, err := FdConn(fd)
	if err != nil {
		return nil, err
	}
	conn, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%w: the hand-over's connection is %T", ErrProtocol, c)
	}
	return conn, nil
}

// dialPredecessor receives the sockets of the instance serving at the
// socket, and keeps the connection open for the commit. A predecessor that
// dies meanwhile leaves this instance the first: with what it handed if
// it handed the hand-over socket, else with nothing.
func (m *machine) dialPredecessor() error {
	for attempt := 1; ; attempt++ {
		err := m.receivePredecessor()
		if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) || attempt == 3 {
			return err
		}
		m.vanished = time.Now()
		if m.handover == nil {
			m.in.logf("the predecessor went away before it handed anything (%v): trying again", err)
			m.pred = nil
			continue
		}
		if !m.in.predGone(m.pred.pid) {
			return err // alive: it refused, and serves on
		}
		m.in.logf("the predecessor, pid %d, died during the hand-over (%v): serving with what it handed", m.pred.pid, err)
		m.pred = nil
		return nil
	}
}

// receivePredecessor dials the socket and receives the sockets it hands.
func (m *machine) receivePredecessor() error {
	in := m.in
	if err := checkOwner(in.cfg.Socket); err != nil {
		return err
	}
	d := net.Dialer{Timeout: max(in.timeout, 0)}
	c, err := d.Dial("unix", in.cfg.Socket)
	if err != nil {
		return dialError(in.cfg.Socket, err)
	}
	conn := c.(*net.UnixConn)
	client := &Client{Timeout: in.timeout}
	n, err := client.receiveHello(context.Background(), conn, m.inherited, false, true)
	if err == io.EOF || err == nil && n == 0 {
		err = fmt.Errorf("closed before its transfer: %w", io.ErrUnexpectedEOF)
	}
	if err == nil && m.handover == nil {
		err = fmt.Errorf("%w: no hand-over socket among the descriptors", ErrProtocol)
	}
	if err != nil {
		conn.Close()
		return fmt.Errorf("graceful: taking over from %s: %w", in.cfg.Socket, err)
	}
	m.connected(conn, m.pred.pid)
	return nil
}

// connected keeps the connection to the predecessor, which has handed its
// sockets over, for the commit.
func (m *machine) connected(conn *net.UnixConn, pid int) {
	m.pred.conn, m.pred.pid = conn, pid
	m.in.took = true
	// The predecessor serves the socket file now, so this is its file.
	m.sockFile, _ = os.Lstat(m.in.cfg.Socket)
}

// inherited is the callback that takes the predecessor's descriptors.
func (m *machine) inherited(fd int, meta io.Reader) error {
	md, err := MetaFrom(meta)
	if err != nil {
		closeFd(fd)
		return err
	}
	switch kind := md["kind"]; kind {
	case kindHandover:
		return m.inheritHandover(fd, md)
	case kindListener, kindPacket, kindFile:
		key := objectKey(kind, md["network"], md["address"])
		if kind == kindFile {
			key = objectKey(kind, "", md["name"])
		}
		if _, dup := m.inherit[key]; dup {
			closeFd(fd)
			return fmt.Errorf("%w: two descriptors for %q", ErrProtocol, key)
		}
		m.inherit[key] = fd
		return nil
	default:
		closeFd(fd)
		return fmt.Errorf("%w: descriptor of unknown kind %q", ErrProtocol, kind)
	}
}

// inheritHandover takes the predecessor's hand-over socket, with its state.
func (m *machine) inheritHandover(fd int, md Meta) error {
	if m.handover != nil {
		closeFd(fd)
		return fmt.Errorf("%w: two hand-over sockets", ErrProtocol)
	}
	ln, err := FdListener(fd)
	if err != nil {
		return err
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return fmt.Errorf("%w: the hand-over socket is %T", ErrProtocol, ln)
	}
	ul.SetUnlinkOnClose(false)
	m.handover = ul
	m.in.state = []byte(md["state"])
	m.pred = &predecessor{}
	m.pred.pid, _ = strconv.Atoi(md["pid"])
	return nil
}

// sendReady tells the predecessor that this instance serves, stating its
// pid if asked: the connection does not tell it when the predecessor made
// it at exec, and the child it started may be a wrapper.
func (p *predecessor) sendReady(deadline time.Time) {
	var pid string
	if p.statePID {
		pid = strconv.Itoa(os.Getpid())
	}
	writeReply(p.conn, deadline, statusReady, pid)
}

// refuse tells the predecessor that this instance will not take over.
func (p *predecessor) refuse(reason string) {
	refuse(p.conn, reason)
}

// watchPredecessor reads the predecessor's answer to this instance's
// Ready, whenever it comes, and then the connections it passes. A
// predecessor that gives up (or stops) before Ready says so at once: this
// instance then stops, releasing the start lock, rather than hold it until
// its Ready, which fails.
func (in *Instance) watchPredecessor(p *predecessor) {
	err := in.readPredAnswer(p)
	in.post(func(m *machine) { m.predAnswered(err) })
	if err == nil {
		in.receivePassed(p)
	}
	p.conn.Close()
	in.incoming.finish()
	if in.ctx.Err() != nil {
		in.incoming.drop() // stopped: those not taken are closed
	}
	in.post(func(m *machine) { m.linkEnded() })
}

// readPredAnswer reads the predecessor's answer: nil to commit, an
// ErrAborted with its reason, or errPredDied.
func (in *Instance) readPredAnswer(p *predecessor) error {
	status, reason, err := in.readAnswer(p, "waiting for the predecessor")
	switch {
	case errors.Is(err, errPredDied) || errors.Is(err, ErrProtocol):
		return err
	case err != nil:
		return fmt.Errorf("%w: %w", ErrAborted, err)
	case status == statusOK:
		return nil
	case status == statusRefused:
		return fmt.Errorf("%w: the predecessor says %s", ErrAborted, reason)
	}
	return fmt.Errorf("%w: status %d from the predecessor", ErrProtocol, status)
}

// errPredDied is a predecessor that closed the hand-over's connection
// without a word, and whose process has ended: it died, and its sockets
// are this instance's alone.
var errPredDied = errors.New("the predecessor died")

// readAnswer reads an answer of the predecessor, its status and message,
// doing what (for errors). A predecessor that gives up says so before it
// closes the connection: one that closed it without a word, and whose
// process has ended, died (errPredDied).
func (in *Instance) readAnswer(p *predecessor, what string) (byte, []byte, error) {
	status, msg, err := readReply(p.conn)
	if errors.Is(err, errNoReply) && in.ctx.Err() == nil && in.predGone(p.pid) {
		// Not while stopping: Stop interrupts the read.
		return 0, nil, errPredDied
	}
	if err != nil {
		return 0, nil, ioError(what, err)
	}
	return status, msg, nil
}

// predGone waits, Config.Timeout at most (DefaultTimeout for no bound: the
// process of a connection that closed is ending), until the predecessor's
// process has ended, and reports whether it has.
func (in *Instance) predGone(pid int) bool {
	wait := in.timeout
	if wait < 0 {
		wait = DefaultTimeout
	}
	deadline := time.Now().Add(wait)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
