//go:build linux

package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-go/graceful/example/internal/exampletest"
)

// The tests run the program as it is: built once, run on a free port of
// 127.0.0.1, restarted under a load of clients that check every answer.
// The harness (the build, a cluster of instances and their log) is
// example/internal/exampletest, which the web example's tests share.

var streamBin string

func TestMain(m *testing.M) {
	os.Exit(exampletest.Main(m, &streamBin))
}

// A cluster is the succession of instances that share one set of flags,
// and their common log, each line with the time the test read it.
type cluster struct {
	*exampletest.Cluster
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	return &cluster{exampletest.New(t, "stream", streamBin)}
}

// startFirst starts the first instance (with env, which makes it faulty)
// and learns its address and pid.
func (c *cluster) startFirst(env ...string) int {
	c.T.Helper()
	pid := c.StartFirst(env...)
	if got := c.ServingPid(0); got != pid {
		c.T.Fatalf("pid file names %d, want %d", got, pid)
	}
	return pid
}

// restart restarts the serving instance pid, by SIGHUP when i is even and
// by a second instance when it is odd, with the holder clients in
// mid-line, and waits until the old instance has handed over and exited
// and every client has had an answer from the new one.
func (c *cluster) restart(l *load, pid, i int) (next int, h handOver) {
	c.T.Helper()
	release := l.holdLines()
	mark := c.Mark()
	if i%2 == 0 {
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			c.T.Fatal(err)
		}
	} else {
		c.Start()
	}
	next = c.ServingPid(pid)
	begin := c.WaitPrefix(mark, pid, fmt.Sprintf("pid %d is ready: handing over ", next))
	handed := c.WaitPrefix(mark, pid, "handed ")
	var err error
	h.passed, h.midLine, h.pass, err = parseHanded(handed.Text)
	if err != nil {
		c.T.Fatal(err)
	}
	c.WaitPrefix(mark, pid, "exited")
	took := c.WaitPrefix(mark, next, fmt.Sprintf("took %d connections ", h.passed))
	if h.accept, err = parseTook(took.Text); err != nil {
		c.T.Fatal(err)
	}
	h.window = window{begin.At, took.At}
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
	l := startLoad(t, c.Epoch, c.Addr, s.conns, s.min, s.max)
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
		time.Sleep(time.Until(began.Add(s.apart))) // the scenario: restarts that far apart
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
	c.Stop(pid)
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
	l := startLoad(t, c.Epoch, c.Addr, 50, 10*time.Millisecond, 50*time.Millisecond)
	l.waitAnswered(pid, nil)

	mark := c.Mark()
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	c.WaitPrefix(mark, pid, "restart failed, serving on: graceful: Restart: successor pid ")
	l.waitAnswered(pid, l.answeredCounts())

	crash := c.Start(faultEnv + "=crash")
	if err := crash.Wait(); crash.ProcessState.ExitCode() != 3 {
		t.Fatalf("crashing instance: %v", err)
	}
	l.waitAnswered(pid, l.answeredCounts())

	// A successor that gets ready but cannot take the connections: the old
	// instance serves them on, and the successor serves new ones.
	mark = c.Mark()
	fds := c.Start(faultEnv + "=fds")
	if next := c.ServingPid(pid); next != fds.Process.Pid {
		t.Fatalf("pid file names %d, want %d", next, fds.Process.Pid)
	}
	c.WaitPrefix(mark, pid, "handing 50 connections to pid "+strconv.Itoa(fds.Process.Pid)+" failed, serving them on here")
	c.WaitPrefix(mark, pid, "serving 50 connections on until they close")
	l.waitAnswered(pid, l.answeredCounts())
	l2 := startLoad(t, c.Epoch, c.Addr, 20, 10*time.Millisecond, 50*time.Millisecond)
	l2.waitAnswered(fds.Process.Pid, nil)

	l.drain()
	l.check([]int{pid})
	// Its connections closed, the old instance exits.
	c.WaitPrefix(mark, pid, "exited")

	// A good successor takes over from the one that failed to take the
	// connections, with those it got since.
	mark = c.Mark()
	c.Start()
	next := c.ServingPid(fds.Process.Pid)
	c.WaitPrefix(mark, fds.Process.Pid, "handed 20 connections to pid "+strconv.Itoa(next))
	l2.waitAnswered(next, nil)
	l2.drain()
	l2.check([]int{fds.Process.Pid, next})
	c.Stop(next)
}

// TestStreamConcurrentStarts starts three instances at once beside a
// serving one, under 100 connections: they take over one after the other,
// so an instance may hand over while its predecessor still passes it
// connections, which it then passes on. No line is lost, and each client is
// answered by the instances in the order of the chain.
func TestStreamConcurrentStarts(t *testing.T) {
	c := newCluster(t)
	pid := c.startFirst()
	l := startLoad(t, c.Epoch, c.Addr, 100, 10*time.Millisecond, 50*time.Millisecond)
	l.waitAnswered(pid, nil)
	for range 3 {
		c.Start()
	}
	chain := []int{pid}
	for range 3 {
		l := c.WaitPrefix(0, chain[len(chain)-1], "pid ")
		next, err := strconv.Atoi(strings.Fields(l.Text)[1])
		if err != nil {
			t.Fatalf("log line %q", l.Text)
		}
		c.WaitPrefix(0, chain[len(chain)-1], "exited")
		chain = append(chain, next)
	}
	last := chain[len(chain)-1]
	if got := c.ServingPid(0); got != last {
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
		ready := c.WaitPrefix(0, p, "pid ")
		took := c.WaitPrefix(0, p, "took 100 connections")
		if took.At > ready.At {
			forwarded++
		}
	}
	t.Logf("chain %v; %d instances handed over before they had taken all their predecessor's connections", chain, forwarded)
	c.Stop(last)
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
