package graceful

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"slices"
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
	// its sockets to the next. Its directory must be this user's (or
	// root's) and writable by no one else; Start makes it, 0700, if it is
	// missing. The socket file is 0600. A lock file, Socket+".lock", stays
	// beside it. An abstract "@" name is refused: the lock needs a place.
	Socket string
	// PIDFile, if set, holds the pid of the instance that serves. Ready
	// writes it; an instance that cannot write it does not take over. Stop
	// removes it.
	PIDFile string
	// Timeout bounds each step of a hand-over, each wait for the other
	// instance. 0 means DefaultTimeout; a negative value, no bound.
	Timeout time.Duration
	// ReadyTimeout bounds how long an instance waits for its successor's
	// Ready after handing it its sockets. It also bounds how long Start
	// waits while another instance is starting. 0 means a minute.
	ReadyTimeout time.Duration
	// ErrorLog, if set, receives a line for each hand-over that failed;
	// the instance serves on. A Restart's failure is Restart's error
	// instead. Nothing is logged without it.
	ErrorLog *log.Logger
	// ListenConfig, if set, creates the sockets that Listen and
	// ListenPacket make anew. Its Control sets socket options, such as
	// SO_REUSEPORT. Sockets taken over keep the options they were made
	// with.
	ListenConfig *net.ListenConfig
	// KeepPID keeps the process started for as long as the service runs,
	// as a process manager that tracks one pid needs. Start never returns
	// in it: it starts the instances, forwards its signals to the one that
	// serves, and reaps every child. If the serving instance dies, it
	// starts another with its copy of the sockets. It exits with the last
	// instance's status, or 0 if stopped while none runs (between a crash
	// and the next start). Signal it: PIDFile names the serving instance. A
	// process of pid 1 (a container's init) keeps anyway. Linux only:
	// elsewhere Start fails with an error matching errors.ErrUnsupported.
	KeepPID bool
}

// Errors of the restart layer.
var (
	// ErrAborted means a hand-over was called off: the running instance
	// gave up waiting for Ready, stopped, or took another successor. Start
	// also fails with it when another instance took too long to start. The
	// instance that gets it must not serve: the other serves on.
	ErrAborted = errors.New("graceful: hand-over aborted")
	// ErrInstanceState means a method of an Instance was called at the
	// wrong time: Listen after Stop, Ready twice, Restart before Ready or
	// after Done.
	ErrInstanceState = errors.New("graceful: not allowed in the instance's state")
)

// An Instance is one instance of a server in a chain of restarts. [Start]
// makes it. [Instance.Listen] hands the application the predecessor's
// sockets, or new ones. [Instance.Ready] commits. [Instance.Done] closes
// when a successor has committed in turn.
//
// From Start to Ready, two instances share each listening socket. Both
// accept, so no connection is refused and none is lost. Only one instance
// is between Start and Ready at a time: another waits its turn (a lock
// beside the socket), then takes over from the first.
//
// The methods of an Instance may be called from several goroutines.
type Instance struct {
	cfg          Config
	timeout      time.Duration
	readyTimeout time.Duration
	state        []byte // the predecessor's application state
	took         bool   // whether it took over from a predecessor

	calls  chan func()   // to the loop, which owns m
	ended  chan struct{} // closed when the loop has ended
	frozen sync.Mutex    // serializes calls once it has
	m      machine

	done     chan struct{} // Done
	ctx      context.Context
	cancel   context.CancelFunc // at Stop: calls off PassConns
	incoming incoming           // connections passed to this instance
}

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

// Start starts an instance. If an instance serves at cfg.Socket, Start
// takes over from it: it receives every socket that instance hands on. That
// instance serves on until this one's Ready. Otherwise this is the first
// instance: Listen takes the sockets systemd passed, or listens anew.
//
// Start waits its turn while another instance is between its own Start and
// Ready, Config.ReadyTimeout at most. Each step of the hand-over waits at
// most Config.Timeout. The descriptors received are the Instance's until
// the application claims them; those never claimed are closed at Ready or
// Stop. On error nothing stays open, and the old instance serves on.
//
// In a process of pid 1, or with Config.KeepPID, Start does not return:
// that process keeps the service (see Config.KeepPID). What main did
// before Start ran in it too: call Start early.
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
	if keeping(cfg) {
		return nil, keep(cfg) // returns only if it cannot keep
	}
	in := &Instance{
		cfg:          cfg,
		timeout:      cfg.Timeout,
		readyTimeout: cfg.ReadyTimeout,
		calls:        make(chan func()),
		ended:        make(chan struct{}),
		done:         make(chan struct{}),
	}
	in.ctx, in.cancel = context.WithCancel(context.Background())
	in.incoming.init()
	if in.timeout == 0 {
		in.timeout = DefaultTimeout
	}
	if in.readyTimeout <= 0 {
		in.readyTimeout = defaultReadyTimeout
	}
	m := &in.m
	m.in = in
	m.inherit = make(map[string]int)
	m.pending = make(map[*successor]bool)
	m.making = make(map[string]bool)
	// The loop is not running yet: the machine is Start's.
	if err := m.takeOver(); err != nil {
		m.abandon()
		return nil, err
	}
	if m.pred != nil {
		m.spawn(func() { in.watchPredecessor(m.pred) })
	} else {
		in.incoming.finish() // nobody passes connections to a first instance
	}
	go in.run()
	return in, nil
}

// abandon releases all that Start took when it fails.
func (m *machine) abandon() {
	m.closeInherited()
	if m.handover != nil {
		m.handover.Close()
	}
	if m.pred != nil && m.pred.conn != nil {
		// Gone without its Ready: its predecessor serves on.
		m.pred.refuse("it failed to start")
		m.pred.conn.Close()
	}
	m.lock.unlock()
	m.in.cancel()
}

// Listen returns the listener for network and address. It is the
// predecessor's if it listened on these very strings, or on the address
// they name ("localhost:8080" for "127.0.0.1:8080"). Else it is one systemd
// passed whose address matches, for a first instance. Else it is new, from
// Config.ListenConfig. The listener is the application's. This instance
// hands it on to its successor while it is open. A Unix socket's file stays
// in place across hand-overs; a stale one is replaced.
func (in *Instance) Listen(network, address string) (net.Listener, error) {
	ln, err := in.listen(kindListener, network, address)
	if err != nil {
		return nil, err
	}
	return ln.(net.Listener), nil
}

// ListenPacket is [Instance.Listen] for packet sockets: the predecessor's
// socket, else systemd's, else a new one.
func (in *Instance) ListenPacket(network, address string) (net.PacketConn, error) {
	pc, err := in.listen(kindPacket, network, address)
	if err != nil {
		return nil, err
	}
	return pc.(net.PacketConn), nil
}

func (in *Instance) listen(kind, network, address string) (obj any, err error) {
	var vanished time.Time
	key := objectKey(kind, network, address)
	in.call(func(m *machine) { obj, vanished, err = m.claim(kind, key, network, address) })
	if obj == nil && err == nil {
		// A new socket is made on the caller's goroutine: a Control that
		// panics or blocks does so there, and the loop does not wait. The
		// address stays reserved meanwhile (claim).
		defer in.call(func(m *machine) { delete(m.making, key) })
		obj, err = in.listenAnew(kind, network, address, vanished)
		if err == nil {
			in.call(func(m *machine) { err = m.keep(kind, key, network, address, obj) })
		}
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return nil, fmt.Errorf("graceful: %w", err) // it names the address
	} else if err != nil {
		return nil, fmt.Errorf("graceful: listen %s %s: %w", network, address, err)
	}
	return obj, nil
}

// claim returns the inherited or activated socket for the address, kept
// for the successor. Else it returns none, and when a predecessor
// vanished, and reserves the address for the caller to make the socket.
func (m *machine) claim(kind, key, network, address string) (any, time.Time, error) {
	if err := m.free(key); err != nil {
		return nil, time.Time{}, err
	}
	if m.making[key] {
		return nil, time.Time{}, fmt.Errorf("already listening: %w", syscall.EADDRINUSE)
	}
	inherited := key
	fd, ok := m.inherit[key]
	if !ok {
		// The same address spelled otherwise: the predecessor's
		// "localhost:80" for "127.0.0.1:80", or, for the port a first
		// instance got with ":0", that port.
		for k, ifd := range m.inherit {
			if strings.HasPrefix(k, kind+"\x00") && socketMatches(ifd, kind, network, address) {
				inherited, fd, ok = k, ifd, true
				break
			}
		}
	}
	if ok {
		delete(m.inherit, inherited)
	} else {
		fd = m.active.take(kind, network, address)
	}
	if fd < 0 {
		m.making[key] = true
		return nil, m.vanished, nil
	}
	var obj any
	var err error
	if kind == kindListener {
		obj, err = FdListener(fd)
	} else {
		obj, err = FdPacketConn(fd)
	}
	if err == nil {
		m.add(key, kind, network, address, obj)
	}
	return obj, time.Time{}, err
}

// free checks that the application listens on key no more: it may have
// closed the listener, and listen anew.
func (m *machine) free(key string) error {
	if m.phase != starting && m.phase != serving {
		return ErrInstanceState
	}
	for i, h := range m.out {
		if h.key == key {
			if !objectClosed(h.obj) {
				return fmt.Errorf("already listening: %w", syscall.EADDRINUSE)
			}
			m.out = slices.Delete(m.out, i, i+1)
			break
		}
	}
	return nil
}

// keep keeps a new socket for the successor, or closes it if the
// instance stopped, or another Listen of the address won, meanwhile.
func (m *machine) keep(kind, key, network, address string, obj any) error {
	if err := m.free(key); err != nil {
		obj.(io.Closer).Close()
		return err
	}
	m.add(key, kind, network, address, obj)
	return nil
}

// add keeps obj, the application's socket for key, to hand on.
func (m *machine) add(key, kind, network, address string, obj any) {
	if ul, ok := obj.(*net.UnixListener); ok {
		// The successor shares the socket: its file must outlive this
		// instance's listener.
		ul.SetUnlinkOnClose(false)
	}
	m.out = append(m.out, handedOn{key: key, meta: Meta{"kind": kind, "network": network, "address": address}, obj: obj})
	if m.phase == serving {
		if err := tellKeeper(m.snapshot()); err != nil {
			m.in.logf("telling the keeper: %v", err)
		}
	}
}

// listenAnew creates the socket for network and address. A predecessor
// that vanished moments ago may hold the address until the kernel has
// closed all its descriptors: it retries meanwhile.
func (in *Instance) listenAnew(kind, network, address string, vanished time.Time) (any, error) {
	if isUnixNetwork(network) {
		removeStaleSocket(address)
	}
	var lc net.ListenConfig
	if in.cfg.ListenConfig != nil {
		lc = *in.cfg.ListenConfig
	}
	// A Control that panics fails the call, so that net closes the
	// socket, then panics again here.
	var panicked *any
	if control := lc.Control; control != nil {
		lc.Control = func(network, address string, c syscall.RawConn) (err error) {
			defer func() {
				if v := recover(); v != nil {
					panicked, err = &v, errors.New("ListenConfig.Control panicked")
				}
			}()
			return control(network, address, c)
		}
	}
	listen := func() (obj any, err error) {
		if kind == kindListener {
			obj, err = lc.Listen(context.Background(), network, address)
		} else {
			obj, err = lc.ListenPacket(context.Background(), network, address)
		}
		if panicked != nil {
			panic(*panicked)
		}
		return obj, err
	}
	obj, err := listen()
	for deadline := vanished.Add(max(in.timeout, time.Second)); errors.Is(err, syscall.EADDRINUSE) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		obj, err = listen()
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
func (in *Instance) File(name string) (f *os.File) {
	in.call(func(m *machine) {
		key := objectKey(kindFile, "", name)
		if fd, ok := m.inherit[key]; ok {
			delete(m.inherit, key)
			f = os.NewFile(uintptr(fd), name)
		}
	})
	return f
}

// SetFile hands f on to the successor under name (a nil f withdraws the
// name). f stays the caller's: the successor gets a descriptor of its own,
// taken when it connects, and f must stay open until then or until it is
// withdrawn.
func (in *Instance) SetFile(name string, f *os.File) {
	in.call(func(m *machine) {
		key := objectKey(kindFile, "", name)
		m.out = slices.DeleteFunc(m.out, func(h handedOn) bool { return h.key == key })
		if f != nil {
			m.out = append(m.out, handedOn{key: key, meta: Meta{"kind": kindFile, "name": name}, obj: f})
		}
	})
}

// State returns the bytes the predecessor set with SetState, or nil for a
// first instance.
func (in *Instance) State() []byte {
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
	b = bytes.Clone(b)
	in.call(func(m *machine) { m.outState = b })
	return nil
}

// Done returns a channel that is closed when this instance is to stop
// serving: a successor has called Ready (the application then drains, for
// instance with [Drainer.Drain], and exits), or Stop was called.
func (in *Instance) Done() <-chan struct{} {
	return in.done
}

// SuccessorPID returns the pid of the instance that took over from this
// one, or 0 while none has. It is 0 too for a successor in a PID namespace
// this process cannot see.
func (in *Instance) SuccessorPID() (pid int) {
	in.call(func(m *machine) {
		if m.succ != nil {
			pid = m.succ.pid
		}
	})
	return pid
}

// closeUnclaimed closes, at Ready, what the application did not claim, and
// returns the lines that say so, to log: a socket no Listen asked for stops
// serving with it.
func (m *machine) closeUnclaimed() []string {
	var logs []string
	for key := range m.inherit {
		logs = append(logs, "closing the inherited "+strings.ReplaceAll(strings.TrimLeft(key, "\x00"), "\x00", " ")+": no Listen asked for it")
	}
	if n := m.active.unclaimed(); n > 0 {
		logs = append(logs, fmt.Sprintf("closing %d socket(s) from systemd: no Listen asked for them", n))
	}
	m.closeInherited()
	return logs
}

// closeInherited closes every descriptor received or passed by systemd that
// the application did not claim.
func (m *machine) closeInherited() {
	for key, fd := range m.inherit {
		closeFd(fd)
		delete(m.inherit, key)
	}
	m.active.close()
	m.active = nil
}

func (in *Instance) logf(format string, args ...any) {
	if in.cfg.ErrorLog != nil {
		in.cfg.ErrorLog.Printf(format, args...)
	}
}

// Ready commits this instance: from now on it serves. A successor tells
// its predecessor and waits for its answer; only then does the
// predecessor's Done close. Then this instance serves the hand-over socket
// for its own successor. It puts its pid file in place and tells systemd
// (READY=1). The inherited sockets that no Listen claimed are closed. If
// the predecessor dies meanwhile, Ready succeeds: the sockets are this
// instance's alone.
//
// Call Ready once the application serves: the predecessor stops accepting
// right after. Ready blocks until the predecessor answers, at once or
// within its Config.ReadyTimeout. If Ready fails, the predecessor serves
// on. The listeners Listen returned are then closed, and the application
// drains and exits. The error is [ErrAborted] when the predecessor gave up
// or stopped.
func (in *Instance) Ready() error {
	reply := make(chan error, 1)
	in.call(func(m *machine) { m.readyRequest(reply) })
	return <-reply
}

// Stop ends this instance without a successor, and closes Done. It stops
// serving the hand-over socket, and calls off a hand-over under way: that
// successor's Ready fails. Before this instance's own Ready, its
// predecessor serves on. A serving instance also removes the socket file,
// and the pid file if it names this process, and tells systemd STOPPING=1.
// Stop does not close the application's listeners: the application drains
// them.
//
// After a successor took over, Stop releases what remains: the connection
// to the successor (no more connections are passed) and connections passed
// to this instance and not accepted. Stop calls off a Restart (its
// successor is killed) and a PassConns (the connections stay the
// caller's). It blocks until that is done, and until a Ready under way
// has ended.
func (in *Instance) Stop() {
	done := make(chan struct{})
	in.call(func(m *machine) { m.stopRequest(done) })
	<-done
}

// Inherited reports whether this instance took over from a predecessor.
func (in *Instance) Inherited() bool {
	return in.took
}
