package graceful

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// defaultReadyTimeout is how long a running instance waits for a successor
// to call [Instance.Ready] when [Config.ReadyTimeout] is 0.
const defaultReadyTimeout = time.Minute

// Config configures an [Instance]. Only Socket is required.
type Config struct {
	// Socket is the path of the Unix socket on which each instance hands
	// its sockets to the next: a path whose directory exists (not an
	// abstract "@" name, for the lock file must be beside it). The socket
	// file is created 0600, for the same user (or root) only; a lock file,
	// Socket+".lock", which names the last instance that got ready, stays
	// beside it for good.
	Socket string
	// PIDFile, if set, names the file that holds the pid of the instance
	// that serves: written at each Ready, replaced atomically, and removed
	// by Stop.
	PIDFile string
	// Timeout bounds each step of a hand-over, each wait for the other
	// instance; 0 means DefaultTimeout.
	Timeout time.Duration
	// ReadyTimeout bounds how long a running instance waits for its
	// successor's Ready after handing it its sockets (Restart waits
	// Timeout more, for the successor it started to start), and how long
	// Start waits while another instance is starting; 0 means a minute.
	ReadyTimeout time.Duration
	// ErrorLog, if set, receives a line for each hand-over that failed
	// (the instance serves on) but for a Restart's, which Restart returns;
	// nothing is logged otherwise.
	ErrorLog *log.Logger
}

// Errors of the restart layer.
var (
	// ErrAborted means a hand-over was called off before it completed:
	// the running instance gave up waiting for Ready, or stopped, or
	// another successor took over first. Start also fails with it after
	// waiting Config.ReadyTimeout in vain for another instance, between
	// its own Start and Ready, to finish; the error names its pid where
	// the system tells. The instance whose Start or Ready fails with it
	// must not serve: the other serves on.
	ErrAborted = errors.New("graceful: hand-over aborted")
	// ErrInstanceState means a method of an Instance was called at the
	// wrong time: Listen after Stop, Ready twice, Restart before Ready,
	// after Done or while another Restart runs.
	ErrInstanceState = errors.New("graceful: not allowed in the instance's state")
)

// An Instance is one running instance of a server in a chain of restarts.
// [Start] makes it, taking over the sockets of the instance that serves at
// Config.Socket, if any; [Instance.Listen] hands the application those
// sockets, or new ones; [Instance.Ready] commits; [Instance.Done] tells when
// a successor has committed in turn.
//
// From Start to Ready, and from Ready until a successor is ready, two
// instances share each listening socket: both accept, so no connection is
// refused and none is lost. Only one instance is ever between Start and
// Ready at a time: another that starts meanwhile waits its turn (a lock
// beside the socket), then takes over from the first.
//
// The methods of an Instance may be called from several goroutines.
type Instance struct {
	cfg          Config
	timeout      time.Duration
	readyTimeout time.Duration
	lock         *fileLock // held from Start until Ready or Stop

	mu    sync.Mutex
	phase phase
	pred  *net.UnixConn // to the predecessor, from Start until its commit
	// predAnswer receives the predecessor's answer to Ready, read by
	// watchPredecessor; abandoned is it when it came before Ready.
	predAnswer chan error
	abandoned  error
	readying   bool          // Ready's commit is under way
	readyDone  chan struct{} // closed when it is over
	predPID    int
	inherit    map[string]int // descriptors from the predecessor not yet claimed
	active     *activation    // sockets from systemd not yet claimed
	handover   *net.UnixListener
	sockFile   os.FileInfo // the hand-over socket's file, to remove at Stop
	took       bool        // whether this instance took over from another
	statePID   bool        // whether its ready message states its pid
	turn       sync.Mutex  // held while a successor is served
	state      []byte      // the predecessor's application state
	out        []handedOn  // what goes to the successor, in order
	outState   []byte
	files      map[string]*os.File // inherited files by name
	done       chan struct{}
	stopping   chan struct{} // closed once Stop has cleaned up
	succ       *successor    // the successor that committed, if any
	restart    bool          // a Restart is under way
	restarting restarting    // the successor a Restart waits for
	serveWG    sync.WaitGroup
	pending    map[*net.UnixConn]struct{} // successors being served
	passing    passing                    // live connections to and from neighbours
}

type phase int

const (
	starting phase = iota
	serving
	finished // a successor took over, or Stop
)

// handedOn is an object to hand to the successor.
type handedOn struct {
	key  string
	meta Meta
	obj  any // net.Listener, net.PacketConn or *os.File
}

// The meta of each descriptor of a hand-over names what it is.
const (
	kindHandover = "handover" // the hand-over socket itself; carries the state
	kindListener = "listener"
	kindPacket   = "packet"
	kindFile     = "file"
)

func objectKey(kind, network, address string) string {
	return kind + "\x00" + network + "\x00" + address
}

// Start starts an instance. If an instance serves at cfg.Socket, Start takes
// over from it: it receives every socket that instance hands on, which
// [Instance.Listen] and [Instance.File] then return, and that instance serves
// on until this one's Ready. Otherwise this is the first instance: Listen
// takes the sockets systemd passed (socket activation), else listens anew.
// Another instance between its own Start and Ready makes Start wait its turn,
// at most Config.ReadyTimeout; a successor that Restart started, whose turn
// comes after another successor of the same predecessor took over, fails
// with ErrAborted.
//
// Start blocks for the hand-over: at most Config.Timeout for each step. The
// descriptors it receives are the Instance's until the application claims
// them; those never claimed are closed at Ready or Stop. On error nothing
// stays open, and an instance that was serving serves on.
func Start(cfg Config) (*Instance, error) {
	if cfg.Socket == "" {
		return nil, fmt.Errorf("graceful: Config.Socket is empty: %w", syscall.EINVAL)
	}
	if err := checkAddr(cfg.Socket); err != nil {
		return nil, err
	}
	if isAbstract(cfg.Socket) {
		// The start lock lives beside the socket's file.
		return nil, fmt.Errorf("graceful: Config.Socket %s: a path is needed, not an abstract name: %w", cfg.Socket, syscall.EINVAL)
	}
	in := &Instance{
		cfg:          cfg,
		timeout:      cfg.Timeout,
		readyTimeout: cfg.ReadyTimeout,
		inherit:      make(map[string]int),
		files:        make(map[string]*os.File),
		done:         make(chan struct{}),
		pending:      make(map[*net.UnixConn]struct{}),
		predAnswer:   make(chan error, 1),
		readyDone:    make(chan struct{}),
	}
	in.passing.init()
	if in.timeout == 0 {
		in.timeout = DefaultTimeout
	}
	if in.readyTimeout <= 0 {
		in.readyTimeout = defaultReadyTimeout
	}
	// What this process was given comes first, so that every path below
	// closes it: sockets from systemd (kept for a first instance, closed
	// at Ready otherwise), and those of a predecessor's Restart.
	active, err := activated()
	in.active = active
	if err == nil {
		err = in.inheritFromParent()
	}
	inherited := err == nil
	if errors.Is(err, errNotInherited) {
		err = nil
	}
	if err == nil {
		in.lock, err = lockFile(cfg.Socket+".lock", in.readyTimeout)
	}
	if err == nil && inherited {
		// While this process waited for its turn, another successor of
		// the same predecessor may have taken over (the predecessor then
		// refuses this one, unless it died meanwhile): its sockets are
		// that one's now.
		if last := in.lock.recorded(); last != 0 && last != in.predPID {
			err = fmt.Errorf("%w: pid %d took over from pid %d first", ErrAborted, last, in.predPID)
		}
	}
	if err == nil && cfg.PIDFile != "" {
		err = checkPIDFileDir(cfg.PIDFile)
	}
	if err == nil && !inherited {
		err = in.takeOver()
		if errors.Is(err, ErrNoServer) {
			err = nil // the first instance
		}
	}
	if err != nil {
		in.abandon()
		return nil, err
	}
	if in.pred != nil {
		// Only now: it may Stop the instance, which Start must have
		// finished building.
		go in.watchPredecessor(in.pred)
	}
	return in, nil
}

// abandon releases all that Start took when it fails.
func (in *Instance) abandon() {
	in.closeInherited()
	if in.handover != nil {
		in.handover.Close()
	}
	if in.pred != nil {
		// Gone without its Ready: its predecessor serves on.
		refuse(in.pred, "it failed to start")
		in.pred.Close()
	}
	in.lock.unlock()
}

// errNotInherited: no descriptors were given at exec for this process.
var errNotInherited = errors.New("nothing inherited")

// inheritFromParent takes the descriptors that the predecessor's Restart gave
// this process at exec (inheritEnv), if it did.
func (in *Instance) inheritFromParent() error {
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
	c, err := FdConn(first)
	if err != nil {
		closeInts(first+1, first+len(metas))
		return fmt.Errorf("graceful: taking over from pid %s: %w", ppid, err)
	}
	conn, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		closeInts(first+1, first+len(metas))
		return fmt.Errorf("%w: the hand-over's connection is %T", ErrProtocol, c)
	}
	for i, m := range metas {
		b, err := base64.StdEncoding.DecodeString(m)
		if err == nil {
			err = in.inherited(first+1+i, bytes.NewReader(b))
		} else {
			closeFd(first + 1 + i)
		}
		if err == nil && in.handover == nil && i == len(metas)-1 {
			err = fmt.Errorf("%w: no hand-over socket among the descriptors", ErrProtocol)
		}
		if err != nil {
			conn.Close()
			closeInts(first+2+i, first+len(metas))
			return fmt.Errorf("graceful: taking over from pid %s: %w", ppid, err)
		}
	}
	in.connected(conn, pid)
	in.statePID = statePID
	return nil
}

// takeOver receives the sockets of the instance serving at the socket, and
// keeps the connection open for the commit.
func (in *Instance) takeOver() error {
	d := net.Dialer{Timeout: max(in.timeout, 0)}
	c, err := d.Dial("unix", in.cfg.Socket)
	if err != nil {
		return dialError(in.cfg.Socket, err)
	}
	conn := c.(*net.UnixConn)
	client := &Client{Timeout: in.timeout}
	_, err = client.receiveHello(context.Background(), conn, in.inherited, false, true)
	if err == nil && in.handover == nil {
		err = fmt.Errorf("%w: no hand-over socket among the descriptors", ErrProtocol)
	}
	if err != nil {
		conn.Close()
		return fmt.Errorf("graceful: taking over from %s: %w", in.cfg.Socket, err)
	}
	in.connected(conn, in.predPID)
	return nil
}

// connected keeps the connection to the predecessor, which has handed its
// sockets over, for the commit.
func (in *Instance) connected(conn *net.UnixConn, pid int) {
	in.pred = conn
	// Not the peer's credentials: on a connection to a socket that was
	// handed down, they name the instance that first listened.
	in.predPID = pid
	in.took = true
	// The predecessor serves the socket file now, so this is its file.
	in.sockFile, _ = os.Lstat(in.cfg.Socket)
}

// inherited is the callback that takes the predecessor's descriptors.
func (in *Instance) inherited(fd int, meta io.Reader) error {
	m, err := MetaFrom(meta)
	if err != nil {
		closeFd(fd)
		return err
	}
	switch kind := m["kind"]; kind {
	case kindHandover:
		if in.handover != nil {
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
		in.handover = ul
		in.state = []byte(m["state"])
		in.predPID, _ = strconv.Atoi(m["pid"])
		return nil
	case kindListener, kindPacket, kindFile:
		key := objectKey(kind, m["network"], m["address"])
		if kind == kindFile {
			key = objectKey(kind, "", m["name"])
		}
		if _, dup := in.inherit[key]; dup {
			closeFd(fd)
			return fmt.Errorf("%w: two descriptors for %q", ErrProtocol, key)
		}
		in.inherit[key] = fd
		return nil
	default:
		closeFd(fd)
		return fmt.Errorf("%w: descriptor of unknown kind %q", ErrProtocol, kind)
	}
}

// Listen returns the listener for network and address: the predecessor's, if it
// listened on these very strings, or else on the address they name (a
// predecessor's "localhost:8080" for "127.0.0.1:8080", its ":8080" for ":8080"
// but not for "127.0.0.1:8080"); else one that systemd passed whose address
// matches, for a first instance; else a new one from [net.Listen]. The listener
// is the application's, and this instance hands it on to its successor while it
// is open. A Unix socket's file stays in place across hand-overs (its listener
// does not remove it on Close), and a stale one is replaced.
func (in *Instance) Listen(network, address string) (net.Listener, error) {
	ln, err := in.listen(kindListener, network, address)
	if err != nil {
		return nil, err
	}
	return ln.(net.Listener), nil
}

// ListenPacket is [Instance.Listen] for packet sockets: the predecessor's
// socket for network and address, else one from systemd, else a new one from
// [net.ListenPacket].
func (in *Instance) ListenPacket(network, address string) (net.PacketConn, error) {
	pc, err := in.listen(kindPacket, network, address)
	if err != nil {
		return nil, err
	}
	return pc.(net.PacketConn), nil
}

func (in *Instance) listen(kind, network, address string) (any, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.phase == finished {
		return nil, fmt.Errorf("graceful: listen %s %s: %w", network, address, ErrInstanceState)
	}
	key := objectKey(kind, network, address)
	for i, h := range in.out {
		if h.key == key {
			if !objectClosed(h.obj) {
				return nil, fmt.Errorf("graceful: listen %s %s: already listening: %w", network, address, syscall.EADDRINUSE)
			}
			// Closed by the application, which listens anew.
			in.out = slices.Delete(in.out, i, i+1)
			break
		}
	}
	obj, err := in.claim(kind, key, network, address)
	if err != nil {
		return nil, fmt.Errorf("graceful: listen %s %s: %w", network, address, err)
	}
	if ul, ok := obj.(*net.UnixListener); ok {
		// The successor shares the socket: its file must outlive this
		// instance's listener.
		ul.SetUnlinkOnClose(false)
	}
	in.out = append(in.out, handedOn{key: key, meta: Meta{"kind": kind, "network": network, "address": address}, obj: obj})
	return obj, nil
}

// claim returns the inherited, activated or new socket for key.
func (in *Instance) claim(kind, key, network, address string) (any, error) {
	fd, ok := in.inherit[key]
	if !ok {
		// The same address spelled otherwise: the predecessor's
		// "localhost:80" for "127.0.0.1:80", or, for the port a first
		// instance got with ":0", that port.
		for k, ifd := range in.inherit {
			if strings.HasPrefix(k, kind+"\x00") && socketMatches(ifd, kind, network, address) {
				key, fd, ok = k, ifd, true
				break
			}
		}
	}
	if ok {
		delete(in.inherit, key)
		if kind == kindListener {
			return FdListener(fd)
		}
		return FdPacketConn(fd)
	}
	if fd := in.active.take(kind, network, address); fd >= 0 {
		if kind == kindListener {
			return FdListener(fd)
		}
		return FdPacketConn(fd)
	}
	if isUnixNetwork(network) {
		removeStaleSocket(address)
	}
	var obj any
	var err error
	if kind == kindListener {
		obj, err = net.Listen(network, address)
	} else {
		obj, err = net.ListenPacket(network, address)
	}
	if errors.Is(err, syscall.EADDRINUSE) && !in.took {
		err = fmt.Errorf("%w (an instance with another Config.Socket than %s?)", err, in.cfg.Socket)
	}
	return obj, err
}

func isUnixNetwork(network string) bool {
	return network == "unix" || network == "unixpacket" || network == "unixgram"
}

// File returns the file the predecessor handed on under name, or nil. The
// file is the caller's from then on; File returns it once, and only before
// Ready, which closes the files nobody asked for.
func (in *Instance) File(name string) *os.File {
	in.mu.Lock()
	defer in.mu.Unlock()
	key := objectKey(kindFile, "", name)
	fd, ok := in.inherit[key]
	if !ok {
		return nil
	}
	delete(in.inherit, key)
	return os.NewFile(uintptr(fd), name)
}

// SetFile hands f on to the successor under name (a nil f withdraws the
// name). f stays the caller's: the successor gets a descriptor of its own,
// taken when it connects, and f must stay open until then or until it is
// withdrawn.
func (in *Instance) SetFile(name string, f *os.File) {
	in.mu.Lock()
	defer in.mu.Unlock()
	key := objectKey(kindFile, "", name)
	for i, h := range in.out {
		if h.key == key {
			in.out = append(in.out[:i], in.out[i+1:]...)
			break
		}
	}
	if f != nil {
		in.out = append(in.out, handedOn{key: key, meta: Meta{"kind": kindFile, "name": name}, obj: f})
	}
}

// State returns the bytes the predecessor set with SetState, or nil for a
// first instance.
func (in *Instance) State() []byte {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.state
}

// maxState bounds the state: it travels in the hand-over socket's meta,
// within a receiver's default limit and an environment variable's.
const maxState = 32 << 10

// SetState sets a few bytes of application state for the successor, which
// reads them with State; they travel when it connects, or at its exec. More
// than 32 KiB fails with ErrLimit: larger state belongs in a file handed on
// with SetFile.
func (in *Instance) SetState(b []byte) error {
	if len(b) > maxState {
		return fmt.Errorf("%w: state of %d bytes, more than %d", ErrLimit, len(b), maxState)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.outState = append([]byte(nil), b...)
	return nil
}

// Inherited reports whether this instance took over from a predecessor.
func (in *Instance) Inherited() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.took
}

// Done returns a channel that is closed when this instance is to stop
// serving: a successor has called Ready (the application then drains, for
// instance with [Drainer.Drain], and exits), or Stop was called.
func (in *Instance) Done() <-chan struct{} {
	return in.done
}

// closeUnclaimed closes, at Ready, what the application did not claim, and
// returns the lines that say so, to log: a socket no Listen asked for stops
// serving with it.
func (in *Instance) closeUnclaimed() []string {
	var logs []string
	for key := range in.inherit {
		logs = append(logs, "closing the inherited "+strings.ReplaceAll(strings.TrimLeft(key, "\x00"), "\x00", " ")+": no Listen asked for it")
	}
	if n := in.active.unclaimed(); n > 0 {
		logs = append(logs, fmt.Sprintf("closing %d socket(s) from systemd: no Listen asked for them", n))
	}
	in.closeInherited()
	return logs
}

// closeInherited closes every descriptor received or passed by systemd that
// the application did not claim.
func (in *Instance) closeInherited() {
	for key, fd := range in.inherit {
		closeFd(fd)
		delete(in.inherit, key)
	}
	in.active.close()
	in.active = nil
}

// Successor returns the pid of the instance that took over from this one,
// or 0 while none has.
func (in *Instance) Successor() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.succ == nil {
		return 0
	}
	return in.succ.pid
}

// predGone waits, Config.Timeout at most (DefaultTimeout for no bound: the
// process of a connection that closed is ending), until the predecessor's
// process has ended, and reports whether it has.
func (in *Instance) predGone() bool {
	wait := in.timeout
	if wait < 0 {
		wait = DefaultTimeout
	}
	deadline := time.Now().Add(wait)
	for !processGone(in.predPID) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// deadline is the deadline of a step of a hand-over that starts now: none
// for a negative Config.Timeout.
func (in *Instance) deadline() time.Time {
	if in.timeout < 0 {
		return time.Time{}
	}
	return time.Now().Add(in.timeout)
}
