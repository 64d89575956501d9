//go:build linux

package graceful

import (
	"cmp"
	"errors"
	"log"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The state machine's cases that two instances in this process can show,
// and those of Restart, whose successor is the test binary as "app".

// A successor that serves but hangs before its Ready is given up on by its
// predecessor (ReadyTimeout): the listener Listen handed it stops
// accepting, so it keeps no share of the traffic, and its Ready fails.
func TestAbandonedSuccessorStopsAccepting(t *testing.T) {
	sock := sockPath(t)
	var plog logBuf
	pred, pln := servingFirst(t, Config{Socket: sock, ReadyTimeout: 200 * time.Millisecond, ErrorLog: log.New(&plog, "", 0)})
	succ, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Stop()
	ln, err := succ.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if ln.Addr().String() != pln.Addr().String() {
		t.Fatalf("the successor listens on %v, not on its predecessor's %v", ln.Addr(), pln.Addr())
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
			err = errors.New("accepted a connection")
		}
		accepted <- err
	}()
	plog.waitFor(t, "not ready after")
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("the abandoned successor's Accept: %v, want net.ErrClosed", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the abandoned successor still accepts")
	}
	if err := succ.Ready(); !errors.Is(err, ErrAborted) {
		t.Errorf("the abandoned successor's Ready: %v, want ErrAborted", err)
	}
	select {
	case <-pred.Done():
		t.Error("the predecessor is done, though its successor was abandoned")
	default:
	}
}

// startRestart runs Restart of inst in a goroutine whose error the
// returned channel receives, once its successor, the test binary as "app"
// doing what, exists; it returns that successor's pid too.
func startRestart(t *testing.T, inst *Instance, sock, what string) (<-chan error, int) {
	t.Helper()
	t.Setenv(childEnv, "app")
	t.Setenv("GRACEFUL_TEST_APP", what)
	t.Setenv("GRACEFUL_TEST_SOCK", sock)
	before := childPids(t, os.Getpid())
	errc := make(chan error, 1)
	go func() { errc <- inst.Restart() }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		for _, pid := range childPids(t, os.Getpid()) {
			if !slices.Contains(before, pid) {
				return errc, pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("Restart started no successor")
		}
	}
}

// Stop calls off a Restart whose successor hangs at once, not after
// ReadyTimeout: the successor is killed, Restart fails with ErrAborted.
func TestStopCallsOffHungRestart(t *testing.T) {
	sock := sockPath(t)
	inst, err := Start(Config{Socket: sock, ReadyTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Ready(); err != nil {
		t.Fatal(err)
	}
	errc, pid := startRestart(t, inst, sock, "hang")
	stopped := make(chan struct{})
	go func() {
		inst.Stop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("Stop waits for the hung successor")
	}
	if err := <-errc; !errors.Is(err, ErrAborted) {
		t.Errorf("Restart: %v, want ErrAborted", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the hung successor, pid %d, lives on after Stop: kill(0) says %v", pid, err)
	}
}

// A Restart while another waits for a hung successor calls it off: the
// hung one is killed, the earlier Restart fails, and the newer successor
// takes over at once.
func TestRestartSupersedes(t *testing.T) {
	sock := sockPath(t)
	inst := readyFirst(t, Config{Socket: sock, ReadyTimeout: time.Hour})
	hungErr, hung := startRestart(t, inst, sock, "hang")
	goodErr, good := startRestart(t, inst, sock, "ready")
	t.Cleanup(func() { syscall.Kill(good, syscall.SIGKILL) })
	if err := <-goodErr; err != nil {
		t.Fatalf("the newer Restart: %v", err)
	}
	if err := <-hungErr; !errors.Is(err, ErrAborted) || !strings.Contains(err.Error(), "superseded") {
		t.Errorf("the earlier Restart: %v, want ErrAborted, superseded", err)
	}
	if got := inst.SuccessorPID(); got != good {
		t.Errorf("SuccessorPID() = %d, want the newer successor's %d", got, good)
	}
	if err := syscall.Kill(hung, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the hung successor, pid %d, lives on: kill(0) says %v", hung, err)
	}
}

// Config.ListenConfig makes the sockets Listen creates: an option its
// Control sets is on the socket the successor takes over.
func TestListenConfig(t *testing.T) {
	sock := sockPath(t)
	lc := &net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return cmp.Or(err, serr)
	}}
	servingFirst(t, Config{Socket: sock, ListenConfig: lc})
	succ, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Stop()
	ln, err := succ.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT) })
	if gerr != nil || v != 1 {
		t.Errorf("SO_REUSEPORT on the socket taken over: %d, %v; want 1", v, gerr)
	}
	if err := succ.Ready(); err != nil {
		t.Fatal(err)
	}
}

// A Restart through a wrapper that starts the program in the background
// and exits: the wrapper's exit ends the link the loop counts, and the
// program's commit does not end it again (the count went to -1, so a Stop
// could finish with links still running, their last events lost).
func TestRestartWrapperExitsFirst(t *testing.T) {
	sock := sockPath(t)
	wrapper := filepath.Join(t.TempDir(), "wrapper")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\n"+os.Args[0]+" \"$@\" &\nexit 0\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	old := startedAs
	startedAs = wrapper
	defer func() { startedAs = old }()
	for _, kv := range childEnvFor("app") {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("GRACEFUL_TEST_APP", "ready")
	t.Setenv("GRACEFUL_TEST_SOCK", sock)
	in := readyFirst(t, Config{Socket: sock})
	if err := in.Restart(); err != nil {
		t.Fatal(err)
	}
	if pid := in.SuccessorPID(); pid > 0 {
		t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	}
	// The loop's links end as the hand-over socket closes: poll, as
	// nothing tells.
	var links int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		in.call(func(m *machine) { links = m.links })
		if links <= 0 {
			break
		}
	}
	if links != 0 {
		t.Errorf("%d links once every link ended, want 0", links)
	}
}

// A Ready that fails here (the pid file cannot be written) closes the
// listeners Listen returned, as a refusal does: the predecessor serves on,
// and this instance keeps no share of the traffic.
func TestReadyFailureClosesListeners(t *testing.T) {
	sock := sockPath(t)
	pred, pln := servingFirst(t, Config{Socket: sock})
	pidPath := filepath.Join(t.TempDir(), "pid")
	succ, err := Start(Config{Socket: sock, PIDFile: pidPath})
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Stop()
	ln, err := succ.Listen("tcp", pln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// A directory where the pid file is first written fails it, as root too.
	if err := os.MkdirAll(filepath.Join(tempPIDFile(pidPath, os.Getpid()), "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := succ.Ready(); err == nil {
		t.Fatal("Ready succeeded")
	}
	select {
	case <-pred.Done():
		t.Fatal("the predecessor handed over")
	default:
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after a failed Ready: %v, want net.ErrClosed", err)
	}
}

// A ListenConfig.Control that panics does so in the caller of Listen, who
// may recover it; the instance works on (it panicked on the loop, which
// ended the process).
func TestListenControlPanics(t *testing.T) {
	boom := true
	lc := &net.ListenConfig{Control: func(string, string, syscall.RawConn) error {
		if boom {
			panic("user bug")
		}
		return nil
	}}
	in := readyFirst(t, Config{Socket: sockPath(t), ListenConfig: lc})
	before := countFds(t)
	func() {
		defer func() {
			if r := recover(); r != "user bug" {
				t.Errorf("recovered %v, want the Control's panic", r)
			}
		}()
		in.Listen("tcp", "127.0.0.1:0")
	}()
	if n := countFds(t); n != before {
		t.Errorf("%d descriptors open after the panic, %d before: net does not close the socket of a Control that panics", n, before)
	}
	boom = false // the address is free again
	ln, err := in.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

// No goroutine of either instance outlives their Stops after a hand-over.
func TestNoGoroutineOutlivesStop(t *testing.T) {
	before := runtime.NumGoroutine()
	sock := sockPath(t)
	pred := readyFirst(t, Config{Socket: sock})
	succ, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	if err := succ.Ready(); err != nil {
		t.Fatal(err)
	}
	<-pred.Done()
	pred.Stop()
	succ.Stop()
	// Goroutines end soon after the Stops return: poll.
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(3 * time.Second); n > before && time.Now().Before(deadline); n = runtime.NumGoroutine() {
		time.Sleep(20 * time.Millisecond)
	}
	if n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after Stop, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// While a Listen makes the socket for an address, on its caller's
// goroutine, another Listen of that address fails: it once unlinked the
// first one's Unix socket file as stale, and the first's Listen returned a
// listener no client could reach.
func TestListenSameAddressAtOnce(t *testing.T) {
	inControl, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	lc := &net.ListenConfig{Control: func(string, string, syscall.RawConn) error {
		if calls.Add(1) == 1 { // the first Listen's
			inControl <- struct{}{}
			<-release
		}
		return nil
	}}
	in := readyFirst(t, Config{Socket: sockPath(t), ListenConfig: lc})
	path := filepath.Join(t.TempDir(), "app.sock")
	first := make(chan error, 1)
	go func() {
		ln, err := in.Listen("unix", path)
		if err == nil {
			defer ln.Close()
			var c net.Conn
			if c, err = net.Dial("unix", path); err == nil {
				c.Close()
			}
		}
		first <- err
	}()
	<-inControl
	if _, err := in.Listen("unix", path); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("a second Listen while the first makes the socket: %v, want EADDRINUSE", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("the first Listen, then a dial: %v", err)
	}
}

// A successor that listens on the predecessor's address spelled otherwise
// ("localhost:P" for "127.0.0.1:P") takes the predecessor's socket; a
// second Listen of that spelling finds it taken.
func TestListenSpelledOtherwise(t *testing.T) {
	sock := sockPath(t)
	_, pln := servingFirst(t, Config{Socket: sock})
	succ, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Stop()
	addr := "localhost:" + strconv.Itoa(pln.Addr().(*net.TCPAddr).Port)
	ln, err := succ.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if !sameSocket(t, ln, pln) {
		t.Errorf("Listen(%q) made a new socket, not the predecessor's", addr)
	}
	if _, err := succ.Listen("tcp", addr); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Errorf("a second Listen(%q): %v, want already listening", addr, err)
	}
}

// sameSocket reports whether two listeners are one socket (device and inode).
func sameSocket(t *testing.T, a, b net.Listener) bool {
	t.Helper()
	ino := func(l net.Listener) uint64 {
		f, err := l.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	return ino(a) == ino(b)
}
