//go:build linux

package exampletest

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

// Long reports whether the tests run in their long forms: with
// GRACEFUL_LONG set in the environment, as CI does. By default they run
// short. The examples' tests with a long form, and their sizes, short and
// long:
//
//   - TestKeepPID: 3 and 20 restarts, 3 and 20 crashes, and the keeper's
//     CPU while idle over 250 ms and 2 s
//   - TestPID1: 3 and 30 restarts
//   - TestContainer: 5 and 30 restarts
func Long() bool {
	return os.Getenv("GRACEFUL_LONG") != ""
}

// Sweep is n, or nLong in the long form.
func Sweep(n, nLong int) int {
	if Long() {
		return nLong
	}
	return n
}

// Main builds the program in the working directory (the package under
// test) with its test hooks (-tags gracefulfaults), and with the race
// detector if the tests have it, into a temporary directory; sets *bin to
// it; runs the tests; and returns their exit code.
func Main(m *testing.M, bin *string) int {
	dir, err := os.MkdirTemp("", "graceful-example")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*bin = filepath.Join(dir, filepath.Base(wd))
	args := []string{"build", "-tags", "gracefulfaults", "-o", *bin}
	if Race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the program:", err)
		return 1
	}
	return m.Run()
}

// A Cluster is the succession of instances of a program that share one set
// of flags, and their common log (their stdout and stderr), each line with
// the time the test read it.
type Cluster struct {
	T testing.TB
	// Name is the program's, as its log lines say it: "name[pid] text".
	Name string
	// Bin is the program; Args, the flags of every instance; Env, added to
	// the environment of every instance.
	Bin  string
	Args []string
	Env  []string
	// Dir holds the hand-over socket Sock and the pid file PIDFile.
	Dir, Sock, PIDFile string
	// Addr is the address the first instance serves (StartFirst).
	Addr string
	// Epoch is when the cluster began: the time of the log's lines and a
	// load's measures count from it.
	Epoch time.Time

	logW    *os.File
	logDone chan struct{}

	mu      sync.Mutex
	lines   []Line
	changed chan struct{} // closed and replaced at each line
	cmds    []*exec.Cmd   // the processes the test started itself
	faulty  map[int]bool  // instances started to fail
}

// A Line is a line of the cluster's log.
type Line struct {
	At   time.Duration // since the epoch, when the test read it
	Pid  int           // the instance's, 0 if the line names none
	Text string        // after the prefix "15:04:05.000000 name[pid] "
}

// New returns a cluster of instances of the program bin, whose log lines
// say name, with its flags: the first instance listens on a free port of
// 127.0.0.1, the others take that socket over. Whatever happens, the test
// leaves no instance behind.
func New(t testing.TB, name, bin string) *Cluster {
	t.Helper()
	// A short directory: socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "gex")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &Cluster{
		T:       t,
		Name:    name,
		Bin:     bin,
		Dir:     dir,
		Sock:    filepath.Join(dir, "handover.sock"),
		PIDFile: filepath.Join(dir, name+".pid"),
		Epoch:   time.Now(),
		logDone: make(chan struct{}),
		changed: make(chan struct{}),
		faulty:  map[int]bool{},
	}
	c.Args = []string{"-listen", "127.0.0.1:0", "-socket", c.Sock, "-pid-file", c.PIDFile}
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
func (c *Cluster) cleanup() {
	c.mu.Lock()
	cmds := c.cmds
	c.mu.Unlock()
	for _, cmd := range cmds {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	for _, pid := range c.Pids() {
		// Only if the pid is still an instance, not a reused one.
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.HasPrefix(cmdline, []byte(c.Bin+"\x00")) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	c.logW.Close()
	if c.T.Failed() {
		c.T.Logf("log of the instances:\n%s", c.LogText())
	}
}

func (c *Cluster) readLog(r *os.File) {
	defer close(c.logDone)
	defer r.Close()
	tag := " " + c.Name + "["
	for sc := bufio.NewScanner(r); sc.Scan(); {
		l := Line{At: time.Since(c.Epoch), Text: sc.Text()}
		if _, rest, ok := strings.Cut(sc.Text(), tag); ok {
			if p, text, ok := strings.Cut(rest, "] "); ok {
				l.Pid, _ = strconv.Atoi(p)
				l.Text = text
			}
		}
		c.mu.Lock()
		c.lines = append(c.lines, l)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
}

// LogText is the log so far, each line with its time and pid.
func (c *Cluster) LogText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, l := range c.lines {
		fmt.Fprintf(&b, "%9.3fms [%d] %s\n", float64(l.At)/1e6, l.Pid, l.Text)
	}
	return b.String()
}

// Mark returns the number of log lines so far, for the waits.
func (c *Cluster) Mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// Wait waits for a line from the from-th on that matches, what describing
// it for the failure, and returns it.
func (c *Cluster) Wait(from int, what string, match func(Line) bool) Line {
	c.T.Helper()
	timeout := time.After(60 * time.Second)
	for {
		c.mu.Lock()
		for _, l := range c.lines[from:] {
			if match(l) {
				c.mu.Unlock()
				return l
			}
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			c.T.Fatalf("no log line %s", what)
		}
	}
}

// WaitPrefix waits for a line of pid (0: of any instance) from the from-th
// on that starts with s.
func (c *Cluster) WaitPrefix(from, pid int, s string) Line {
	c.T.Helper()
	return c.Wait(from, fmt.Sprintf("of pid %d starting with %q", pid, s), func(l Line) bool {
		return (pid == 0 && l.Pid != 0 || l.Pid == pid) && strings.HasPrefix(l.Text, s)
	})
}

// WaitContains waits for a line of pid (0: of any instance) from the
// from-th on that contains s.
func (c *Cluster) WaitContains(from, pid int, s string) Line {
	c.T.Helper()
	return c.Wait(from, fmt.Sprintf("of pid %d with %q", pid, s), func(l Line) bool {
		return (pid == 0 && l.Pid != 0 || l.Pid == pid) && strings.Contains(l.Text, s)
	})
}

// Pids returns every pid that logged a line, in order.
func (c *Cluster) Pids() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var pids []int
	for _, l := range c.lines {
		if l.Pid != 0 && !slices.Contains(pids, l.Pid) {
			pids = append(pids, l.Pid)
		}
	}
	return pids
}

// Start starts an instance with the cluster's flags and environment, and
// env, which makes it faulty: its exit is not checked.
func (c *Cluster) Start(env ...string) *exec.Cmd {
	c.T.Helper()
	cmd := exec.Command(c.Bin, c.Args...)
	// Under -race a process sleeps a second at exit unless told not to.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	cmd.Env = append(append(cmd.Env, c.Env...), env...)
	c.StartCmd(cmd)
	if len(env) > 0 {
		c.mu.Lock()
		c.faulty[cmd.Process.Pid] = true
		c.mu.Unlock()
	}
	return cmd
}

// StartCmd starts cmd with its output to the log; it is killed when the
// test ends, if it still runs.
func (c *Cluster) StartCmd(cmd *exec.Cmd) {
	c.T.Helper()
	cmd.Stdout, cmd.Stderr = c.logW, c.logW
	if err := cmd.Start(); err != nil {
		c.T.Fatal(err)
	}
	c.mu.Lock()
	c.cmds = append(c.cmds, cmd)
	c.mu.Unlock()
}

// StartFirst starts the first instance (with env, as Start), waits until
// it listens, learns its address, and returns its pid.
func (c *Cluster) StartFirst(env ...string) int {
	c.T.Helper()
	cmd := c.Start(env...)
	c.WaitListening(cmd.Process.Pid)
	return cmd.Process.Pid
}

// WaitListening waits until the instance pid (0: any) says that it listens
// on its first socket, and learns the address.
func (c *Cluster) WaitListening(pid int) {
	c.T.Helper()
	l := c.WaitPrefix(0, pid, "listening on ")
	c.Addr = strings.TrimPrefix(strings.Fields(strings.TrimPrefix(l.Text, "listening on "))[0], "http://")
}

// ServingPid waits until the pid file names a pid other than old, which
// an instance writes once it serves, and returns it.
func (c *Cluster) ServingPid(old int) int {
	c.T.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		b, err := os.ReadFile(c.PIDFile)
		if err == nil {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				c.T.Fatalf("pid file holds %q", b)
			}
			if pid != old {
				return pid
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			c.T.Fatal(err)
		}
		if time.Now().After(deadline) {
			c.T.Fatalf("the pid file still names %d", old)
		}
	}
}

// EndLog closes the test's end of the log and waits until every process
// that writes it has ended: until no instance runs.
func (c *Cluster) EndLog() {
	c.T.Helper()
	c.logW.Close()
	select {
	case <-c.logDone:
	case <-time.After(30 * time.Second):
		c.T.Fatal("instances still running 30s after the last exited")
	}
}

// Stop sends SIGTERM to the serving instance and checks that every
// instance exited cleanly (but those started faulty, or that said
// "fault: "), and left no process, socket file or pid file.
func (c *Cluster) Stop(pid int) {
	c.T.Helper()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		c.T.Fatal(err)
	}
	c.WaitPrefix(0, pid, "exited")
	c.mu.Lock()
	cmds := c.cmds
	for _, l := range c.lines {
		if strings.HasPrefix(l.Text, "fault: ") {
			c.faulty[l.Pid] = true
		}
	}
	c.mu.Unlock()
	for _, cmd := range cmds {
		if cmd.ProcessState != nil {
			continue // waited for by the test
		}
		if err := cmd.Wait(); err != nil && !c.faulty[cmd.Process.Pid] {
			c.T.Errorf("instance %d: %v", cmd.Process.Pid, err)
		}
	}
	// Every process that holds the log pipe is an instance still running.
	c.EndLog()
	// A process closes its descriptors a moment before it is gone.
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range c.Pids() {
		for Alive(pid) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if Alive(pid) {
			c.T.Errorf("pid %d still running", pid)
		}
	}
	for _, f := range []string{c.Sock, c.PIDFile} {
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			c.T.Errorf("%s left behind (%v)", f, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.HasPrefix(l.Text, "exited") && l.Text != "exited" && !c.faulty[l.Pid] {
			c.T.Errorf("unclean exit of pid %d: %s", l.Pid, l.Text)
		}
	}
}

// Alive reports whether pid runs; a zombie has exited.
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}
