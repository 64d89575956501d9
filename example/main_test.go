//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests run the example as a real program: built once, with the test
// hooks of faults.go (-tags gracefulfaults), run on a free port of
// 127.0.0.1, restarted under load.

var exampleBin string

func TestMain(m *testing.M) {
	if os.Getenv(baselineEnv) != "" {
		os.Exit(baselineMain())
	}
	dir, err := os.MkdirTemp("", "graceful-example")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	exampleBin = filepath.Join(dir, "example")
	args := []string{"build", "-tags", "gracefulfaults", "-o", exampleBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the example:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// A cluster is the succession of instances that share one set of flags, and
// their common log.
type cluster struct {
	t                              testing.TB
	addr, sock, pidFile, faultFile string
	bin                            string
	args                           []string
	logW                           *os.File
	logDone                        chan struct{}

	mu      sync.Mutex
	lines   []string
	changed chan struct{}
	cmds    []*exec.Cmd // the instances the test started itself
	env     []string    // for every instance the test starts
}

func newCluster(t testing.TB, extra ...string) *cluster {
	t.Helper()
	// A short directory: socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "gex")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &cluster{
		t:         t,
		sock:      filepath.Join(dir, "handover.sock"),
		pidFile:   filepath.Join(dir, "example.pid"),
		faultFile: filepath.Join(dir, "fault"),
		bin:       exampleBin,
		logDone:   make(chan struct{}),
		changed:   make(chan struct{}),
	}
	// Port 0: the first instance picks a free port, the others take it over.
	c.args = append([]string{"-listen", "127.0.0.1:0", "-socket", c.sock, "-pid-file", c.pidFile}, extra...)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.logW = w
	go c.readLog(r)
	t.Cleanup(func() {
		// Whatever failed, leave no process behind.
		for _, cmd := range c.cmds {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		}
		for _, pid := range c.pids() {
			// Only if the pid is still an instance, not a reused one.
			if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.HasPrefix(cmdline, []byte(c.bin+"\x00")) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		c.logW.Close()
		if t.Failed() {
			c.mu.Lock()
			t.Logf("log of the instances:\n%s", strings.Join(c.lines, "\n"))
			c.mu.Unlock()
		}
	})
	return c
}

func (c *cluster) readLog(r *os.File) {
	defer close(c.logDone)
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		c.mu.Lock()
		c.lines = append(c.lines, sc.Text())
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
}

// waitLog waits for a log line of pid that contains s and returns it.
func (c *cluster) waitLog(pid int, s string) string {
	c.t.Helper()
	return c.waitLogFrom(0, pid, s)
}

// mark returns the number of log lines so far, for waitLogFrom.
func (c *cluster) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// waitLogFrom is waitLog from the nth line on; pid 0 stands for any
// instance.
func (c *cluster) waitLogFrom(n, pid int, s string) string {
	c.t.Helper()
	tag := fmt.Sprintf(" example[%d] ", pid)
	if pid == 0 {
		tag = " example["
	}
	timeout := time.After(30 * time.Second)
	for {
		c.mu.Lock()
		for _, l := range c.lines[n:] {
			if strings.Contains(l, tag) && strings.Contains(l, s) {
				c.mu.Unlock()
				return l
			}
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			c.t.Fatalf("no log line of pid %d with %q", pid, s)
		}
	}
}

// pids returns every pid that logged a line.
func (c *cluster) pids() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[int]bool{}
	var pids []int
	for _, l := range c.lines {
		if pid, ok := linePid(l); ok && !seen[pid] {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	return pids
}

// linePid returns the pid of the instance that logged l.
func linePid(l string) (int, bool) {
	i := strings.Index(l, " example[")
	j := strings.Index(l, "] ")
	if i < 0 || j < i {
		return 0, false
	}
	pid, err := strconv.Atoi(l[i+len(" example[") : j])
	return pid, err == nil
}

// start starts an instance with the cluster's flags and env.
func (c *cluster) start() *exec.Cmd {
	c.t.Helper()
	cmd := exec.Command(c.bin, c.args...)
	// Under -race a process sleeps a second at exit unless told not to.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", faultEnv+"="+c.faultFile)
	cmd.Env = append(cmd.Env, c.env...)
	cmd.Stdout, cmd.Stderr = c.logW, c.logW
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.cmds = append(c.cmds, cmd)
	return cmd
}

// fault makes the next instance that takes over fail as f says (faultEnv).
func (c *cluster) fault(f string) {
	c.t.Helper()
	if err := os.WriteFile(c.faultFile, []byte(f), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// startFirst starts the first instance and learns the address it serves.
func (c *cluster) startFirst() *exec.Cmd {
	c.t.Helper()
	cmd := c.start()
	l := c.waitLog(cmd.Process.Pid, " listening on http://")
	c.addr = strings.Fields(l[strings.Index(l, "http://")+len("http://"):])[0]
	return cmd
}

// servingPid waits until the pid file names a pid other than old, which
// the instance writes once it serves HTTP and its hand-over socket.
func (c *cluster) servingPid(old int) int {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(c.pidFile)
		if err == nil {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				c.t.Fatalf("pid file holds %q", b)
			}
			if pid != old {
				return pid
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			c.t.Fatal(err)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the pid file still names %d", old)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop sends SIGTERM to the serving instance and checks that every
// instance exited cleanly and left no process, socket file or pid file.
func (c *cluster) stop(pid int) {
	c.t.Helper()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		c.t.Fatal(err)
	}
	c.waitLog(pid, "exited")
	for _, cmd := range c.cmds {
		if cmd.ProcessState != nil {
			continue // waited for by the test
		}
		if err := cmd.Wait(); err != nil {
			c.t.Errorf("instance %d: %v", cmd.Process.Pid, err)
		}
	}
	// Every process that holds the log pipe is an instance still running.
	c.logW.Close()
	select {
	case <-c.logDone:
	case <-time.After(30 * time.Second):
		c.t.Fatal("instances still running 30s after the last exited")
	}
	// A process closes its descriptors a moment before it is gone.
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range c.pids() {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if alive(pid) {
			c.t.Errorf("pid %d still running", pid)
		}
	}
	for _, f := range []string{c.sock, c.pidFile} {
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			c.t.Errorf("%s left behind (%v)", f, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	faulty := map[int]bool{}
	for _, l := range c.lines {
		if pid, _ := linePid(l); strings.Contains(l, "] fault: ") {
			faulty[pid] = true
		}
	}
	for _, l := range c.lines {
		pid, _ := linePid(l)
		if strings.Contains(l, "] exited") && !strings.HasSuffix(l, "] exited") && !faulty[pid] {
			c.t.Errorf("unclean exit: %s", l)
		}
	}
}

// alive reports whether pid runs; a zombie has exited.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// A load drives HTTP requests at an address until stopped: on a new
// connection each, and on keep-alive connections, GETs and POSTs.
type load struct {
	url  string
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	ok      map[string]int // by kind
	failed  map[string]int
	refused int // connections refused
	reset   int // connections reset or closed after the request was sent
	errs    []string
	pids    map[int]int
	first   map[int]time.Time // when each pid's first answer arrived
}

const maxRequestsPerWorker = 50000

// testLoad is the load of the tests: one client of each kind listed.
var testLoad = []string{
	"new-conn GET", "new-conn GET", "new-conn GET",
	"keep-alive GET", "keep-alive GET",
	"keep-alive POST", "keep-alive POST", "keep-alive POST",
	"keep-alive slow GET",
}

func startLoad(t testing.TB, addr string, kinds []string) *load {
	l := &load{
		url:    "http://" + addr + "/",
		stop:   make(chan struct{}),
		ok:     map[string]int{},
		failed: map[string]int{},
		pids:   map[int]int{},
		first:  map[int]time.Time{},
	}
	for _, kind := range kinds {
		l.wg.Add(1)
		go l.worker(kind)
	}
	t.Cleanup(l.finish)
	return l
}

func (l *load) worker(kind string) {
	defer l.wg.Done()
	tr := &http.Transport{DisableKeepAlives: strings.HasPrefix(kind, "new-conn")}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	body := strings.Repeat("x", 1000)
	for i := 0; i < maxRequestsPerWorker; i++ {
		select {
		case <-l.stop:
			return
		default:
		}
		var resp *http.Response
		var err error
		switch kind {
		case "keep-alive POST":
			resp, err = client.Post(l.url, "text/plain", strings.NewReader(body))
		case "keep-alive slow GET":
			resp, err = client.Get(l.url + "?delay=20ms")
		default:
			resp, err = client.Get(l.url)
		}
		if err == nil {
			err = checkResponse(resp, kind, l)
		}
		l.mu.Lock()
		if err != nil {
			l.failed[kind]++
			if strings.Contains(err.Error(), "connection refused") {
				l.refused++
			}
			if strings.Contains(err.Error(), "reset by peer") || strings.Contains(err.Error(), "EOF") {
				l.reset++
			}
			if len(l.errs) < 20 {
				l.errs = append(l.errs, kind+": "+err.Error())
			}
		} else {
			l.ok[kind]++
		}
		l.mu.Unlock()
	}
}

func checkResponse(resp *http.Response, kind string, l *load) error {
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s: %s", resp.Status, b)
	}
	var pid, n int
	var method string
	if _, err := fmt.Sscanf(string(b), "pid=%d method=%s body=%d", &pid, &method, &n); err != nil {
		return fmt.Errorf("answer %q: %v", b, err)
	}
	if wantN := map[bool]int{true: 1000, false: 0}[strings.HasSuffix(kind, "POST")]; n != wantN {
		return fmt.Errorf("answer %q, want body=%d", b, wantN)
	}
	now := time.Now()
	l.mu.Lock()
	l.pids[pid]++
	if t, ok := l.first[pid]; !ok || now.Before(t) {
		l.first[pid] = now
	}
	l.mu.Unlock()
	return nil
}

// answersPerInstance is how many requests the test lets each instance
// answer before it restarts it.
const answersPerInstance = 50

// waitPid waits until pid has answered n requests.
func (l *load) waitPid(t testing.TB, pid, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l.mu.Lock()
		got := l.pids[pid]
		l.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d answered %d requests, want %d", pid, got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (l *load) failures() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, f := range l.failed {
		n += f
	}
	return n
}

func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// check stops the load and fails the test for any failed request.
func (l *load) check(t testing.TB) {
	t.Helper()
	l.finish()
	l.mu.Lock()
	defer l.mu.Unlock()
	total := 0
	for kind, n := range l.ok {
		total += n
		t.Logf("%-20s %6d answered, %d failed", kind, n, l.failed[kind])
	}
	t.Logf("%d requests answered by %d instances", total, len(l.pids))
	for kind, n := range l.failed {
		t.Errorf("%d %s requests failed", n, kind)
	}
	for _, e := range l.errs {
		t.Log(e)
	}
	if total == 0 {
		t.Error("no request answered")
	}
}

// restart restarts the serving instance pid, by SIGHUP when i is even and by
// a second instance when it is odd, and waits until the successor has served
// its share of requests.
func (c *cluster) restart(l *load, pid, i int) (next int, path string) {
	c.t.Helper()
	if i%2 == 0 {
		path = "SIGHUP"
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			c.t.Fatal(err)
		}
	} else {
		path = "second instance"
		c.start()
	}
	next = c.servingPid(pid)
	c.waitLog(pid, "handed over to pid "+strconv.Itoa(next))
	l.waitPid(c.t, next, answersPerInstance)
	return next, path
}

// TestRestartUnderLoad restarts the example 20 times under load, by SIGHUP
// and by starting a second instance in turn, and checks that no request
// failed and that every instance served and exited cleanly.
func TestRestartUnderLoad(t *testing.T) {
	c := newCluster(t)
	c.startFirst()
	pid := c.servingPid(0)
	l := startLoad(t, c.addr, testLoad)
	l.waitPid(t, pid, answersPerInstance)
	const restarts = 20
	failed := map[string]int{} // by restart path
	for i := 0; i < restarts; i++ {
		before := l.failures()
		var path string
		pid, path = c.restart(l, pid, i)
		failed[path] += l.failures() - before
	}
	t.Logf("failed requests by restart path over %d restarts: %v", restarts, failed)
	l.check(t)
	if n := len(l.pids); n != restarts+1 {
		t.Errorf("%d pids served, want %d", n, restarts+1)
	}
	c.stop(pid)
	if t.Failed() {
		return
	}
	if n := len(c.pids()); n != restarts+1 {
		t.Errorf("%d instances logged, want %d", n, restarts+1)
	}
}

// TestFailedSuccessor makes successors crash, hang or refuse while they
// take over, started by SIGHUP and beside the running instance: the old
// instance says why and serves on, the pid file keeps naming it, no request
// fails, and good restarts by both paths work after them.
func TestFailedSuccessor(t *testing.T) {
	const readyTimeout = 2 * time.Second
	c := newCluster(t, "-ready-timeout", readyTimeout.String())
	pid := c.startFirst().Process.Pid
	l := startLoad(t, c.addr, testLoad)
	l.waitPid(t, pid, answersPerInstance)
	// How Restart reports each fault, and each faulty instance's exit.
	why := map[string]string{
		"crash":  "exited before it was ready: exit status 3",
		"hang":   "not ready after " + readyTimeout.String(),
		"refuse": "exited before it was ready: exit status 1",
	}
	exit := map[string]string{"crash": "exit status 3", "hang": "signal: killed", "refuse": "exit status 1"}
	for i, fault := range []string{"crash", "hang", "refuse", "crash", "hang", "refuse"} {
		c.fault(fault)
		n := c.mark()
		if i < 3 {
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			if l := c.waitLogFrom(n, pid, "successor failed: "); !strings.Contains(l, why[fault]) {
				t.Errorf("%s by SIGHUP: %s, want %q", fault, l, why[fault])
			}
		} else {
			cmd := c.start()
			failed := "hand-over to pid " + strconv.Itoa(cmd.Process.Pid) + " failed: "
			if fault == "hang" {
				// The old instance gives up on it; it would hang forever.
				c.waitLogFrom(n, pid, failed)
				cmd.Process.Kill()
			}
			if err := cmd.Wait(); err == nil || err.Error() != exit[fault] {
				t.Errorf("%s beside: the instance ended with %v, want %s", fault, err, exit[fault])
			}
			c.waitLogFrom(n, pid, failed)
		}
		c.waitLogFrom(n, 0, "fault: "+fault)
		// The old instance serves on, and the pid file names it.
		l.waitPid(t, pid, answersPerInstance*(i+2))
		if got := c.servingPid(0); got != pid {
			t.Fatalf("after %s: the pid file names %d, want %d", fault, got, pid)
		}
	}

	// Good restarts: a second instance, then SIGHUP to it.
	good := c.start()
	next := c.servingPid(pid)
	if next != good.Process.Pid {
		t.Fatalf("pid file names %d, want %d", next, good.Process.Pid)
	}
	c.waitLog(pid, "exited")
	l.waitPid(t, next, answersPerInstance)
	if err := syscall.Kill(next, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	last := c.servingPid(next)
	l.waitPid(t, last, answersPerInstance)
	l.check(t)
	c.stop(last)
}

// BenchmarkRestart restarts the example b.N times under the tests' load,
// draining with graceful.Drainer and with http.Server.Shutdown right after the
// hand-over, and reports the requests that failed per restart. The README's
// figures come from -benchtime 20x.
func BenchmarkRestart(b *testing.B) {
	for _, drain := range []string{"drainer", "shutdown"} {
		b.Run("drain="+drain, func(b *testing.B) {
			c := newCluster(b)
			c.env = []string{drainEnv + "=" + drain}
			c.startFirst()
			pid := c.servingPid(0)
			l := startLoad(b, c.addr, testLoad)
			l.waitPid(b, pid, answersPerInstance)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				pid, _ = c.restart(l, pid, i)
			}
			b.StopTimer()
			l.finish()
			total := 0
			for _, n := range l.ok {
				total += n
			}
			n := float64(b.N)
			b.ReportMetric(float64(total+l.failures())/n, "requests/restart")
			b.ReportMetric(float64(l.failures())/n, "failed/restart")
			b.ReportMetric(float64(l.failed["keep-alive POST"])/n, "keepalive-POST-failed/restart")
			c.stop(pid)
		})
	}
}
