//go:build linux

package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-go/graceful/example/internal/exampletest"
)

// The tests run the example as a real program: built once, with the test
// hooks of faults.go (-tags gracefulfaults), run on a free port of
// 127.0.0.1, restarted under load. The harness (the build, a cluster of
// instances and their log) is example/internal/exampletest, which the
// stream example's tests share.

var exampleBin string

func TestMain(m *testing.M) {
	if os.Getenv(baselineEnv) != "" {
		os.Exit(baselineMain())
	}
	os.Exit(exampletest.Main(m, &exampleBin))
}

// A cluster is the succession of instances that share one set of flags, and
// their common log, with a fault file that makes the next one fail.
type cluster struct {
	*exampletest.Cluster
	faultFile string
}

// newCluster returns a cluster of the example, with its flags and extra.
func newCluster(t testing.TB, extra ...string) *cluster {
	t.Helper()
	c := &cluster{Cluster: exampletest.New(t, "example", exampleBin)}
	c.faultFile = filepath.Join(c.Dir, "fault")
	c.Args = append(c.Args, extra...)
	c.Env = []string{faultEnv + "=" + c.faultFile}
	return c
}

// fault makes the next instance that takes over fail as f says (faultEnv).
func (c *cluster) fault(f string) {
	c.T.Helper()
	if err := os.WriteFile(c.faultFile, []byte(f), 0o600); err != nil {
		c.T.Fatal(err)
	}
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
	news    chan struct{}     // closed and replaced at each answer
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
		news:   make(chan struct{}),
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
	close(l.news)
	l.news = make(chan struct{})
	l.mu.Unlock()
	return nil
}

// answersPerInstance is how many requests the test lets each instance
// answer before it restarts it.
const answersPerInstance = 50

// waitPid waits until pid has answered n requests.
func (l *load) waitPid(t testing.TB, pid, n int) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		l.mu.Lock()
		got, news := l.pids[pid], l.news
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
	c.T.Helper()
	if i%2 == 0 {
		path = "SIGHUP"
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			c.T.Fatal(err)
		}
	} else {
		path = "second instance"
		c.Start()
	}
	next = c.ServingPid(pid)
	c.WaitContains(0, pid, "handed over to pid "+strconv.Itoa(next))
	l.waitPid(c.T, next, answersPerInstance)
	return next, path
}

// TestRestartUnderLoad restarts the example 20 times under load, by SIGHUP
// and by starting a second instance in turn, and checks that no request
// failed and that every instance served and exited cleanly.
func TestRestartUnderLoad(t *testing.T) {
	c := newCluster(t)
	c.StartFirst()
	pid := c.ServingPid(0)
	l := startLoad(t, c.Addr, testLoad)
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
	c.Stop(pid)
	if t.Failed() {
		return
	}
	if n := len(c.Pids()); n != restarts+1 {
		t.Errorf("%d instances logged, want %d", n, restarts+1)
	}
}

// TestFailedSuccessor makes successors crash, hang or refuse while they
// take over, started by SIGHUP and beside the running instance: the old
// instance says why and serves on, the pid file keeps naming it, no request
// fails, and good restarts by both paths work after them.
func TestFailedSuccessor(t *testing.T) {
	const readyTimeout = time.Second
	c := newCluster(t, "-ready-timeout", readyTimeout.String())
	pid := c.StartFirst()
	l := startLoad(t, c.Addr, testLoad)
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
		n := c.Mark()
		if i < 3 {
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			if l := c.WaitContains(n, pid, "successor failed: ").Text; !strings.Contains(l, why[fault]) {
				t.Errorf("%s by SIGHUP: %s, want %q", fault, l, why[fault])
			}
		} else {
			cmd := c.Start()
			failed := "hand-over to pid " + strconv.Itoa(cmd.Process.Pid) + " failed: "
			if fault == "hang" {
				// The old instance gives up on it; it would hang forever.
				c.WaitContains(n, pid, failed)
				cmd.Process.Kill()
			}
			if err := cmd.Wait(); err == nil || err.Error() != exit[fault] {
				t.Errorf("%s beside: the instance ended with %v, want %s", fault, err, exit[fault])
			}
			c.WaitContains(n, pid, failed)
		}
		c.WaitContains(n, 0, "fault: "+fault)
		// The old instance serves on, and the pid file names it.
		l.waitPid(t, pid, answersPerInstance*(i+2))
		if got := c.ServingPid(0); got != pid {
			t.Fatalf("after %s: the pid file names %d, want %d", fault, got, pid)
		}
	}

	// Good restarts: a second instance, then SIGHUP to it.
	good := c.Start()
	next := c.ServingPid(pid)
	if next != good.Process.Pid {
		t.Fatalf("pid file names %d, want %d", next, good.Process.Pid)
	}
	c.WaitContains(0, pid, "exited")
	l.waitPid(t, next, answersPerInstance)
	if err := syscall.Kill(next, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	last := c.ServingPid(next)
	l.waitPid(t, last, answersPerInstance)
	l.check(t)
	c.Stop(last)
}

// BenchmarkRestart restarts the example b.N times under the tests' load,
// draining with graceful.Drainer and with http.Server.Shutdown right after the
// hand-over, and reports the requests that failed per restart. The README's
// figures come from -benchtime 20x.
func BenchmarkRestart(b *testing.B) {
	for _, drain := range []string{"drainer", "shutdown"} {
		b.Run("drain="+drain, func(b *testing.B) {
			c := newCluster(b)
			c.Env = []string{drainEnv + "=" + drain}
			c.StartFirst()
			pid := c.ServingPid(0)
			l := startLoad(b, c.Addr, testLoad)
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
			c.Stop(pid)
		})
	}
}
