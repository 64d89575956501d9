package graceful

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// This file is the keeper: the process a service was started as, when it
// is a container's init (pid 1) or Config.KeepPID is set. It lives exactly
// as long as the service. It starts the first instance, forwards signals
// to the instance that serves, reaps every child and orphan, keeps a copy
// of the serving instance's sockets, and starts a new instance with them
// when one dies outside a hand-over.
//
// The instances tell it what happens as they tell systemd (sd_notify(3)):
// their NOTIFY_SOCKET is the keeper's socket. READY=1 and MAINPID= say
// which instance serves, STOPPING=1 that the service stops, and
// X_GRACEFUL_SOCKETS= (with the descriptors) what to keep.

// keeperSockets names the copies of the sockets an instance sends.
const keeperSockets = "X_GRACEFUL_SOCKETS"

// keeperExited names an instance's report that the serving instance, its
// successor, which it started and reaped, ended: "pid:status".
const keeperExited = "X_GRACEFUL_EXITED"

// keeping reports whether Start runs the keeper in this process.
func keeping(cfg Config) bool {
	return keeperAddr() == "" && (cfg.KeepPID || os.Getpid() == 1)
}

// keep runs this process as the keeper of the service, and exits with the
// status of the instance that served last. It returns only if it cannot
// start.
func keep(cfg Config) error {
	k, err := newKeeper(cfg)
	if err != nil {
		return fmt.Errorf("graceful: keeping the service: %w", err)
	}
	// What the application did before Start is of no more use here.
	debug.FreeOSMemory()
	os.Exit(k.run())
	return nil
}

// keeper is the state of the keeper's loop, which owns it.
type keeper struct {
	cfg      Config
	exe      string
	env      []string // the instances' environment
	addr     string   // the socket's address, abstract
	sock     *net.UnixConn
	raw      syscall.RawConn
	buf, oob []byte
	readable chan struct{} // the socket has datagrams to read
	drained  chan struct{} // the loop read them all: watch again
	sigs     chan os.Signal
	sigchld  chan os.Signal // apart, so that no other signal crowds it out
	timedOut chan int       // instances not ready in time

	// instances are the pids that may speak for the service: those the
	// keeper started, and those an instance named. reaped are the
	// children reaped and not yet settled: what they sent still counts.
	instances map[int]bool
	reaped    map[int]bool
	handedBy  map[int]int // an instance's predecessor, which named it
	ignored   int         // notifications ignored since ignoredAt
	ignoredAt time.Time

	serving   int // the instance that serves, 0 if none
	started   int // an instance started, not ready yet
	readyAt   time.Time
	served    bool // an instance has been ready
	stopping  bool
	over      bool // the service ended: exit once every instance has
	status    int
	stored    []int    // copies of the serving instance's sockets
	metas     []string // their metas
	storedBy  int      // the instance that sent them
	delay     time.Duration
	respawn   <-chan time.Time
	activated []string // systemd's variables for the first instance
	nActive   int      // and the number of its sockets, from 3 on
}

// exited is a child process that ended, with its wait status.
type exited struct {
	pid int
	ws  unix.WaitStatus
}

// keeperMsg is a notification, with its sender's credentials.
type keeperMsg struct {
	pid, uid int
	vars     map[string]string
	fds      []int
}

// forwarded are the signals the keeper passes to the serving instance.
var forwarded = []os.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

func newKeeper(cfg Config) (*keeper, error) {
	if os.Getpid() != 1 {
		// Orphans of the instances (a predecessor whose successor lives
		// on) become this process's children, to forward signals to and
		// to reap.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return nil, os.NewSyscallError("prctl", err)
		}
	}
	exe, err := executable()
	if err != nil {
		return nil, err
	}
	k := &keeper{cfg: cfg, exe: exe, sigs: make(chan os.Signal, 16), sigchld: make(chan os.Signal, 1), timedOut: make(chan int, 1),
		readable: make(chan struct{}, 1), drained: make(chan struct{}, 1), instances: make(map[int]bool), handedBy: make(map[int]int),
		buf: make([]byte, 64<<10), oob: make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*maxBatch))}
	if err := k.listen(); err != nil {
		return nil, err
	}
	k.env = slices.DeleteFunc(os.Environ(), func(e string) bool {
		for _, v := range []string{"NOTIFY_SOCKET=", keeperEnv + "=", "LISTEN_PID=", "LISTEN_FDS=", "LISTEN_FDNAMES="} {
			if strings.HasPrefix(e, v) {
				return true
			}
		}
		return false
	})
	k.activate()
	k.env = append(k.env, "NOTIFY_SOCKET="+k.addr, keeperEnv+"="+k.addr)
	signal.Notify(k.sigs, forwarded...)
	signal.Notify(k.sigchld, syscall.SIGCHLD)
	go k.watch()
	return k, nil
}

// activate takes the sockets systemd passed this process (socket
// activation), to pass them on to the first instance at the same numbers:
// with LISTEN_PID naming the keeper, which the instance takes for its
// parent's.
func (k *keeper) activate() {
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || err != nil || n <= 0 || n > 1<<16 {
		return
	}
	for fd := 3; fd < 3+n; fd++ {
		unix.CloseOnExec(fd) // for the first instance only
	}
	k.activated = []string{"LISTEN_PID=" + os.Getenv("LISTEN_PID"), "LISTEN_FDS=" + os.Getenv("LISTEN_FDS"), "LISTEN_FDNAMES=" + os.Getenv("LISTEN_FDNAMES")}
	k.nActive = n
}

// listen opens the socket the instances notify, in the abstract namespace
// (no file to leave behind); it takes its senders' credentials.
func (k *keeper) listen() error {
	k.addr = "@graceful-keeper-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: k.addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	rc, err := sock.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
		err = cmp.Or(err, serr)
	}
	if err != nil {
		sock.Close()
		return err
	}
	k.sock, k.raw = sock, rc
	return nil
}

// run is the keeper's loop; it returns the status to exit with.
func (k *keeper) run() int {
	if err := k.start(nil, nil); err != nil {
		k.logf("starting the service: %v", err)
		return 1
	}
	for !k.over || !k.instancesGone() {
		select {
		case <-k.sigchld:
			k.reap() // every child that ended: one notice may stand for several
		case sig := <-k.sigs:
			k.signal(sig.(syscall.Signal))
		case <-k.readable:
			if k.drain(64) {
				k.drained <- struct{}{}
			} else {
				k.readable <- struct{}{} // more, after the other events
			}
		case pid := <-k.timedOut:
			if pid == k.started {
				unix.Kill(pid, unix.SIGKILL)
			}
		case <-k.respawn:
			k.respawn = nil
			k.restartService()
		}
	}
	k.notify("STOPPING=1")
	return k.status
}

// watch tells the loop when the socket has datagrams, and waits until it
// read them all. The loop reads them itself: what a child sent before it
// ended is read before its end is settled, and a flood of datagrams never
// blocks the loop.
func (k *keeper) watch() {
	probe := make([]byte, 1)
	for {
		err := k.raw.Read(func(fd uintptr) bool {
			_, _, err := unix.Recvfrom(int(fd), probe, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			return err != unix.EAGAIN
		})
		if err != nil {
			return
		}
		k.readable <- struct{}{}
		<-k.drained
	}
}

// drain takes at most limit datagrams, and reports whether it took all.
func (k *keeper) drain(limit int) bool {
	for range limit {
		var n, oobn int
		var rerr error
		err := k.raw.Control(func(fd uintptr) {
			n, oobn, _, _, rerr = unix.Recvmsg(int(fd), k.buf, k.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		})
		switch {
		case err != nil || rerr == unix.EAGAIN:
			return true
		case rerr == nil:
			k.take(parseCredentials(k.oob[:oobn]), k.buf[:n])
		}
	}
	return false
}

// queueLimit is how many datagrams the socket holds at most: Linux queues
// one more than net.unix.max_dgram_qlen.
func queueLimit() int {
	b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen")
	n, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || perr != nil || n < 0 {
		return 1 << 12
	}
	return min(n, 1<<20) + 1
}

// parseCredentials reads a datagram's control messages: its sender's
// credentials and the descriptors attached.
func parseCredentials(oob []byte) keeperMsg {
	msg := keeperMsg{pid: -1, uid: -1}
	cmsgs, _ := unix.ParseSocketControlMessage(oob)
	for _, c := range cmsgs {
		if cred, err := unix.ParseUnixCredentials(&c); err == nil {
			msg.pid, msg.uid = int(cred.Pid), int(cred.Uid)
		} else if fds, err := unix.ParseUnixRights(&c); err == nil {
			msg.fds = append(msg.fds, fds...)
		}
	}
	return msg
}

// take takes a datagram from the sender msg names, with body: the sender
// is checked before the body is read, so a flood costs little.
func (k *keeper) take(msg keeperMsg, body []byte) {
	if !k.trusted(msg) {
		k.ignore(msg, "not an instance")
		return
	}
	msg.vars = make(map[string]string)
	for _, line := range strings.Split(string(body), "\n") {
		if name, value, ok := strings.Cut(line, "="); ok {
			msg.vars[name] = value
		}
	}
	k.message(msg)
}

// message takes a notification from an instance.
func (k *keeper) message(msg keeperMsg) {
	if v, ok := msg.vars[keeperSockets]; ok && !k.stopping {
		closeAll(k.stored)
		k.stored, k.metas, k.storedBy = msg.fds, strings.Split(v, ","), msg.pid
		msg.fds = nil
	}
	closeAll(msg.fds)
	if v, ok := msg.vars[keeperExited]; ok {
		k.reportedExit(msg.pid, v)
	}
	pid := msg.pid
	if v, ok := msg.vars["MAINPID"]; ok {
		named, err := strconv.Atoi(v)
		if err != nil || !k.alive(named) {
			k.ignore(msg, "MAINPID="+v+" is no process")
			return
		}
		pid = named
		k.instances[pid] = true // a successor
		if pid != msg.pid {
			k.handedBy[pid] = msg.pid
		}
	}
	switch {
	case msg.vars["READY"] == "1":
		k.ready(pid)
	case msg.vars["MAINPID"] != "":
		k.serving = pid // a predecessor's commit
	}
	if msg.vars["STOPPING"] == "1" && msg.pid == k.serving {
		k.stop()
	}
}

// reportedExit takes the report of an instance, from, that its successor,
// the serving instance, ended: the keeper did not reap it.
func (k *keeper) reportedExit(from int, v string) {
	p, s, _ := strings.Cut(v, ":")
	pid, perr := strconv.Atoi(p)
	status, serr := strconv.Atoi(s)
	if perr != nil || serr != nil || pid != k.serving || k.handedBy[pid] != from || unix.Kill(pid, 0) != unix.ESRCH {
		return
	}
	k.forget(pid)
	k.exited(pid, status)
}

// ignore drops msg, and says so at most once a second: a flood of
// datagrams must not flood the log.
func (k *keeper) ignore(msg keeperMsg, why string) {
	closeAll(msg.fds)
	k.ignored++
	if time.Since(k.ignoredAt) < time.Second {
		return
	}
	k.logf("ignored %d notification(s), the last from pid %d, uid %d: %s", k.ignored, msg.pid, msg.uid, why)
	k.ignored, k.ignoredAt = 0, time.Now()
}

// trusted reports whether msg comes from an instance: a pid the keeper
// knows, of this user (or root), alive and its descendant, or just reaped.
// The socket's name is not a secret, and a subprocess of the application
// is no instance.
func (k *keeper) trusted(msg keeperMsg) bool {
	if msg.uid != os.Geteuid() && msg.uid != 0 || !k.instances[msg.pid] {
		return false
	}
	if k.reaped[msg.pid] || k.descends(msg.pid) {
		return true
	}
	k.forget(msg.pid) // gone, and reaped by its parent
	return false
}

// descends reports whether pid is a live descendant of the keeper.
func (k *keeper) descends(pid int) bool {
	for i := 0; pid > 1 && i < 1<<16; i++ {
		pid = parentOf(pid)
		if pid == os.Getpid() {
			return true
		}
	}
	return false
}

// alive reports whether pid, which an instance named, can be one: a
// process, other than the keeper, that exists or was just reaped.
func (k *keeper) alive(pid int) bool {
	if pid <= 0 || pid == os.Getpid() {
		return false
	}
	return k.reaped[pid] || unix.Kill(pid, 0) != unix.ESRCH
}

// parentOf returns the parent of pid, 0 if unknown.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// ready takes an instance's READY=1: it serves.
func (k *keeper) ready(pid int) {
	k.serving, k.readyAt = pid, time.Now()
	if pid == k.started {
		k.started = 0
	}
	k.respawn = nil // another serves: nothing to start
	if !k.served {
		k.served = true
		// systemd knows this process as the service's main pid.
		k.notify("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()))
	}
}

// signal handles a signal: SIGCHLD reaps, the others go to the instance
// that serves (or to the one starting).
func (k *keeper) signal(sig syscall.Signal) {
	if sig == syscall.SIGTERM || sig == syscall.SIGINT {
		k.stop()
	}
	k.checkServing() // a signal to a pid that ended could reach another process
	target := k.serving
	if target == 0 {
		target = k.started
	}
	if target != 0 {
		if k.descends(target) { // else it ended, or serves under a keeper of its own
			unix.Kill(target, sig)
		}
	} else if k.stopping {
		// Nothing runs (a crash's back-off): a stop as asked, not a failure.
		k.status, k.over = 0, true
	}
}

// stop marks the service as stopping. The copies of the sockets go at
// once: a connection that came now would wait in a backlog that nobody
// accepts from, and be reset when the keeper exits, rather than refused.
func (k *keeper) stop() {
	k.stopping = true
	k.respawn = nil
	closeAll(k.stored)
	k.stored, k.metas = nil, nil
}

// reap collects every child that ended. What an instance sent before it
// ended is in the socket's queue: the loop reads the queue first (a flood
// cannot hold this up, the queue being bounded), then settles the ends.
func (k *keeper) reap() {
	k.reaped = make(map[int]bool)
	var batch []exited
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			break
		}
		batch = append(batch, exited{pid, ws})
		k.reaped[pid] = true
	}
	if len(batch) > 0 {
		k.drain(queueLimit())
	}
	k.reaped = nil
	for _, e := range batch {
		k.forget(e.pid)
		k.exited(e.pid, exitStatus(e.ws))
	}
	if len(batch) > 0 {
		k.checkServing()
	}
	if len(batch) > 0 && k.serving != 0 && !k.over && k.instancesGone() {
		// The instance that serves is none of this keeper's: one started
		// beside took over, under a keeper of its own.
		k.logf("pid %d, not started here, serves now: leaving the service to it", k.serving)
		k.status, k.over = 0, true
	}
}

// checkServing takes the end of a serving instance that another process
// reaped: its predecessor, which started it. While that one lives, it may
// start a replacement (during PassConns), so the keeper waits for its end,
// connections waiting in the backlog meanwhile. The status is unknown: it
// counts as a crash, unless the service stops.
func (k *keeper) checkServing() {
	pid := k.serving
	if pid == 0 || k.over || unix.Kill(pid, 0) != unix.ESRCH {
		return
	}
	if pred := k.handedBy[pid]; pred != 0 && k.descends(pred) {
		return
	}
	k.forget(pid)
	k.serving = 0
	if k.stopping {
		k.over = true
		return
	}
	k.logf("instance pid %d ended, reaped by its predecessor", pid)
	k.crashed(pid, 1, time.Since(k.readyAt) < quickCrash)
}

// forget forgets the instance pid, which has ended.
func (k *keeper) forget(pid int) {
	delete(k.instances, pid)
	delete(k.handedBy, pid)
}

// instancesGone reports whether no instance of the keeper's runs. The
// application's own children that outlive them do not hold the keeper:
// as pid 1 its exit ends them, else they are reparented as orphans are.
func (k *keeper) instancesGone() bool {
	for pid := range k.instances {
		if !k.descends(pid) {
			k.forget(pid)
		}
	}
	return len(k.instances) == 0
}

// exitStatus is a shell's: the exit status, or 128 and the signal.
func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// exited takes the end of a child: of the serving instance, that of the
// service if it stopped (or exited 0), else a crash; of an instance not
// yet ready, a failed start. Other children (predecessors that drained)
// are only reaped.
func (k *keeper) exited(pid, status int) {
	switch pid {
	case k.serving:
		k.serving = 0
		if k.stopping || status == 0 {
			k.status, k.over = status, true
			return
		}
		k.crashed(pid, status, time.Since(k.readyAt) < quickCrash)
	case k.started:
		k.started = 0
		if k.stopping || !k.served {
			if !k.stopping {
				k.logf("the first instance, pid %d, ended with status %d before it was ready: the service could not start", pid, status)
			}
			k.status, k.over = status, true
			return
		}
		k.crashed(pid, status, true)
	}
}

// quickCrash is how soon after its Ready an instance that dies counts as
// one that cannot serve (a panic at its first request), not as a crash of
// a service that ran: then the keeper backs off.
const quickCrash = 500 * time.Millisecond

// crashed starts another instance after one died: at once after a crash
// of an instance that had served a while, later and later after each
// quick one (100 ms, doubling to 30 s), never in a tight loop.
func (k *keeper) crashed(pid, status int, quick bool) {
	if k.serving != 0 {
		return // another serves
	}
	k.status = status
	if quick {
		k.delay = min(max(2*k.delay, 100*time.Millisecond), 30*time.Second)
	} else {
		k.delay = 0
	}
	k.logf("instance pid %d died (status %d) outside a hand-over: starting another in %v", pid, status, k.delay)
	k.respawn = time.After(k.delay)
}

// restartService starts an instance that takes over the copies of the
// sockets, this process acting as its predecessor.
func (k *keeper) restartService() {
	if k.serving != 0 || k.stopping {
		return
	}
	var dups []int
	defer func() { closeAll(dups) }()
	for _, fd := range k.stored {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			k.logf("restarting the service: %v", os.NewSyscallError("fcntl", err))
			k.crashed(0, k.status, true)
			return
		}
		dups = append(dups, dup)
	}
	if err := k.start(k.metas, dups); err != nil {
		k.logf("restarting the service: %v", err)
		k.crashed(0, k.status, true)
	}
}

// start starts an instance: the first with nothing (it takes over from an
// instance serving at Config.Socket, or is the first), or one given the
// sockets of metas at exec.
func (k *keeper) start(metas []string, fds []int) error {
	// A process group of their own: a signal a terminal sends the keeper's
	// group (Ctrl-C, a hang-up) reaches the serving instance once, by the
	// keeper, not twice.
	sys := &syscall.SysProcAttr{Setpgid: true}
	if metas == nil {
		return k.startFirst(sys)
	}
	// Its predecessor is the instance that died: the start lock names it
	// as the last that got ready.
	pid, conn, err := execSuccessor(k.exe, k.env, k.storedBy, metas, fds, sys)
	if err != nil {
		return err
	}
	k.started = pid
	k.instances[pid] = true
	go k.commit(conn, pid)
	return nil
}

// startFirst starts the first instance, with nothing but the sockets
// systemd passed, if it did.
func (k *keeper) startFirst(sys *syscall.SysProcAttr) error {
	files := []uintptr{0, 1, 2}
	for fd := 3; fd < 3+k.nActive; fd++ {
		files = append(files, uintptr(fd))
	}
	pid, err := syscall.ForkExec(k.exe, os.Args, &syscall.ProcAttr{Env: slices.Concat(k.env, k.activated), Files: files, Sys: sys})
	if err != nil {
		return &os.PathError{Op: "fork/exec", Path: k.exe, Err: err}
	}
	// The instance has them now, and sends its copies at Ready.
	for fd := 3; fd < 3+k.nActive; fd++ {
		unix.Close(fd)
	}
	k.activated, k.nActive = nil, 0
	k.started = pid
	k.instances[pid] = true
	return nil
}

// commit answers the ready message of an instance the keeper started with
// the sockets, as a predecessor would; one not ready within ReadyTimeout
// is killed.
func (k *keeper) commit(conn *net.UnixConn, pid int) {
	defer conn.Close()
	wait := k.cfg.ReadyTimeout
	if wait <= 0 {
		wait = defaultReadyTimeout
	}
	conn.SetReadDeadline(time.Now().Add(wait))
	status, _, err := readReply(conn)
	switch {
	case err == nil && status == statusReady:
		writeReply(conn, time.Now().Add(DefaultTimeout), statusOK, "")
	case errors.Is(err, os.ErrDeadlineExceeded):
		refuse(conn, "not ready in time")
		k.timedOut <- pid
	}
}

// notify tells systemd, if it started the keeper.
func (k *keeper) notify(state string) {
	if err := notify(state); err != nil {
		k.logf("telling systemd: %v", err)
	}
}

func (k *keeper) logf(format string, args ...any) {
	if k.cfg.ErrorLog != nil {
		k.cfg.ErrorLog.Printf("keeper: "+format, args...)
	}
}

// tellKeeperExit tells the keeper, if this instance is kept, that its
// successor pid, the serving instance, which it reaped, ended. It reports
// whether it told.
func tellKeeperExit(pid int, st *os.ProcessState) bool {
	if keeperAddr() == "" {
		return false
	}
	status := 1 // unknown: Wait failed
	if st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok {
			status = exitStatus(unix.WaitStatus(ws))
		}
	}
	return notify(keeperExited+"="+strconv.Itoa(pid)+":"+strconv.Itoa(status)) == nil
}

// tellKeeper sends the keeper, if this instance is kept, a copy of the
// sockets it hands on, to start another instance with if this one dies.
func tellKeeper(snap *snapshot) error {
	addr := keeperAddr()
	if addr == "" {
		return nil
	}
	var fds []int
	defer func() { closeAll(fds) }()
	// Not the state: the successor of a crash starts without.
	keep := *snap
	keep.state = nil
	metas, err := dupHandedOn(&keep, &fds)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	msg := []byte(keeperSockets + "=" + strings.Join(metas, ","))
	return os.NewSyscallError("sendmsg", unix.Sendmsg(fd, msg, unix.UnixRights(fds...), &unix.SockaddrUnix{Name: addr}, 0))
}
