//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
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
)

// The tests run the program as it is: built once, run on a free port of
// 127.0.0.1, restarted under a load of clients that check every answer.

var streamBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "graceful-stream")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	streamBin = filepath.Join(dir, "stream")
	// The test hooks (faults.go) are built in for the tests only.
	args := []string{"build", "-tags", "gracefulfaults", "-o", streamBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the program:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// A cluster is the succession of instances that share one set of flags,
// and their common log, each line with the time the test read it.
type cluster struct {
	t                   testing.TB
	addr, sock, pidFile string
	args                []string
	epoch               time.Time // the load's, for the times of lines
	logW                *os.File
	logDone             chan struct{}

	mu      sync.Mutex
	lines   []logLine
	changed chan struct{}
	cmds    []*exec.Cmd
	faulty  map[int]bool // instances made to fail
}

type logLine struct {
	at   time.Duration // since epoch
	pid  int
	text string // after the prefix
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	// A short directory: socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "gst")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &cluster{
		t:       t,
		sock:    filepath.Join(dir, "handover.sock"),
		pidFile: filepath.Join(dir, "stream.pid"),
		epoch:   time.Now(),
		logDone: make(chan struct{}),
		changed: make(chan struct{}),
		faulty:  map[int]bool{},
	}
	c.args = []string{"-listen", "127.0.0.1:0", "-socket", c.sock, "-pid-file", c.pidFile}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.logW = w
	go c.readLog(r)
	t.Cleanup(c.cleanup)
	return c
}

// cleanup kills whatever instance a failed test left running.
func (c *cluster) cleanup() {
	for _, cmd := range c.cmds {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	for _, pid := range c.pids() {
		// Only if the pid is still an instance, not a reused one.
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.HasPrefix(cmdline, []byte(streamBin+"\x00")) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	c.logW.Close()
	if c.t.Failed() {
		c.t.Logf("log of the instances:\n%s", c.logText())
	}
}

func (c *cluster) readLog(r *os.File) {
	defer close(c.logDone)
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		l := logLine{at: time.Since(c.epoch), text: sc.Text()}
		// "15:04:05.000000 stream[pid] text"
		if _, rest, ok := strings.Cut(sc.Text(), " stream["); ok {
			if p, text, ok := strings.Cut(rest, "] "); ok {
				l.pid, _ = strconv.Atoi(p)
				l.text = text
			}
		}
		c.mu.Lock()
		c.lines = append(c.lines, l)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
}

func (c *cluster) logText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, l := range c.lines {
		fmt.Fprintf(&b, "%9.3fms [%d] %s\n", float64(l.at)/1e6, l.pid, l.text)
	}
	return b.String()
}

// mark returns the number of log lines so far, for waitLog.
func (c *cluster) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// waitLog waits for a line of pid from the from-th on that starts with s.
func (c *cluster) waitLog(from, pid int, s string) logLine {
	c.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		c.mu.Lock()
		for _, l := range c.lines[from:] {
			if l.pid == pid && strings.HasPrefix(l.text, s) {
				c.mu.Unlock()
				return l
			}
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			c.t.Fatalf("no log line of pid %d starting with %q", pid, s)
		}
	}
}

// pids returns every pid that logged a line.
func (c *cluster) pids() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var pids []int
	for _, l := range c.lines {
		if l.pid != 0 && !slices.Contains(pids, l.pid) {
			pids = append(pids, l.pid)
		}
	}
	return pids
}

// start starts an instance with the cluster's flags and env added to the
// environment.
func (c *cluster) start(env ...string) *exec.Cmd {
	c.t.Helper()
	cmd := exec.Command(streamBin, c.args...)
	// Under -race a process sleeps a second at exit unless told not to.
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
	cmd.Stdout, cmd.Stderr = c.logW, c.logW
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.cmds = append(c.cmds, cmd)
	if len(env) > 0 {
		c.faulty[cmd.Process.Pid] = true
	}
	return cmd
}

// startFirst starts the first instance and learns its address and pid.
func (c *cluster) startFirst(env ...string) int {
	c.t.Helper()
	cmd := c.start(env...)
	l := c.waitLog(0, cmd.Process.Pid, "listening on ")
	c.addr = strings.Fields(strings.TrimPrefix(l.text, "listening on "))[0]
	if pid := c.servingPid(0); pid != cmd.Process.Pid {
		c.t.Fatalf("pid file names %d, want %d", pid, cmd.Process.Pid)
	}
	return cmd.Process.Pid
}

// servingPid waits until the pid file names a pid other than old.
func (c *cluster) servingPid(old int) int {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
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
		time.Sleep(2 * time.Millisecond)
	}
}

// stop sends SIGTERM to the serving instance and checks that every
// instance exited cleanly and left no process, socket file or pid file.
func (c *cluster) stop(pid int) {
	c.t.Helper()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		c.t.Fatal(err)
	}
	c.waitLog(0, pid, "exited")
	for _, cmd := range c.cmds {
		if cmd.ProcessState == nil {
			if err := cmd.Wait(); err != nil && !c.faulty[cmd.Process.Pid] {
				c.t.Errorf("instance %d: %v", cmd.Process.Pid, err)
			}
		}
	}
	// Every process that holds the log pipe is an instance still running.
	c.logW.Close()
	select {
	case <-c.logDone:
	case <-time.After(30 * time.Second):
		c.t.Fatal("instances still running 30s after the last exited")
	}
	for _, f := range []string{c.sock, c.pidFile} {
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			c.t.Errorf("%s left behind (%v)", f, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.HasPrefix(l.text, "exited") && l.text != "exited" && !c.faulty[l.pid] {
			c.t.Errorf("unclean exit of pid %d: %s", l.pid, l.text)
		}
	}
}

// restart restarts the serving instance pid, by SIGHUP when i is even and
// by a second instance when it is odd, with the holder clients in
// mid-line, and waits until the old instance has handed over and exited
// and every client has had an answer from the new one.
func (c *cluster) restart(l *load, pid, i int) (next int, h handOver) {
	c.t.Helper()
	release := l.holdLines()
	mark := c.mark()
	if i%2 == 0 {
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			c.t.Fatal(err)
		}
	} else {
		c.start()
	}
	next = c.servingPid(pid)
	begin := c.waitLog(mark, pid, fmt.Sprintf("pid %d is ready: handing over ", next))
	handed := c.waitLog(mark, pid, "handed ")
	var err error
	h.passed, h.midLine, h.pass, err = parseHanded(handed.text)
	if err != nil {
		c.t.Fatal(err)
	}
	c.waitLog(mark, pid, "exited")
	took := c.waitLog(mark, next, fmt.Sprintf("took %d connections ", h.passed))
	if h.accept, err = parseTook(took.text); err != nil {
		c.t.Fatal(err)
	}
	h.window = window{begin.at, took.at}
	release()
	l.waitAnswered(next, nil)
	return next, h
}

// A handOver is what one restart's log says about it.
type handOver struct {
	window
	passed, midLine int
	pass            time.Duration // Done to the last PassConns returned
	accept          time.Duration // the successor's Ready to its last AcceptConn
}

// parseHanded parses "handed N connections to pid P in D (Done to the last
// PassConns; M mid-line, U with answers unsent)".
func parseHanded(s string) (passed, midLine int, d time.Duration, err error) {
	var pid, unsent int
	var ds string
	_, err = fmt.Sscanf(s, "handed %d connections to pid %d in %s (Done to the last PassConns; %d mid-line, %d with answers unsent)", &passed, &pid, &ds, &midLine, &unsent)
	if err == nil {
		d, err = time.ParseDuration(ds)
	}
	if err != nil {
		err = fmt.Errorf("log line %q: %v", s, err)
	}
	return passed, midLine, d, err
}

// parseTook parses "took N connections from the predecessor (M mid-line),
// the last D after Ready".
func parseTook(s string) (time.Duration, error) {
	_, after, ok := strings.Cut(s, "the last ")
	d, err := time.ParseDuration(strings.TrimSuffix(after, " after Ready"))
	if !ok || err != nil {
		return 0, fmt.Errorf("log line %q: %v", s, err)
	}
	return d, nil
}

// A scenario is a load and a series of restarts under it.
type scenario struct {
	conns    int
	min, max time.Duration // between two lines of a client
	restarts int
	apart    time.Duration // between two restarts' starts, at least
}

type outcome struct {
	loadResult
	restarts int
	hands    []handOver
	lat      latencies
}

// run runs the scenario from a first instance to the SIGTERM of the last,
// and fails the test for a failed connection, a lost, repeated or
// misnumbered line, or an instance that did not answer every client.
func (s scenario) run(t testing.TB) outcome {
	needFiles(t, s.conns+100)
	c := newCluster(t)
	pid := c.startFirst()
	l := startLoad(t, c.epoch, c.addr, s.conns, s.min, s.max)
	l.waitAnswered(pid, nil)
	chain := []int{pid}
	var o outcome
	for i := 0; i < s.restarts; i++ {
		began := time.Now()
		next, h := c.restart(l, pid, i)
		if h.passed != s.conns {
			t.Errorf("restart %d: %d connections passed, want %d", i, h.passed, s.conns)
		}
		o.hands = append(o.hands, h)
		chain = append(chain, next)
		pid = next
		time.Sleep(time.Until(began.Add(s.apart)))
	}
	l.drain()
	o.loadResult = l.check(chain)
	o.restarts = s.restarts
	windows := make([]window, len(o.hands))
	midLine := 0
	for i, h := range o.hands {
		windows[i] = h.window
		midLine += h.midLine
	}
	o.lat = l.latencies(windows)
	c.stop(pid)
	t.Logf("%d connections, %d lines answered, %d restarts, %d connections failed, %d answered by other pids than %d in turn; %d lines passed half read",
		o.conns, o.answered, o.restarts, o.failed, o.mismatched, len(chain), midLine)
	if s.restarts > 0 && midLine == 0 {
		t.Error("no line was half read at a hand-over")
	}
	return o
}

// needFiles skips the test if this process cannot open n files: each
// instance needs as many as the load.
func needFiles(t testing.TB, n int) {
	var lim syscall.Rlimit
	// Go raises the soft limit to the hard one at start-up.
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < uint64(n) {
		t.Skipf("RLIMIT_NOFILE is %d, %d needed: raise the hard limit (ulimit -Hn)", lim.Cur, n)
	}
}

// TestStreamRestarts restarts the program 6 times, by SIGHUP and by a
// second instance in turn, under 100 connections that each send a line
// every 10 to 50 ms: no connection closes, every line is answered once, in
// order, by the instance serving, with n counting on across restarts.
func TestStreamRestarts(t *testing.T) {
	scenario{conns: 100, min: 10 * time.Millisecond, max: 50 * time.Millisecond, restarts: 6, apart: 300 * time.Millisecond}.run(t)
}

// TestStreamFailedSuccessors makes successors fail: two crash before
// Ready (started by SIGHUP and beside the old instance), and one gets
// ready but cannot take the connections (PassConns fails). No connection
// is lost: the old instance serves them all on. Then a good successor
// takes over the failed one's new connections.
func TestStreamFailedSuccessors(t *testing.T) {
	c := newCluster(t)
	// The first instance keeps the fault dormant; its successors by SIGHUP
	// inherit it.
	pid := c.startFirst(faultEnv + "=crash")
	l := startLoad(t, c.epoch, c.addr, 50, 10*time.Millisecond, 50*time.Millisecond)
	l.waitAnswered(pid, nil)

	mark := c.mark()
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	c.waitLog(mark, pid, "restart failed, serving on: graceful: Restart: successor pid ")
	l.waitAnswered(pid, l.answeredCounts())

	crash := c.start(faultEnv + "=crash")
	if err := crash.Wait(); crash.ProcessState.ExitCode() != 3 {
		t.Fatalf("crashing instance: %v", err)
	}
	l.waitAnswered(pid, l.answeredCounts())

	// A successor that gets ready but cannot take the connections: the old
	// instance serves them on, and the successor serves new ones.
	mark = c.mark()
	fds := c.start(faultEnv + "=fds")
	if next := c.servingPid(pid); next != fds.Process.Pid {
		t.Fatalf("pid file names %d, want %d", next, fds.Process.Pid)
	}
	c.waitLog(mark, pid, "handing 50 connections to pid "+strconv.Itoa(fds.Process.Pid)+" failed, serving them on here")
	c.waitLog(mark, pid, "serving 50 connections on until they close")
	l.waitAnswered(pid, l.answeredCounts())
	l2 := startLoad(t, c.epoch, c.addr, 20, 10*time.Millisecond, 50*time.Millisecond)
	l2.waitAnswered(fds.Process.Pid, nil)

	l.drain()
	l.check([]int{pid})
	// Its connections closed, the old instance exits.
	c.waitLog(mark, pid, "exited")

	// A good successor takes over from the one that failed to take the
	// connections, with those it got since.
	mark = c.mark()
	c.start()
	next := c.servingPid(fds.Process.Pid)
	c.waitLog(mark, fds.Process.Pid, "handed 20 connections to pid "+strconv.Itoa(next))
	l2.waitAnswered(next, nil)
	l2.drain()
	l2.check([]int{fds.Process.Pid, next})
	c.stop(next)
}

// TestStreamConcurrentStarts starts three instances at once beside a
// serving one, under 100 connections: they take over one after the other,
// so an instance may hand over while its predecessor still passes it
// connections, which it then passes on. No line is lost, and each client is
// answered by the instances in the order of the chain.
func TestStreamConcurrentStarts(t *testing.T) {
	c := newCluster(t)
	pid := c.startFirst()
	l := startLoad(t, c.epoch, c.addr, 100, 10*time.Millisecond, 50*time.Millisecond)
	l.waitAnswered(pid, nil)
	for range 3 {
		c.start()
	}
	chain := []int{pid}
	for range 3 {
		l := c.waitLog(0, chain[len(chain)-1], "pid ")
		next, err := strconv.Atoi(strings.Fields(l.text)[1])
		if err != nil {
			t.Fatalf("log line %q", l.text)
		}
		c.waitLog(0, chain[len(chain)-1], "exited")
		chain = append(chain, next)
	}
	last := chain[len(chain)-1]
	if got := c.servingPid(0); got != last {
		t.Fatalf("pid file names %d, want %d", got, last)
	}
	l.waitAnswered(last, nil)
	l.drain()
	l.check(nil)
	for _, cl := range l.clients {
		i := 0
		for _, p := range cl.pids {
			for i < len(chain) && chain[i] != p {
				i++
			}
		}
		if i == len(chain) {
			t.Errorf("client %d answered by %v, not in the order of %v", cl.id, cl.pids, chain)
		}
	}
	forwarded := 0
	for _, p := range chain[1 : len(chain)-1] {
		ready := c.waitLog(0, p, "pid ")
		took := c.waitLog(0, p, "took 100 connections")
		if took.at > ready.at {
			forwarded++
		}
	}
	t.Logf("chain %v; %d instances handed over before they had taken all their predecessor's connections", chain, forwarded)
	c.stop(last)
}

// BenchmarkStreamFull runs the full scenario: 1,000 connections each
// sending a line every 10 to 50 ms, 20 restarts 300 ms apart, by SIGHUP and
// by a second instance in turn. It reports the answers' delays (the gap of
// a connection during a hand-over, and a line's delay outside them) and the
// hand-over times, as medians over the restarts.
func BenchmarkStreamFull(b *testing.B) {
	for range b.N {
		o := scenario{conns: 1000, min: 10 * time.Millisecond, max: 50 * time.Millisecond, restarts: 20, apart: 300 * time.Millisecond}.run(b)
		report(b, o)
	}
}

// BenchmarkStreamHandover measures the hand-over of 1,000 and of 10,000
// connections, each sending a line every 0.5 to 1.5 s: b.N restarts.
func BenchmarkStreamHandover(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			o := scenario{conns: n, min: 500 * time.Millisecond, max: 1500 * time.Millisecond, restarts: b.N, apart: 300 * time.Millisecond}.run(b)
			report(b, o)
		})
	}
}

func report(b *testing.B, o outcome) {
	b.ReportMetric(float64(o.failed), "failed-conns")
	b.ReportMetric(float64(o.answered), "lines")
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	var pass, accept []time.Duration
	for _, h := range o.hands {
		pass = append(pass, h.pass)
		accept = append(accept, h.accept)
	}
	slices.Sort(pass)
	slices.Sort(accept)
	b.ReportMetric(ms(quantile(pass, 0.5)), "pass-ms")
	b.ReportMetric(ms(quantile(accept, 0.5)), "accepted-ms")
	b.ReportMetric(ms(quantile(o.lat.gaps, 0.5)), "gap-median-ms")
	b.ReportMetric(ms(quantile(o.lat.gaps, 1)), "gap-worst-ms")
	b.ReportMetric(ms(quantile(o.lat.others, 0.5)), "line-median-ms")
	b.ReportMetric(ms(quantile(o.lat.others, 0.99)), "line-p99-ms")
	b.ReportMetric(ms(quantile(o.lat.others, 1)), "line-worst-ms")
	b.Logf("gap during hand-overs: median %v, p99 %v, worst %v over %d (connection, restart) pairs; outside: median %v, p99 %v, worst %v over %d lines",
		quantile(o.lat.gaps, 0.5), quantile(o.lat.gaps, 0.99), quantile(o.lat.gaps, 1), len(o.lat.gaps),
		quantile(o.lat.others, 0.5), quantile(o.lat.others, 0.99), quantile(o.lat.others, 1), len(o.lat.others))
	b.Logf("hand-over: Done to the last PassConns %v..%v, to the last AcceptConn %v..%v (median %v, %v)",
		quantile(pass, 0), quantile(pass, 1), quantile(accept, 0), quantile(accept, 1), quantile(pass, 0.5), quantile(accept, 0.5))
}
