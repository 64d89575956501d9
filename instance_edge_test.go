//go:build linux

package graceful

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A Start that fails after the hand-over socket arrived closes it with
// everything else it received.
func TestStartFailureClosesHandover(t *testing.T) {
	noLeaks(t)
	dir := sockPath(t)
	os.Mkdir(dir, 0o700)
	sock := filepath.Join(dir, "s")
	hsock := filepath.Join(dir, "h")
	hln, err := net.Listen("unix", hsock)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv := &Server{Handler: Handler(func(_ net.Conn, w *ResponseWriter) error {
		if err := writeObject(w, hln, Meta{"kind": kindHandover}); err != nil {
			return err
		}
		return writeObject(w, f, Meta{"kind": "bogus"})
	})}
	ln, err := listenUnix(sock, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	_, err = Start(Config{Socket: sock})
	t.Logf("Start: %v", err)
	if err == nil {
		t.Fatal("Start succeeded")
	}
	srv.Close()
	hln.(*net.UnixListener).SetUnlinkOnClose(false)
	hln.Close()
	// Nobody should hold the hand-over socket now.
	c, err := net.DialTimeout("unix", hsock, time.Second)
	if err == nil {
		c.Close()
		t.Errorf("the hand-over socket still accepts connections after Start failed and the server closed it")
	}
}

// A listener the application closed no longer holds its address: Listen
// opens a new one.
func TestListenAfterClose(t *testing.T) {
	sock := sockPath(t)
	inst, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Stop()
	ln, err := inst.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	ln2, err := inst.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Errorf("Listen after closing the previous listener: %v", err)
	} else {
		ln2.Close()
	}
}

// Stop while a Restart starts its successor (example/main.go does this on
// SIGTERM): Restart fails, Stop returns, no successor lives on.
func TestStopDuringRestart(t *testing.T) {
	t.Setenv(childEnv, "idle")
	t.Setenv("GORACE", os.Getenv("GORACE")+" atexit_sleep_ms=0")
	counts := map[string]int{}
	var cmu sync.Mutex
	defer func() { t.Logf("%v", counts) }()
	for i := range sweep(30, 200) {
		sock := sockPath(t)
		inst, err := Start(Config{Socket: sock})
		if err != nil {
			t.Fatal(err)
		}
		if err := inst.Ready(); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := inst.Restart()
			if err == nil {
				t.Errorf("Restart: nil")
			}
			k := "state"
			if !errors.Is(err, ErrInstanceState) {
				k = err.Error()
				k = k[strings.LastIndex(k, ":")+1:]
			}
			cmu.Lock()
			counts[k]++
			cmu.Unlock()
		}()
		time.Sleep(time.Duration(i%30) * 100 * time.Microsecond) // the scenario: Stop 0 to 2.9 ms into Restart
		inst.Stop()
		wg.Wait()
		if kids := childPids(t, os.Getpid()); len(kids) != 0 {
			t.Fatalf("round %d: Stop and Restart returned, and the successors %v live on", i, kids)
		}
	}
}

// childPids lists the processes whose parent is parent.
func childPids(t *testing.T, parent int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(parent) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// A successor that exits with status 0 before its Ready: Restart says so.
func TestRestartSuccessorExitsZero(t *testing.T) {
	t.Setenv(childEnv, "idle")
	t.Setenv("GRACEFUL_TEST_EXIT0", "1")
	t.Setenv("GORACE", os.Getenv("GORACE")+" atexit_sleep_ms=0")
	inst := readyFirst(t, Config{Socket: sockPath(t)})
	err := inst.Restart()
	t.Logf("Restart: %v", err)
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready: exit status 0") {
		t.Errorf("Restart: %v, want an exit before Ready with status 0", err)
	}
}

// openGate lets the restarter pid, a successor, go on to its Ready.
func openGate(t *testing.T, dir string, pid int) {
	t.Helper()
	openFIFO(t, filepath.Join(dir, "gate."+strconv.Itoa(pid)))
}

// openFIFO opens the FIFO path for writing, and closes it: a process that
// waits to open it for reading goes on.
func openFIFO(t *testing.T, path string) {
	t.Helper()
	opened := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		opened <- err
	}()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("nobody opened %s for reading", path)
	}
}

// readUntil reads lines from c until one starts with prefix.
func readUntil(t *testing.T, c *child, prefix string) string {
	t.Helper()
	for {
		l := c.line()
		t.Logf("  | %s", l)
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
}

// A Restart's successor waits for the start lock while a successor started
// beside takes over: that one commits, the Restart's own child is refused and
// killed, and only one instance serves.
func TestRestartLosesToSuccessorBeside(t *testing.T) {
	dir := sockPath(t)
	os.Mkdir(dir, 0o700)
	sock := filepath.Join(dir, "s")
	p := startChild(t, "restarter", sock, dir)
	ppid := p.cmd.Process.Pid
	l := readUntil(t, p, fmt.Sprintf("%d ready <nil>", ppid))
	addr := strings.Fields(l)[3]
	b := startChild(t, "restarter", sock, dir)
	bpid := b.cmd.Process.Pid
	readUntil(t, b, fmt.Sprintf("%d started inherited=true", bpid))
	fmt.Fprintln(p.in, "restart") // C forks, waits for the start lock
	var kids []int
	for deadline := time.Now().Add(10 * time.Second); len(kids) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no child of the Restart")
		}
		kids = childPids(t, ppid)
	}
	waitOpen(t, kids[0], sock+".lock")
	openGate(t, dir, bpid)
	readUntil(t, b, fmt.Sprintf("%d ready <nil>", bpid))
	// Restart returns once its child is gone: nil, since a successor is
	// ready.
	for restarted, done := false, false; !restarted || !done; {
		l := p.line()
		t.Logf("  | %s", l)
		if strings.HasPrefix(l, fmt.Sprintf("%d restart ", ppid)) {
			restarted = true
			if l != fmt.Sprintf("%d restart <nil>", ppid) {
				t.Errorf("Restart: %s", l)
			}
		}
		if strings.HasPrefix(l, fmt.Sprintf("%d done ", ppid)) {
			done = true
			if l != fmt.Sprintf("%d done successor=%d", ppid, bpid) {
				t.Errorf("Done: %s", l)
			}
		}
	}
	fmt.Fprintln(p.in, "exit")
	// The child wrote to the same pipe and is gone: all is read at EOF.
	rest, _ := io.ReadAll(p.out)
	p.wait()
	out := string(rest)
	t.Logf("the rest of the output:\n%s", out)
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, " ready <nil>") {
			t.Errorf("the Restart's child says it serves too: %s", l)
		}
	}
	seen := map[string]int{}
	for i := 0; i < 40; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		seen[strings.TrimSpace(line)]++
	}
	pf, _ := os.ReadFile(filepath.Join(dir, "pid"))
	if seen[strconv.Itoa(bpid)] != 40 || strings.TrimSpace(string(pf)) != strconv.Itoa(bpid) {
		t.Errorf("answers by pid: %v, pid file %q; want all from %d", seen, pf, bpid)
	}
}

// The predecessor is slow to commit and the successor slow to read its
// answer: once the predecessor committed, the successor serves.
func TestReadyWaitsForSlowCommit(t *testing.T) {
	sock := sockPath(t)
	inst := readyFirst(t, Config{Socket: sock})
	c := startChild(t, "late", sock)
	c.expect("started")
	waitHanded(t, inst)
	release := inst.blockLoop(t) // the predecessor is slow to commit
	fmt.Fprintln(c.in, "go")
	// The predecessor has read the ready message once the goroutine that
	// waited for it posts it to the loop.
	waitGoroutine(t, "graceful.(*Instance).serveSuccessor(", "graceful.(*Instance).post(")
	// The scenario: the commit comes after the successor's Timeout of
	// 250 ms, which waits for it all the same...
	time.Sleep(300 * time.Millisecond)
	stopProcess(t, c.cmd.Process.Pid) // ... and reads it late
	release()
	select {
	case <-inst.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("predecessor did not commit")
	}
	c.cmd.Process.Signal(syscall.SIGCONT)
	l := c.line()
	t.Logf("predecessor committed to pid %d; successor: %s", inst.SuccessorPID(), l)
	if l != "ready <nil>" {
		t.Errorf("the predecessor committed (Done closed, Successor()=%d) but the successor's Ready failed: nobody serves", inst.SuccessorPID())
	}
}

// PassConns fails (the successor stopped before acknowledging): the
// connections are still the caller's, and the successor serves none.
func TestPassConnsFailureKeepsConns(t *testing.T) {
	sock := sockPath(t)
	inst, err := Start(Config{Socket: sock, Timeout: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Stop()
	ln, err := inst.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := inst.Ready(); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, "passee", sock)
	c.expect("ready")
	<-inst.Done()
	client, server := connectTo(t, ln)
	stopProcess(t, c.cmd.Process.Pid)
	err = inst.PassConns([]PassedConn{{Conn: server, Meta: Meta{"k": "v"}}})
	c.cmd.Process.Signal(syscall.SIGCONT)
	t.Logf("PassConns: %v", err)
	if err == nil {
		t.Fatal("PassConns succeeded with its successor stopped")
	}
	// "after a failure they are all still the caller's, open, and the
	// successor holds none": the predecessor serves it on.
	fmt.Fprintf(server, "predecessor %d\n", os.Getpid())
	if l := c.line(); !strings.HasPrefix(l, "acceptconn ") {
		t.Errorf("PassConns failed, yet the successor got a connection: %s", l)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	l, err := bufio.NewReader(client).ReadString('\n')
	if want := fmt.Sprintf("predecessor %d\n", os.Getpid()); l != want {
		t.Errorf("the client read %q (%v), want %q", l, err, want)
	}
}

// waitSuffix waits for a line that ends with suffix and returns its pid.
func (c *chain) waitSuffix(n int, suffix string) int {
	c.t.Helper()
	l := c.waitLine(n, suffix, func(l string) bool { return strings.HasSuffix(l, suffix) })
	pid, _ := strconv.Atoi(strings.Fields(l)[0])
	return pid
}

// The predecessor dies while its Restart's successor is on its way to
// Start (reparented): the successor, which holds every socket, serves.
func TestRestartPredecessorDiesEarly(t *testing.T) {
	c := newChain(t)
	c.installCopy()
	pid := c.startFirst()
	// The new binary waits, before it runs the program, until the test
	// opens the FIFO gate.
	gate := filepath.Join(c.dir, "gate")
	if err := unix.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	c.deploy(func(old string) string {
		return "echo \"$$ wrapper\"\n: <" + gate + "\nexec " + old + " \"$@\"\n"
	})
	n := c.mark()
	syscall.Kill(pid, syscall.SIGHUP)
	next := c.waitSuffix(n, " wrapper")
	syscall.Kill(pid, syscall.SIGKILL)
	waitExited(t, pid)
	openFIFO(t, gate)
	start := time.Now()
	ready, failed := strconv.Itoa(next)+" ready ", strconv.Itoa(next)+" start failed"
	l := c.waitLine(n, ready, func(l string) bool {
		return strings.HasPrefix(l, ready) || strings.HasPrefix(l, failed)
	})
	t.Logf("after %v:\n%s", time.Since(start).Round(time.Millisecond), c.output())
	if !strings.HasPrefix(l, ready+"127.") {
		t.Errorf("the Restart's successor, which holds every socket, did not serve when its predecessor died: %s", l)
	}
	syscall.Kill(next, syscall.SIGKILL)
}

// sockLinks lists the descriptors from 3 up of pid.
func sockLinks(pid int) []string {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	var out []string
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		if n < 3 {
			continue
		}
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if strings.HasPrefix(l, "socket:") {
			out = append(out, e.Name()+"->"+l)
		}
	}
	sort.Strings(out)
	return out
}

// The new binary is a wrapper that runs the program without exec, as a
// grandchild: it takes over, each socket once, none inheritable.
func TestRestartThroughWrapper(t *testing.T) {
	c := newChain(t)
	c.installCopy()
	pid := c.startFirst()
	c.deploy(func(old string) string { return old + " \"$@\"\n" })
	n := c.mark()
	syscall.Kill(pid, syscall.SIGHUP)
	next := c.readyAfter(map[int]bool{pid: true})
	c.waitFrom(n, pid, "restart ")
	// The successor is the program, not the wrapper that started it.
	if l := c.waitFrom(n, pid, "exit "); l != fmt.Sprintf("%d exit successor=%d <nil>", pid, next) {
		t.Errorf("the predecessor: %s; want its successor %d", l, next)
	}
	t.Logf("%s", c.output())
	links := sockLinks(next)
	t.Logf("sockets of the successor pid %d: %v", next, links)
	count := map[string]int{}
	for _, l := range links {
		count[strings.SplitN(l, "->", 2)[1]]++
	}
	for s, k := range count {
		if k > 1 {
			t.Errorf("%s open %d times in the successor", s, k)
		}
	}
	for _, l := range links {
		fd := strings.SplitN(l, "->", 2)[0]
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", next, fd))
		if errors.Is(err, fs.ErrNotExist) {
			continue // closed since it was listed: a connection's
		} else if err != nil {
			t.Fatal(err)
		}
		var flags uint64
		for _, f := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(f, "flags:"); ok {
				flags, _ = strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			}
		}
		if flags&syscall.O_CLOEXEC == 0 {
			t.Errorf("descriptor %s of the successor is inheritable (flags %o)", l, flags)
		}
	}
	c.stop(next)
}

// The new binary is a wrapper that starts the program in the background
// and exits 0 at once: Restart waits for the program's Ready all the same,
// and returns nil.
func TestRestartThroughDaemonizingWrapper(t *testing.T) {
	c := newChain(t)
	c.installCopy()
	pid := c.startFirst()
	c.deploy(func(old string) string { return old + " \"$@\" &\nexit 0\n" })
	n := c.mark()
	syscall.Kill(pid, syscall.SIGHUP)
	next := c.readyAfter(map[int]bool{pid: true})
	if l := c.waitFrom(n, pid, "restart "); l != strconv.Itoa(pid)+" restart <nil>" {
		t.Errorf("Restart through a wrapper that daemonizes: %s\n%s", l, c.output())
	}
	if l := c.waitFrom(n, pid, "exit "); l != fmt.Sprintf("%d exit successor=%d <nil>", pid, next) {
		t.Errorf("the predecessor: %s; want its successor %d", l, next)
	}
	c.stop(next)
}

// A socket-activated process that takes over from a running instance
// closes systemd's sockets it never claimed and unsets LISTEN_*.
func TestActivatedTakeOverClosesSystemdSockets(t *testing.T) {
	sock := sockPath(t)
	readyFirst(t, Config{Socket: sock})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, _ := ln.(*net.TCPListener).File()
	defer f.Close()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, os.Args[0], sock)
	cmd.ExtraFiles = []*os.File{f}
	c := startChildCmd(t, cmd, "sdsucc")
	l := c.line()
	t.Log(l)
	c.wait()
	if !strings.HasPrefix(l, "ready <nil> inherited=true ") {
		t.Fatalf("the activated successor did not take over: %s", l)
	}
	if !strings.Contains(l, "fd3=closed") {
		t.Errorf("systemd's socket is still open after Ready (the application never claimed it)")
	}
	if !strings.Contains(l, `LISTEN_PID="" LISTEN_FDS=""`) {
		t.Errorf("LISTEN_* still set after Start, for the successor's own children to misread")
	}
}

// A deploy that switches a symlink (current -> releases/N): Restart runs
// the new release.
func TestRestartFollowsSymlink(t *testing.T) {
	c := newChain(t)
	rel1 := filepath.Join(c.dir, "rel1")
	rel2 := filepath.Join(c.dir, "rel2")
	os.Mkdir(rel1, 0o700)
	os.Mkdir(rel2, 0o700)
	data, _ := os.ReadFile(os.Args[0])
	os.WriteFile(filepath.Join(rel1, "app"), data, 0o700)
	current := filepath.Join(c.dir, "current")
	os.Symlink("rel1", current)
	c.exe = filepath.Join(current, "app")
	pid := c.startFirst()
	script := "#!/bin/sh\necho \"$$ new release\"\nexec " + filepath.Join(rel1, "app") + " \"$@\"\n"
	os.WriteFile(filepath.Join(rel2, "app"), []byte(script), 0o700)
	os.Remove(current)
	os.Symlink("rel2", current)
	n := c.mark()
	syscall.Kill(pid, syscall.SIGHUP)
	next := c.readyAfter(map[int]bool{pid: true})
	c.waitFrom(n, pid, "restart ")
	if !strings.Contains(c.output(), fmt.Sprintf("%d new release", next)) {
		t.Errorf("Restart ran the old release, not %s (now %s):\n%s", c.exe, filepath.Join(rel2, "app"), c.output())
	}
	c.stop(next)
}

// An abstract Config.Socket has no directory for the start lock beside it:
// Start refuses it rather than put the lock in the working directory.
func TestStartRefusesAbstractSocket(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	name := fmt.Sprintf("@graceful-test-%d", os.Getpid())
	inst, err := Start(Config{Socket: name})
	if err == nil {
		inst.Stop()
		t.Fatalf("Start(%s) succeeded", name)
	}
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("Start(%s): %v, want EINVAL", name, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("Start left %d files in the working directory", len(ents))
	}
}

// A negative Config.Timeout means no bound, as for Client and Server: the
// take-over succeeds (in this process).
func TestNegativeTimeout(t *testing.T) {
	sock := sockPath(t)
	readyFirst(t, Config{Socket: sock})
	succ, err := Start(Config{Socket: sock, Timeout: -1})
	if err != nil {
		t.Fatalf("Start with Timeout -1: %v", err)
	}
	defer succ.Stop()
	if !succ.Inherited() {
		t.Error("the successor with Timeout -1 did not take over")
	}
	if err := succ.Ready(); err != nil {
		t.Errorf("Ready with Timeout -1: %v", err)
	}
}

// A third instance knows its predecessor by pid (SO_PEERCRED would name
// the first instance, which called listen): when the predecessor dies
// before the commit, the successor serves.
func TestPredecessorPIDThirdGeneration(t *testing.T) {
	dir := sockPath(t)
	os.Mkdir(dir, 0o700)
	sock := filepath.Join(dir, "s")
	first, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	ln, err := first.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := first.Ready(); err != nil {
		t.Fatal(err)
	}
	p2 := startChild(t, "restarter", sock, dir)
	pid2 := p2.cmd.Process.Pid
	readUntil(t, p2, fmt.Sprintf("%d started inherited=true predPID", pid2))
	openGate(t, dir, pid2)
	readUntil(t, p2, fmt.Sprintf("%d ready <nil>", pid2))
	<-first.Done() // the first instance drains, alive
	p3 := startChild(t, "restarter", sock, dir)
	pid3 := p3.cmd.Process.Pid
	readUntil(t, p3, fmt.Sprintf("%d started inherited=true predPID", pid3))
	p2.cmd.Process.Kill() // the predecessor crashes
	p2.cmd.Wait()
	start := time.Now()
	openGate(t, dir, pid3)
	l := readUntil(t, p3, fmt.Sprintf("%d ready ", pid3))
	t.Logf("after %v (first instance pid %d, predecessor pid %d)", time.Since(start).Round(time.Millisecond), os.Getpid(), pid2)
	if !strings.HasPrefix(l, fmt.Sprintf("%d ready <nil>", pid3)) {
		t.Errorf("the successor of a dead predecessor did not serve: %s", l)
	}
}

// readyFirst starts a first instance in this process, ready, and stops it
// when the test ends.
func readyFirst(t *testing.T, cfg Config) *Instance {
	t.Helper()
	inst, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inst.Stop)
	if err := inst.Ready(); err != nil {
		t.Fatal(err)
	}
	return inst
}

// servingFirst is readyFirst with a TCP listener on a port of its own:
// what a successor takes over.
func servingFirst(t *testing.T, cfg Config) (*Instance, net.Listener) {
	t.Helper()
	inst := readyFirst(t, cfg)
	ln, err := inst.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return inst, ln
}

// Stop while Restart starts its successor, which a wrapper runs without
// exec (so Restart's kill misses it): the successor is refused, and never
// serves after the instance that started it stopped.
func TestStopDuringRestartThroughWrapper(t *testing.T) {
	dir := sockPath(t)
	os.Mkdir(dir, 0o700)
	// The program is started by the path app, a symlink to the binary;
	// once it serves, app is switched to a wrapper, which Restart runs.
	app := filepath.Join(dir, "app")
	script := filepath.Join(dir, "wrapper")
	os.WriteFile(script, []byte("#!/bin/sh\necho \"$$ wrapper\"\n"+os.Args[0]+" \"$@\"\n"), 0o700)
	point := func(target string) {
		tmp := app + ".new"
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, app); err != nil {
			t.Fatal(err)
		}
	}
	counts := map[string]int{}
	wrapped := 0 // rounds where the wrapper ran
	defer func() { t.Logf("outcomes: %v; the wrapper ran in %d rounds", counts, wrapped) }()
	rounds := sweep(20, 150)
	for i := range rounds {
		point(os.Args[0])
		sock := filepath.Join(dir, "s"+strconv.Itoa(i))
		r, w, _ := os.Pipe()
		cmd := &exec.Cmd{Path: app, Args: []string{app, sock}, Stdout: w, Stderr: w}
		cmd.Env = append(os.Environ(), childEnv+"=wrapstop", "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0",
			"GRACEFUL_TEST_DELAY_US="+strconv.Itoa(i*150/rounds%40*75))
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		ppid := cmd.Process.Pid
		lines := make(chan string, 100)
		go func() {
			defer close(lines)
			for s := bufio.NewScanner(r); s.Scan(); {
				lines <- s.Text()
			}
		}()
		var out []string
		timeout := time.After(30 * time.Second)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				out = append(out, l)
				if strings.HasPrefix(l, strconv.Itoa(ppid)+" ready ") {
					point(script)
					fmt.Fprintln(in, "go")
				}
			case <-timeout:
				t.Fatalf("round %d: no EOF; output:\n%s", i, strings.Join(out, "\n"))
			}
		}
		r.Close()
		in.Close()
		cmd.Wait()
		var succServes string
		stopped, committed := false, false
		k := "no successor"
		for _, l := range out {
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			switch {
			case f[0] == strconv.Itoa(ppid) && f[1] == "stopped":
				stopped = true
			case f[0] == strconv.Itoa(ppid) && f[1] == "restart":
				k = l[strings.LastIndex(l, ":")+1:]
				// A commit before Stop: the successor serves rightly.
				committed = l == strconv.Itoa(ppid)+" restart <nil>"
			case f[0] != strconv.Itoa(ppid) && strings.Contains(l, " ready <nil> inherited=true"):
				succServes = l
			}
			if f[1] == "wrapper" {
				wrapped++
			}
		}
		if succServes != "" {
			k = "serves"
		}
		counts[k]++
		if stopped && succServes != "" && !committed {
			t.Fatalf("round %d: the instance was stopped during its Restart, yet its successor serves after it (%s):\n%s", i, succServes, strings.Join(out, "\n"))
		}
	}
	if wrapped == 0 {
		t.Error("Restart never ran the wrapper")
	}
}

// A successor that Restart started waits in Start for the start lock (another
// instance is between its Start and Ready), and its predecessor refuses it
// meanwhile: its Start returns, its Ready fails, and once it stopped the lock
// is free; no data race in the child (under -race).
func TestRefusedWhileWaitingForLock(t *testing.T) {
	dir := sockPath(t)
	os.Mkdir(dir, 0o700)
	sock := filepath.Join(dir, "s")
	outPath := filepath.Join(dir, "out")
	if err := unix.Mkfifo(outPath, 0o600); err != nil {
		t.Fatal(err)
	}
	raceLog := filepath.Join(dir, "race")
	inst, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Stop()
	if err := inst.Ready(); err != nil {
		t.Fatal(err)
	}
	// Another instance is between its Start and Ready: it holds the lock.
	other, err := lockFile(sock+".lock", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(childEnv, "lockwaiter")
	t.Setenv("GRACEFUL_TEST_SOCK", sock)
	t.Setenv("GRACEFUL_TEST_OUT", outPath)
	t.Setenv("GORACE", "atexit_sleep_ms=0 log_path="+raceLog)
	// What Restart does, without its kill of the child (as with a wrapper).
	var proc *os.Process
	inst.call(func(m *machine) { _, proc, err = m.startSuccessor(os.Args[0]) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		proc.Kill()
		proc.Wait()
	}()
	// The child's lines, through the FIFO, which it opens first.
	var out []string
	lines := make(chan string)
	go func() {
		defer close(lines)
		f, err := os.Open(outPath)
		if err != nil {
			return
		}
		defer f.Close()
		for s := bufio.NewScanner(f); s.Scan(); {
			lines <- s.Text()
		}
	}()
	waitOpen(t, proc.Pid, sock+".lock") // the child waits for the lock
	inst.Stop()                         // the predecessor refuses it
	other.unlock()                      // the other instance is done
	// Once the child says "stopped", nobody is between Start and Ready: a
	// new instance must get the lock at once.
	timeout := time.After(10 * time.Second)
	for stopped := false; !stopped; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the child ended its output without stopping:\n%s", strings.Join(out, "\n"))
			}
			out = append(out, l)
			stopped = l == "stopped"
		case <-timeout:
			t.Fatalf("the child did not stop:\n%s", strings.Join(out, "\n"))
		}
	}
	l, lerr := lockFile(sock+".lock", time.Second)
	if lerr == nil {
		l.unlock()
	}
	proc.Signal(syscall.SIGTERM)
	st, _ := proc.Wait()
	for l := range lines {
		out = append(out, l)
	}
	t.Logf("child (%v):\n%s", st, strings.Join(out, "\n"))
	if lerr != nil {
		t.Errorf("the refused successor stopped, yet still holds the start lock: %v", lerr)
	}
	ents, _ := filepath.Glob(raceLog + ".*")
	for _, e := range ents {
		rb, _ := os.ReadFile(e)
		s := bufio.NewScanner(strings.NewReader(string(rb)))
		var first []string
		for s.Scan() && len(first) < 40 {
			first = append(first, s.Text())
		}
		t.Errorf("race report in the child:\n%s", strings.Join(first, "\n"))
	}
}

// waitOpen waits until the process pid has the file path open. A process
// that has opened the start lock's file, which another holds, waits for
// the lock: lockFile opens it, then tries flock until it gets it.
func waitOpen(t *testing.T, pid int, path string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if n, _ := fdLinks(fmt.Sprintf("/proc/%d/fd", pid), path); n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never opened %s", pid, path)
		}
	}
}

// With Config.Timeout -1 ("no bound"), a successor whose predecessor
// crashed before the commit serves: a closed connection and a process
// about to end are its predecessor's death.
func TestNegativeTimeoutPredecessorDies(t *testing.T) {
	fails := 0
	rounds := sweep(10, 60)
	for i := 0; i < rounds; i++ {
		sock := sockPath(t)
		p := startChild(t, "negpred", sock)
		p.expect("ready <nil>")
		s := startChild(t, "negsucc", sock)
		s.expect("started")
		p.cmd.Process.Kill() // the predecessor crashes; not reaped yet
		waitExited(t, p.cmd.Process.Pid)
		fmt.Fprintln(s.in, "go")
		l := s.line()
		p.cmd.Wait()
		s.wait()
		if l != "ready <nil>" {
			fails++
			t.Logf("round %d: %s", i, l)
		}
	}
	if fails > 0 {
		t.Errorf("%d of %d successors of a crashed predecessor did not serve (Timeout -1)", fails, rounds)
	}
}

// A PassConns that fails after the successor acknowledged writes that the
// predecessor keeps the connections (without the words, a close followed by
// the predecessor's exit would read as its death, which leaves them to the
// successor): the successor, here with a predecessor that has ended, closes
// its copies and says why.
func TestPassedConnsKeptByPredecessor(t *testing.T) {
	inst := readyFirst(t, Config{Socket: sockPath(t)})
	noLeaks(t)
	// The predecessor, emulated: one connection passed and acknowledged,
	// then the refusal PassConns writes when it fails, and its end.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	pred, succ := socketPair(t)
	defer succ.Close()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sent := make(chan error, 1)
	go func() {
		defer pred.Close()
		err := transfer(context.Background(), pred, nil, time.Minute, func(s *ResponseWriter) error {
			return writeObject(s, f, Meta{"n": "1"})
		})
		refuse(pred, "the predecessor keeps them")
		sent <- err
	}()
	batch, err := inst.receiveConns(&Client{Timeout: -1}, &predecessor{conn: succ, pid: gone.Process.Pid})
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, errPassKept) {
		t.Errorf("receiveConns: %v with %d descriptors, want errPassKept", err, len(batch))
	}
}

// waitExited waits until the process pid has exited (it is a zombie until
// its parent reaps it).
func waitExited(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); alive(pid); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still runs", pid)
		}
	}
}

// stopProcess stops pid with SIGSTOP and waits until all its threads are
// stopped: the signal alone takes effect some time later.
func stopProcess(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		stopped := 0
		for _, task := range tasks {
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
			// pid (comm) state ...: comm may hold spaces and parentheses.
			if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); err == nil && len(f) > 0 && f[0] == "T" {
				stopped++
			}
		}
		if stopped == len(tasks) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d: %d of %d threads stopped after SIGSTOP", pid, stopped, len(tasks))
		}
	}
}

// A program whose argv[0] names another program ("true", found in PATH)
// restarts as itself.
func TestRestartArgv0NamesAnother(t *testing.T) {
	if _, err := exec.LookPath("true"); err != nil {
		t.Skip("no true in PATH")
	}
	cmd := &exec.Cmd{Path: os.Args[0], Args: []string{"true", sockPath(t)}}
	c := startChildCmd(t, cmd, "argv0")
	for {
		l := c.line()
		if strings.HasPrefix(l, "restart ") {
			if l != "restart <nil>" {
				t.Errorf("Restart: %s", l)
			}
			break
		}
	}
	c.wait()
}

// Stop calls off a PassConns that waits on its successor, even with no
// bound (Timeout -1): PassConns fails, and the connection is the caller's.
// The successor, in this process, takes no passed connection.
func TestStopCallsOffPassConns(t *testing.T) {
	sock := sockPath(t)
	inst, err := Start(Config{Socket: sock, Timeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := inst.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := inst.Ready(); err != nil {
		t.Fatal(err)
	}
	succ, err := Start(Config{Socket: sock, Timeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Stop()
	if err := succ.Ready(); err != nil {
		t.Fatal(err)
	}
	<-inst.Done()
	// The successor takes the first transfer and blocks delivering it; the
	// second waits for its hello for good.
	_, first := connectTo(t, ln)
	if err := inst.PassConns([]PassedConn{{Conn: first}}); err != nil {
		t.Fatal(err)
	}
	_, kept := connectTo(t, ln)
	passed := make(chan error, 1)
	go func() { passed <- inst.PassConns([]PassedConn{{Conn: kept}}) }()
	waitGoroutine(t, "[IO wait", "graceful.(*Instance).passConns(")
	stopped := make(chan struct{})
	go func() { inst.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("Stop blocked behind a PassConns")
	}
	if err := <-passed; err == nil {
		t.Error("PassConns called off by Stop succeeded")
	}
	if _, err := kept.Write([]byte("x")); err != nil {
		t.Errorf("the connection PassConns failed to pass: %v", err)
	}
}

// A successor started beside holds the start lock before its Ready; the
// running instance's Restart starts another, which waits its turn; the
// predecessor of both dies. The first serves, on its predecessor's death;
// the other, its turn come, finds that it was not first, and does not.
func TestSuccessorsOfDeadPredecessor(t *testing.T) {
	c := newChain(t)
	a := c.startFirst()
	x := exec.Command(os.Args[0], c.sock, c.addr)
	x.Env = childEnvFor("slowready")
	gate, err := x.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Close()
	c.startCmd(x)
	c.wait(x.Process.Pid, "started")
	syscall.Kill(a, syscall.SIGHUP)
	var kids []int
	for deadline := time.Now().Add(10 * time.Second); len(kids) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no child of the Restart")
		}
		kids = childPids(t, a)
	}
	waitOpen(t, kids[0], c.sock+".lock") // the Restart's child waits for the lock
	syscall.Kill(a, syscall.SIGKILL)
	fmt.Fprintln(gate, "go") // the successor beside gets ready
	if l := c.wait(x.Process.Pid, "ready"); !strings.HasPrefix(l, fmt.Sprintf("%d ready 127.", x.Process.Pid)) {
		t.Fatalf("the successor beside: %s", l)
	}
	child := strconv.Itoa(kids[0])
	l := c.waitLine(0, child+" ready or start failed", func(l string) bool {
		return strings.HasPrefix(l, child+" ready ") || strings.HasPrefix(l, child+" start failed")
	})
	if !strings.HasPrefix(l, child+" start failed") {
		t.Errorf("the Restart's child serves too: %s\n%s", l, c.output())
	}
	syscall.Kill(kids[0], syscall.SIGKILL)
}

// predPID returns the pid of the predecessor, 0 for none or once Ready
// succeeded.
func (in *Instance) predPID() (pid int) {
	in.call(func(m *machine) {
		if m.pred != nil {
			pid = m.pred.pid
		}
	})
	return pid
}

// waitHanded waits until the loop of inst knows that each pending
// successor holds its sockets.
func waitHanded(t *testing.T, inst *Instance) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		handed := true
		inst.call(func(m *machine) {
			for s := range m.pending {
				handed = handed && s.handed
			}
		})
		if handed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a successor was never handed the sockets")
		}
	}
}

// waitGoroutine waits until a goroutine of this process runs in each of
// the functions named (its stack names each).
func waitGoroutine(t *testing.T, funcs ...string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			all := true
			for _, f := range funcs {
				all = all && strings.Contains(g, f)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine in %q:\n%s", funcs, stacks)
		}
	}
}

// blockLoop holds the instance's loop until release is called, or the
// test ends: the instance is slow to decide.
func (in *Instance) blockLoop(t *testing.T) (release func()) {
	held, free := make(chan struct{}), make(chan struct{})
	go in.call(func(*machine) {
		close(held)
		<-free
	})
	<-held
	release = sync.OnceFunc(func() { close(free) })
	t.Cleanup(release) // before the cleanups that need the loop
	return release
}

// A successor that crashes while its predecessor drains is replaced by
// that predecessor, which keeps a copy of the sockets it handed: new
// connections are answered again at once, not only once a keeper or a
// manager notices. Nothing accepted before, until a restart by hand.
func TestSuccessorCrashWhilePredecessorDrains(t *testing.T) {
	c := newChain(t)
	first := c.startFirst()
	release := holdRequest(t, c.addr, first)
	n := c.mark()
	syscall.Kill(first, syscall.SIGHUP)
	second := c.readyAfter(map[int]bool{first: true})
	c.waitFrom(n, first, "restart ") // Restart has its answer: the commit
	syscall.Kill(second, syscall.SIGKILL)
	third := c.readyAfter(map[int]bool{first: true, second: true})
	l := startLoad(t, c.addr)
	l.answered(t, third, 20)
	l.check(t)
	if _, err := syscall.Getpgid(first); err != nil {
		t.Errorf("pid %d ended before the replacement served: %v", first, err)
	}
	release()
	c.waitFrom(n, first, "exit ")
	c.stop(third)
}
