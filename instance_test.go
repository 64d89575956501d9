//go:build linux

package graceful

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A chain is the instances of one test, their common output and a load.
type chain struct {
	t              *testing.T
	dir, sock, pid string
	addr           string
	exe            string // the binary, if not the test's own
	env            []string

	mu    sync.Mutex
	lines []string
	news  chan struct{} // closed and replaced at each line
	pids  map[int]bool  // every instance that said anything
	outW  *os.File
	cmds  []*exec.Cmd
	reads sync.WaitGroup
}

func newChain(t *testing.T, env ...string) *chain {
	dir := sockPath(t)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	c := &chain{t: t, dir: dir, sock: filepath.Join(dir, "s"), pid: filepath.Join(dir, "pid"),
		news: make(chan struct{}), pids: map[int]bool{}, env: env}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.outW = w
	c.reads.Add(1)
	go c.read(r)
	t.Cleanup(c.cleanup)
	return c
}

func (c *chain) read(r *os.File) {
	defer c.reads.Done()
	defer r.Close()
	s := bufio.NewScanner(r)
	for s.Scan() {
		c.mu.Lock()
		c.lines = append(c.lines, s.Text())
		if pid, err := strconv.Atoi(strings.Fields(s.Text() + " x")[0]); err == nil {
			c.pids[pid] = true
		}
		close(c.news)
		c.news = make(chan struct{})
		c.mu.Unlock()
	}
}

// start starts an instance; the first one of the chain picks a port.
func (c *chain) start() *exec.Cmd {
	addr := c.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	exe := c.exe
	if exe == "" {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe, c.sock, addr, c.pid)
	cmd.Env = append(os.Environ(), instanceEnv()...)
	cmd.Env = append(cmd.Env, c.env...)
	c.startCmd(cmd)
	return cmd
}

// startCmd starts cmd as an instance of the chain.
func (c *chain) startCmd(cmd *exec.Cmd) {
	cmd.Stdout, cmd.Stderr = c.outW, c.outW
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.cmds = append(c.cmds, cmd)
	c.mu.Unlock()
}

// startFirst starts the first instance and learns its address.
func (c *chain) startFirst() int {
	cmd := c.start()
	l := c.wait(cmd.Process.Pid, "ready ")
	c.addr = strings.Fields(l)[2]
	return cmd.Process.Pid
}

// wait returns the first line of pid that starts with what, after its pid.
func (c *chain) wait(pid int, what string) string {
	c.t.Helper()
	return c.waitFrom(0, pid, what)
}

// mark returns the number of lines so far, for waitFrom.
func (c *chain) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// waitFrom is wait for the lines from the nth on.
func (c *chain) waitFrom(n, pid int, what string) string {
	c.t.Helper()
	prefix := strconv.Itoa(pid) + " " + what
	return c.waitLine(n, prefix, func(l string) bool { return strings.HasPrefix(l, prefix) })
}

// waitLine waits for a line from the nth on that matches, what describing
// it for the failure, and returns it.
func (c *chain) waitLine(n int, what string, match func(string) bool) string {
	c.t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		c.mu.Lock()
		for _, l := range c.lines[n:] {
			if match(l) {
				c.mu.Unlock()
				return l
			}
		}
		news := c.news
		c.mu.Unlock()
		select {
		case <-news:
		case <-deadline:
			c.t.Fatalf("no line %q; output:\n%s", what, c.output())
		}
	}
}

// readyAfter waits for a ready line of an instance other than those in
// skip, and returns its pid.
func (c *chain) readyAfter(skip map[int]bool) int {
	c.t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		c.mu.Lock()
		for _, l := range c.lines {
			f := strings.Fields(l)
			if len(f) > 1 && f[1] == "ready" {
				if pid, _ := strconv.Atoi(f[0]); !skip[pid] {
					c.mu.Unlock()
					return pid
				}
			}
		}
		news := c.news
		c.mu.Unlock()
		select {
		case <-news:
		case <-deadline:
			c.t.Fatalf("no new instance ready; output:\n%s", c.output())
		}
	}
}

func (c *chain) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

func (c *chain) fault(f string) {
	if err := os.WriteFile(filepath.Join(c.dir, faultFile), []byte(f), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// pidFile returns the pid the pid file names, 0 if none.
func (c *chain) pidFile() int {
	b, _ := os.ReadFile(c.pid)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// stop stops the serving instance, then checks that every instance has
// exited and left no socket file and no pid file.
func (c *chain) stop(pid int) {
	c.t.Helper()
	syscall.Kill(pid, syscall.SIGTERM)
	c.wait(pid, "exit ")
	c.mu.Lock()
	cmds := c.cmds
	c.mu.Unlock()
	for _, cmd := range cmds {
		cmd.Wait()
	}
	// Every process that holds the pipe is an instance still running.
	c.outW.Close()
	done := make(chan struct{})
	go func() { c.reads.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("instances still running; output:\n%s", c.output())
	}
	for _, f := range []string{c.sock, c.pid} {
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			c.t.Errorf("%s left behind (%v)", f, err)
		}
	}
}

// cleanup kills what a failed test left running: the instances it knows.
func (c *chain) cleanup() {
	c.mu.Lock()
	pids := slices.Collect(maps.Keys(c.pids)) // read adds to it meanwhile
	cmds := c.cmds
	c.mu.Unlock()
	for _, pid := range pids {
		if alive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, cmd := range cmds {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	c.outW.Close()
	c.reads.Wait()
}

// alive reports whether pid is a process that has not exited.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// holdRequest starts a request to the instance pid at addr whose body
// does not come, on a connection that instance has accepted (it answers a
// first request on it): its drain waits until release.
func holdRequest(t *testing.T, addr string, pid int) (release func()) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r := bufio.NewReader(conn)
	io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != fmt.Sprintf("pid=%d\n", pid) {
		t.Fatalf("answered %q, want pid %d", b, pid)
	}
	// The server says 100 Continue once the handler reads the body: then
	// the request is in flight, no longer an idle connection to close.
	io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
	if l, err := r.ReadString('\n'); err != nil || !strings.Contains(l, " 100 ") {
		t.Fatalf("no 100 Continue: %q, %v", l, err)
	}
	r.ReadString('\n') // the empty line after it
	return func() {
		io.WriteString(conn, "xx")
		if resp, err := http.ReadResponse(r, nil); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		conn.Close()
	}
}

// A load sends requests until stopped, on new and on keep-alive
// connections, and counts the answers by pid and the failures.
type load struct {
	stop   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	byPid  map[int]int
	failed []string
	ok     int
	news   chan struct{} // closed and replaced at each answer
}

func startLoad(t *testing.T, addr string) *load {
	l := &load{stop: make(chan struct{}), byPid: map[int]int{}, news: make(chan struct{})}
	for _, keepAlive := range []bool{false, false, true, true} {
		l.wg.Add(1)
		go l.worker(addr, keepAlive)
	}
	t.Cleanup(l.finish)
	return l
}

func (l *load) worker(addr string, keepAlive bool) {
	defer l.wg.Done()
	tr := &http.Transport{DisableKeepAlives: !keepAlive}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		resp, err := client.Post("http://"+addr+"/", "text/plain", strings.NewReader("body"))
		var pid int
		if err == nil {
			var b []byte
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				_, err = fmt.Sscanf(string(b), "pid=%d", &pid)
			}
		}
		l.mu.Lock()
		if err != nil {
			l.failed = append(l.failed, err.Error())
		} else {
			l.ok++
			l.byPid[pid]++
			close(l.news)
			l.news = make(chan struct{})
		}
		l.mu.Unlock()
	}
}

// answered waits until pid has answered n requests.
func (l *load) answered(t *testing.T, pid, n int) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		l.mu.Lock()
		got, news := l.byPid[pid], l.news
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-news:
		case <-timeout:
			t.Fatalf("pid %d answered %d requests, want %d", pid, got, n)
		}
	}
}

func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// check stops the load and fails the test for each failed request.
func (l *load) check(t *testing.T) {
	t.Helper()
	l.finish()
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%d requests answered by %d instances, %d failed", l.ok, len(l.byPid), len(l.failed))
	for i, e := range l.failed {
		if i == 10 {
			break
		}
		t.Errorf("failed request: %s", e)
	}
}

// TestInstanceRestarts restarts a server 6 times (12 in the long form)
// under load, by SIGHUP
// (Restart) and by starting an instance beside it, in turn: no request
// fails, each instance answers, and the last leaves nothing behind.
func TestInstanceRestarts(t *testing.T) {
	c := newChain(t)
	pid := c.startFirst()
	if pid != c.pidFile() {
		t.Fatalf("pid file names %d, want %d", c.pidFile(), pid)
	}
	l := startLoad(t, c.addr)
	l.answered(t, pid, 20)
	seen := map[int]bool{pid: true}
	for i := range sweep(6, 12) {
		n := c.mark()
		if i%2 == 0 {
			syscall.Kill(pid, syscall.SIGHUP)
		} else {
			c.start()
		}
		next := c.readyAfter(seen)
		seen[next] = true
		if i%2 == 0 {
			c.waitFrom(n, pid, "restart <nil>")
		}
		c.wait(pid, "exit successor="+strconv.Itoa(next)+" <nil>")
		if !strings.Contains(c.wait(next, "ready "), "inherited=true") {
			t.Errorf("pid %d did not take over", next)
		}
		if got := c.pidFile(); got != next {
			t.Errorf("pid file names %d, want %d", got, next)
		}
		l.answered(t, next, 20)
		pid = next
	}
	l.check(t)
	c.stop(pid)
}

// TestInstanceRollback makes successors fail before Ready, started by
// Restart and beside the running instance: it serves on, no request fails,
// and Restart says why.
func TestInstanceRollback(t *testing.T) {
	c := newChain(t, "GRACEFUL_TEST_READY_TIMEOUT=500ms")
	pid := c.startFirst()
	l := startLoad(t, c.addr)
	l.answered(t, pid, 20)
	for i, fault := range []string{"crash", "hang", "refuse", "crash", "hang", "refuse"} {
		c.fault(fault)
		n := c.mark()
		if i < 3 {
			syscall.Kill(pid, syscall.SIGHUP)
			l := c.waitFrom(n, pid, "restart ")
			if strings.HasSuffix(l, "<nil>") {
				t.Fatalf("Restart with a successor that fails (%s): %s", fault, l)
			}
		} else {
			cmd := c.start()
			if fault == "hang" {
				// Its predecessor gives up on it; it would hang forever.
				c.waitFrom(n, pid, "log hand-over to pid "+strconv.Itoa(cmd.Process.Pid))
				cmd.Process.Kill()
			}
			if err := cmd.Wait(); err == nil {
				t.Errorf("a successor that fails (%s) exited cleanly", fault)
			}
		}
		l.answered(t, pid, 20*(i+2))
		c.mu.Lock()
		for _, line := range c.lines[n:] {
			if f := strings.Fields(line); len(f) > 1 && f[1] == "ready" {
				t.Errorf("a successor that fails (%s) got ready: %s", fault, line)
			}
		}
		c.mu.Unlock()
		if c.pidFile() != pid {
			t.Errorf("pid file names %d, want %d", c.pidFile(), pid)
		}
	}
	// And a good successor takes over after them all.
	syscall.Kill(pid, syscall.SIGHUP)
	next := c.readyAfter(map[int]bool{pid: true})
	l.answered(t, next, 20)
	l.check(t)
	c.stop(next)
}

// An httpInstance is an instance in this process that serves HTTP as
// instanceMain does, through a Drainer, answering each request with its id
// where instanceMain writes its pid. Its state is its id.
type httpInstance struct {
	id, from int // its id, and that of the instance it took over from
	inst     *Instance
	addr     string
	d        Drainer
}

// startHTTPInstance starts an instance with the id at sock, serving HTTP at
// addr, and gets it ready.
func startHTTPInstance(sock, addr string, id int) (*httpInstance, error) {
	inst, err := Start(Config{Socket: sock})
	if err != nil {
		return nil, err
	}
	h := &httpInstance{id: id, inst: inst}
	h.from, _ = strconv.Atoi(string(inst.State()))
	ln, err := inst.Listen("tcp", addr)
	if err != nil {
		inst.Stop()
		return nil, err
	}
	h.addr = ln.Addr().String()
	inst.SetState([]byte(strconv.Itoa(id)))
	go h.d.Serve(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "pid=%d\n", id)
	})}, ln)
	if err := inst.Ready(); err != nil {
		h.d.Drain(context.Background())
		inst.Stop()
		return nil, err
	}
	return h, nil
}

// TestInstanceConcurrentStarts starts three instances at the same moment
// beside a running one, all in this process: they take over one after the
// other, each from the last (by the state each hands on, its id), never two
// at a time, and the last one serves; no request fails.
func TestInstanceConcurrentStarts(t *testing.T) {
	noLeaks(t)
	sock := sockPath(t)
	first, err := startHTTPInstance(sock, "127.0.0.1:0", 1)
	if err != nil {
		t.Fatal(err)
	}
	all := map[int]*httpInstance{1: first}
	defer func() {
		for _, h := range all {
			h.inst.Stop()
			h.d.Drain(context.Background())
		}
	}()
	l := startLoad(t, first.addr)
	l.answered(t, 1, 20)
	type result struct {
		h   *httpInstance
		err error
	}
	results := make(chan result, 3)
	for id := 2; id <= 4; id++ {
		go func() {
			h, err := startHTTPInstance(sock, first.addr, id)
			results <- result{h, err}
		}()
	}
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Errorf("an instance started beside: %v", r.err)
			continue
		}
		all[r.h.id] = r.h
	}
	// Each took over from the one that served before it, which handed
	// over to it: a chain from the first.
	next := map[int]int{}
	for id, h := range all {
		if id == 1 {
			continue
		}
		if other, dup := next[h.from]; dup {
			t.Errorf("instances %d and %d both took over from %d", other, id, h.from)
		}
		next[h.from] = id
	}
	chain := []int{1}
	for n, ok := next[1]; ok && len(chain) < 5; n, ok = next[n] {
		chain = append(chain, n)
	}
	if len(chain) != 4 {
		t.Fatalf("the instances took over in the chain %v (each from: %v)", chain, next)
	}
	for _, id := range chain[:3] {
		select {
		case <-all[id].inst.Done():
		default:
			t.Errorf("instance %d is not done, though %d took over from it", id, next[id])
		}
		all[id].d.Drain(context.Background())
	}
	last := chain[3]
	l.answered(t, last, 20)
	l.check(t)
}

// TestInstanceInProcess runs the first instance in the test process and
// lets a child take over: what it claims arrives and works, what it does not
// claim is closed, the state travels, and neither process keeps a descriptor
// it should not.
func TestInstanceInProcess(t *testing.T) {
	noLeaks(t)
	dir := sockPath(t)
	os.Mkdir(dir, 0o700)
	sock := filepath.Join(dir, "s")
	inst, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Stop()
	ln, err := inst.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	other, err := inst.Listen("tcp", "127.0.0.1:0")
	if err == nil {
		other.Close()
		t.Fatal("a second Listen on the same address succeeded")
	}
	other, err = inst.Listen("tcp", "[::1]:0")
	if err != nil {
		other, err = inst.Listen("tcp", "127.0.0.2:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	pc, err := inst.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	unixPath := filepath.Join(dir, "app.sock")
	uln, err := inst.Listen("unix", unixPath)
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	inst.SetFile("log", logf)
	if err := inst.SetState([]byte("counter=42")); err != nil {
		t.Fatal(err)
	}
	if err := inst.SetState(make([]byte, 33<<10)); !errors.Is(err, ErrLimit) {
		t.Errorf("SetState of 33 KiB: %v, want ErrLimit", err)
	}
	if err := inst.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := inst.Ready(); !errors.Is(err, ErrInstanceState) {
		t.Errorf("second Ready: %v, want ErrInstanceState", err)
	}

	c := startChild(t, "successor", sock, ln.Addr().String(), unixPath)
	c.expect("started counter=42")
	c.expect("ready 5")
	<-inst.Done()
	if got := inst.SuccessorPID(); got != c.cmd.Process.Pid {
		t.Errorf("Successor() = %d, want %d", got, c.cmd.Process.Pid)
	}
	// The test's listeners and the successor's share the sockets: after
	// the test closes its copies, the successor answers, and the Unix
	// socket's file is still there.
	ln.Close()
	uln.Close()
	for _, a := range []net.Addr{ln.Addr(), uln.Addr()} {
		conn, err := net.Dial(a.Network(), a.String())
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if want := fmt.Sprintf("successor %d\n", c.cmd.Process.Pid); line != want || err != nil {
			t.Errorf("answer on %v: %q, %v; want %q", a, line, err, want)
		}
	}
	c.expect("leaked 0")
	c.wait()
	if b, _ := os.ReadFile(filepath.Join(dir, "log")); string(b) != "successor was here\n" {
		t.Errorf("the file holds %q", b)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket file is left behind (%v)", err)
	}
}

// TestInstanceGivesUp checks both ends of an abandoned hand-over: a
// predecessor that waited ReadyTimeout in vain, or that stopped meanwhile,
// makes the successor's Ready fail with ErrAborted, and serves on (the
// first case) or ends (the second). The abandoned successor stops at once,
// before its Ready: the next one starts while it still lives. The
// instances are in this process.
func TestInstanceGivesUp(t *testing.T) {
	for _, stop := range []bool{false, true} {
		t.Run(fmt.Sprintf("stop=%v", stop), func(t *testing.T) {
			noLeaks(t)
			sock := sockPath(t)
			inst, err := Start(Config{Socket: sock, ReadyTimeout: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer inst.Stop()
			if err := inst.Ready(); err != nil {
				t.Fatal(err)
			}
			succ, err := Start(Config{Socket: sock})
			if err != nil {
				t.Fatal(err)
			}
			defer succ.Stop()
			if !succ.Inherited() {
				t.Fatal("the successor did not take over")
			}
			if stop {
				// Its Stop refuses the successor, even before its loop
				// has heard that the transfer is complete: the refusal
				// then follows the transfer.
				inst.Stop()
			} else {
				// The next successor takes over while the abandoned one
				// has still not called its Ready: it waits for the start
				// lock, which the abandoned one lets go once it learns
				// that it was given up on.
				next, err := Start(Config{Socket: sock})
				if err != nil {
					t.Fatal(err)
				}
				if err := next.Ready(); err != nil {
					t.Errorf("the next successor's Ready: %v", err)
				}
				next.Stop()
				<-inst.Done()
			}
			if err := succ.Ready(); !errors.Is(err, ErrAborted) {
				t.Errorf("the abandoned successor's Ready: %v, want ErrAborted", err)
			}
		})
	}
}

// TestInstanceBusy starts an instance while another one holds the start
// lock between its Start and Ready: after ReadyTimeout it fails with
// ErrAborted, naming the holder. The instances are in this process.
func TestInstanceBusy(t *testing.T) {
	noLeaks(t)
	sock := sockPath(t)
	first, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	if err := first.Ready(); err != nil {
		t.Fatal(err)
	}
	succ, err := Start(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Stop()
	_, err = Start(Config{Socket: sock, ReadyTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrAborted) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d ", os.Getpid())) {
		t.Errorf("Start: %v, want ErrAborted naming pid %d", err, os.Getpid())
	}
	if err := succ.Ready(); err != nil {
		t.Errorf("the holder's Ready: %v", err)
	}
}

// activatedInodes returns the inodes of the sockets that systemd passes.
func activatedInodes() []uint64 {
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	var inodes []uint64
	for fd := 3; fd < 3+n; fd++ {
		var st syscall.Stat_t
		if syscall.Fstat(fd, &st) == nil {
			inodes = append(inodes, st.Ino)
		}
	}
	return inodes
}

// countOpen counts the sockets of inodes that this process holds open.
func countOpen(inodes []uint64) int {
	ents, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range ents {
		link, _ := os.Readlink("/proc/self/fd/" + e.Name())
		for _, ino := range inodes {
			if link == fmt.Sprintf("socket:[%d]", ino) {
				n++
			}
		}
	}
	return n
}

// TestInstancePredecessorDies kills the serving instance while its
// successor is between Start and Ready: the successor, which holds every
// socket, serves.
func TestInstancePredecessorDies(t *testing.T) {
	c := newChain(t)
	pid := c.startFirst()
	c.fault("gated")
	gate := filepath.Join(c.dir, "gate")
	if err := unix.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	n := c.mark()
	next := c.start().Process.Pid
	c.waitFrom(n, next, "fault gated")
	c.mu.Lock()
	first := c.cmds[0]
	c.mu.Unlock()
	first.Process.Kill()
	first.Wait()
	openFIFO(t, gate) // the successor goes on to its Ready
	c.waitFrom(n, next, "log the predecessor, pid "+strconv.Itoa(pid)+", died during the hand-over: serving")
	c.waitFrom(n, next, "ready ")
	l := startLoad(t, c.addr)
	l.answered(t, next, 20)
	l.check(t)
	if got := c.pidFile(); got != next {
		t.Errorf("pid file names %d, want %d", got, next)
	}
	c.stop(next)
}

// TestInstanceStopBeforeDone checks that Done closes only once Stop has
// cleaned up, so that a program that stops from a signal's goroutine and
// exits on Done leaves no socket file or pid file, and that a second Stop
// returns only once the first is done.
func TestInstanceStopBeforeDone(t *testing.T) {
	noLeaks(t)
	for i := 0; i < 50; i++ {
		dir := t.TempDir()
		sock, pidFile := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
		inst, err := Start(Config{Socket: sock, PIDFile: pidFile})
		if err != nil {
			t.Fatal(err)
		}
		if err := inst.Ready(); err != nil {
			t.Fatal(err)
		}
		go inst.Stop()
		if i%2 == 0 {
			<-inst.Done()
		} else {
			inst.Stop()
		}
		for _, f := range []string{sock, pidFile} {
			if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("round %d: %s left behind (%v)", i, f, err)
			}
		}
	}
}

// installCopy makes the chain run from a copy of the test binary, which
// deploy can replace.
func (c *chain) installCopy() {
	c.t.Helper()
	bin := filepath.Join(c.dir, "bin")
	if err := os.Mkdir(bin, 0o700); err != nil {
		c.t.Fatal(err)
	}
	c.exe = filepath.Join(bin, "app")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(c.exe, data, 0o700); err != nil {
		c.t.Fatal(err)
	}
}

// deploy moves the installed binary aside, as a deploy that keeps a backup
// does, and puts in its place the shell script that script writes for the
// old binary's path.
func (c *chain) deploy(script func(old string) string) {
	c.t.Helper()
	old := c.exe + ".old"
	if err := os.Rename(c.exe, old); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(c.exe, []byte("#!/bin/sh\n"+script(old)), 0o700); err != nil {
		c.t.Fatal(err)
	}
}

// TestRestartRunsInstalledBinary installs a new binary at the path the
// running instance was started from, moving the running one aside as a
// deploy that keeps a backup does: SIGHUP starts the new one.
func TestRestartRunsInstalledBinary(t *testing.T) {
	c := newChain(t)
	c.installCopy()
	pid := c.startFirst()
	// The "new version": it says so, then runs the same code.
	c.deploy(func(old string) string { return "echo \"$$ new binary\"\nexec " + old + " \"$@\"\n" })
	n := c.mark()
	syscall.Kill(pid, syscall.SIGHUP)
	next := c.readyAfter(map[int]bool{pid: true})
	c.waitFrom(n, next, "new binary")
	c.waitFrom(n, pid, "restart <nil>")
	c.stop(next)
}

// TestRestartInherits checks that a Restart's successor takes the sockets
// it is given at exec: with the hand-over socket's path moved away, one that
// dialled it would find no server and fail to listen, the port being taken.
func TestRestartInherits(t *testing.T) {
	c := newChain(t)
	pid := c.startFirst()
	moved := c.sock + ".moved"
	if err := os.Rename(c.sock, moved); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGHUP)
	next := c.readyAfter(map[int]bool{pid: true})
	if !strings.Contains(c.wait(next, "ready "), "inherited=true") {
		t.Errorf("pid %d did not take over", next)
	}
	c.wait(pid, "restart <nil>")
	c.stop(next)
	// Nothing removes a socket file moved away: its path is not the
	// instances' any more.
	os.Remove(moved)
}
