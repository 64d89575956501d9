//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-go/graceful/example/internal/exampletest"
)

// The keeper: the example as a container's init (pid 1), in a PID
// namespace and in a real OCI container (runc), and with -keep-pid under a
// manager that tracks one pid (the test). The long sweeps run with
// GRACEFUL_LONG=1, which CI sets (exampletest.Long lists them).

// kept is a service run by a keeper, and what the test learns of it.
type kept struct {
	c      *cluster
	signal func(syscall.Signal) // to the keeper
	wait   func() error         // for the keeper's exit
	zombie func() int           // zombies among its processes
	kill   func(pid int)        // SIGKILL to an instance, by the pid it says; nil: syscall.Kill
	pid    int                  // the serving instance, as it says
}

// start waits for the first instance, which the keeper started.
func (k *kept) start(t *testing.T) *load {
	t.Helper()
	k.c.WaitListening(0)
	k.pid = k.c.ServingPid(0)
	ld := startLoad(t, k.c.Addr, testLoad)
	ld.waitPid(t, k.pid, answersPerInstance)
	return ld
}

// restarts sends the keeper n SIGHUPs under load: each takes effect, and no
// request fails.
func (k *kept) restarts(t *testing.T, ld *load, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		k.signal(syscall.SIGHUP)
		next := k.c.ServingPid(k.pid)
		ld.waitPid(t, next, answersPerInstance)
		k.pid = next
	}
	ld.check(t)
	k.noZombies(t)
}

// noZombies waits until the keeper has reaped every process that ended.
func (k *kept) noZombies(t *testing.T) {
	t.Helper()
	n := 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if n = k.zombie(); n == 0 {
			return
		}
	}
	t.Errorf("%d zombies", n)
}

// stop sends SIGTERM to the keeper under load: it ends with status 0 once
// every instance has, and leaves nothing behind. Connections that come
// while the service stops are refused at once. A keeper that held a copy
// of the socket held each client's next connection until it exited, then
// reset it: one per client. Closing a listener resets only those in its
// queue at that moment, as without a keeper: a few at most.
func (k *kept) stop(t *testing.T) {
	t.Helper()
	ld := startLoad(t, k.c.Addr, testLoad)
	ld.waitPid(t, k.pid, 2*answersPerInstance)
	k.signal(syscall.SIGTERM)
	if err := k.wait(); err != nil {
		t.Errorf("the keeper ended with %v, want status 0", err)
	}
	ld.finish()
	ld.mu.Lock()
	t.Logf("while stopping: %d refused, %d reset", ld.refused, ld.reset)
	if ld.reset >= len(testLoad) {
		t.Errorf("%d requests reset while the service stopped, one per client: %v", ld.reset, ld.errs)
	}
	ld.mu.Unlock()
	k.c.EndLog() // every instance has ended
	if _, err := os.Lstat(k.c.PIDFile); err == nil {
		t.Errorf("%s left behind", k.c.PIDFile)
	}
}

// keepPID starts the example with -keep-pid as the test's child, the
// keeper of pid kp.
func keepPID(t *testing.T) (k *kept, kp int) {
	c := newCluster(t, "-keep-pid")
	cmd := c.Start()
	kp = cmd.Process.Pid
	return &kept{c: c, signal: func(s syscall.Signal) { syscall.Kill(kp, s) }, wait: cmd.Wait,
		zombie: func() int { return zombies(kp) }}, kp
}

// TestKeepPID runs the example with -keep-pid as the child of a manager
// that tracks one pid: SIGHUPs to that pid restart the service without a
// failed request, SIGKILLs of the serving instance refuse no connection,
// and SIGTERM ends it with status 0, leaving no process behind.
func TestKeepPID(t *testing.T) {
	k, kp := keepPID(t)
	ld := k.start(t)
	k.restarts(t, ld, exampletest.Sweep(3, 20))
	k.crashes(t, exampletest.Sweep(3, 20))
	// RSS counts the binary's pages, which the keeper shares with the
	// instances; its own memory is what is private to it.
	t.Logf("keeper RSS %d KiB, %d KiB its own; serving instance's %d KiB, %d KiB its own; keeper CPU while idle: %v",
		rss(kp, "Rss"), rss(kp, "Private_Clean")+rss(kp, "Private_Dirty"),
		rss(k.pid, "Rss"), rss(k.pid, "Private_Clean")+rss(k.pid, "Private_Dirty"), idleCPU(kp, time.Duration(exampletest.Sweep(250, 2000))*time.Millisecond))
	k.stop(t)
}

// TestKeeperFlood floods the keeper's socket, as any local process may
// (its name is no secret), while the service restarts and crashes: the
// keeper reads on, ignores what is forged, and starts instances as ever.
// Its loop blocked for good at the first reap before: a full socket queue
// held the barrier it wrote itself.
func TestKeeperFlood(t *testing.T) {
	k, kp := keepPID(t)
	ld := k.start(t)
	sent := flood(t, kp)
	k.restarts(t, ld, 3)
	k.crashes(t, 3)
	t.Logf("%d forged notifications sent", sent())
	k.stop(t)
}

// flood sends the keeper kp forged notifications as fast as it can, until
// the returned function, which says how many it sent, is called.
func flood(t *testing.T, kp int) func() int {
	t.Helper()
	name := fmt.Sprintf("@graceful-keeper-%d-", kp)
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	var addr string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 7 && strings.HasPrefix(f[7], name) {
			addr = f[7]
		}
	}
	if addr == "" {
		t.Fatalf("no socket %s* in /proc/net/unix", name)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	done, ended := make(chan struct{}), make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-done:
				ended <- n
				return
			default:
			}
			conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := conn.Write([]byte("READY=1\nMAINPID=1\nSTOPPING=1")); err == nil {
				n++
			}
		}
	}()
	return func() int {
		close(done)
		defer conn.Close()
		return <-ended
	}
}

// crashes kills the serving instance n times under load: the keeper starts
// another with its copy of the sockets, so no connection is refused; only
// the requests in flight on the killed instance fail.
func (k *kept) crashes(t *testing.T, n int) {
	t.Helper()
	ld := startLoad(t, k.c.Addr, testLoad)
	var gaps []time.Duration
	for i := 0; i < n; i++ {
		// A crash of an instance that has served a while: the keeper
		// backs off only for one that dies soon after its start.
		ld.mu.Lock()
		served := ld.first[k.pid]
		ld.mu.Unlock()
		time.Sleep(time.Until(served.Add(600 * time.Millisecond))) // the scenario
		killed := time.Now()
		if k.kill != nil {
			k.kill(k.pid)
		} else {
			syscall.Kill(k.pid, syscall.SIGKILL)
		}
		next := k.c.ServingPid(k.pid)
		ld.waitPid(t, next, answersPerInstance)
		ld.mu.Lock()
		gaps = append(gaps, ld.first[next].Sub(killed))
		ld.mu.Unlock()
		k.pid = next
	}
	ld.finish()
	ld.mu.Lock()
	defer ld.mu.Unlock()
	failed := 0
	for _, n := range ld.failed {
		failed += n
	}
	t.Logf("%d crashes: %d requests failed (in flight on the killed instances), %d refused; kill to the first answer of the next: %v",
		n, failed, ld.refused, gaps)
	if ld.refused > 0 {
		t.Errorf("%d connections refused", ld.refused)
	}
	k.noZombies(t)
}

// zombies counts the zombie children of pid.
func zombies(pid int) int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			n++
		}
	}
	return n
}

// rss returns a figure of /proc/pid/smaps_rollup, in KiB.
func rss(pid int, field string) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// idleCPU is the CPU time pid takes over d.
func idleCPU(pid int, d time.Duration) time.Duration {
	ticks := func() int {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			return 0
		}
		u, _ := strconv.Atoi(f[11])
		s, _ := strconv.Atoi(f[12])
		return u + s
	}
	before := ticks()
	// The span of the measure.
	time.Sleep(d)
	return time.Duration(ticks()-before) * 10 * time.Millisecond // USER_HZ is 100
}

// TestPID1 runs the example as the init of a PID namespace (inside a user
// namespace for an ordinary user): it keeps by itself, without -keep-pid.
func TestPID1(t *testing.T) {
	args := []string{"-p", "-f", "--mount-proc"}
	if os.Geteuid() != 0 {
		args = append([]string{"-r"}, args...)
	}
	if out, err := exec.Command("unshare", append(args, "true")...).CombinedOutput(); err != nil {
		t.Skipf("skipped: no PID namespace here: unshare %v: %v %s", args, err, out)
	}
	c := newCluster(t)
	cmd := exec.Command("unshare", append(append(args, c.Bin), c.Args...)...)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	c.StartCmd(cmd)
	init := childOf(t, cmd.Process.Pid)
	t.Cleanup(func() { syscall.Kill(init, syscall.SIGKILL) }) // its namespace with it
	k := &kept{c: c, signal: func(s syscall.Signal) { syscall.Kill(init, s) }, wait: cmd.Wait,
		zombie: func() int { return zombies(init) }}
	ld := k.start(t)
	k.restarts(t, ld, exampletest.Sweep(3, 30))
	k.stop(t)
}

// childOf waits for the child of pid and returns it.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.Atoi(f[0])
			return n
		}
	}
	t.Fatalf("pid %d started no child", pid)
	return 0
}

var (
	staticOnce sync.Once
	staticBin  string
	staticErr  error
)

// TestContainer runs the example as the init of a real OCI container
// (runc, as Docker, containerd and Kubernetes run it) that shares the
// host's network: restarts by `runc kill ID HUP` under load fail no
// request, the container runs throughout with no zombie, and `runc kill ID
// TERM` ends it with status 0.
func TestContainer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: runc needs root")
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("skipped: no runc (Debian's package runc)")
	}
	bundle := containerBundle(t)
	c := newCluster(t)
	c.PIDFile = filepath.Join(bundle, "rootfs", "example.pid")
	id := fmt.Sprintf("graceful-test-%d", os.Getpid())
	cmd := exec.Command(runc, "run", "--bundle", bundle, id)
	c.StartCmd(cmd)
	t.Cleanup(func() { exec.Command(runc, "delete", "--force", id).Run() })
	k := &kept{c: c, wait: cmd.Wait,
		signal: func(s syscall.Signal) {
			if out, err := exec.Command(runc, "kill", id, strconv.Itoa(int(s))).CombinedOutput(); err != nil {
				t.Errorf("runc kill %d: %v %s", s, err, out)
			}
		},
		zombie: func() int {
			out, _ := exec.Command(runc, "ps", id, "-o", "stat").Output()
			return strings.Count(string(out), "Z")
		},
		kill: func(pid int) { syscall.Kill(hostPid(t, runc, id, pid), syscall.SIGKILL) }}
	ld := k.start(t)
	k.restarts(t, ld, exampletest.Sweep(5, 30))
	k.crashes(t, exampletest.Sweep(3, 20))
	k.stop(t)
}

// hostPid returns the pid on the host of the process pid of container id.
func hostPid(t *testing.T, runc, id string, pid int) int {
	t.Helper()
	out, err := exec.Command(runc, "state", id).Output()
	var state struct{ Pid int }
	if err == nil {
		err = json.Unmarshal(out, &state)
	}
	if err != nil {
		t.Fatalf("runc state: %v", err)
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", state.Pid))
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		host, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", host)); l != ns {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", host))
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "NSpid:" && f[len(f)-1] == strconv.Itoa(pid) {
				return host
			}
		}
	}
	t.Fatalf("no pid %d in container %s", pid, id)
	return 0
}

// containerBundle makes an OCI bundle whose root holds only the example,
// built static, and whose init it is: FROM scratch, no init of its own.
func containerBundle(t *testing.T) string {
	t.Helper()
	staticOnce.Do(func() {
		dir, err := os.MkdirTemp("", "graceful-static")
		if err != nil {
			staticErr = err
			return
		}
		staticBin = filepath.Join(dir, "example")
		cmd := exec.Command("go", "build", "-o", staticBin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			staticErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if staticErr != nil {
		t.Fatal(staticErr)
	}
	bundle := t.TempDir()
	root := filepath.Join(bundle, "rootfs")
	os.Mkdir(root, 0o755)
	b, err := os.ReadFile(staticBin)
	if err == nil {
		err = os.WriteFile(filepath.Join(root, "example"), b, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	if out, err := exec.Command("runc", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v %s", err, out)
	}
	var spec map[string]any
	b, err = os.ReadFile(filepath.Join(bundle, "config.json"))
	if err == nil {
		err = json.Unmarshal(b, &spec)
	}
	if err != nil {
		t.Fatal(err)
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/example", "-listen", fmt.Sprintf("127.0.0.1:%d", port), "-pid-file", "/example.pid"}
	spec["root"].(map[string]any)["readonly"] = false
	// The host's network, where the test's load comes from.
	linux := spec["linux"].(map[string]any)
	var nss []any
	for _, ns := range linux["namespaces"].([]any) {
		if ns.(map[string]any)["type"] != "network" {
			nss = append(nss, ns)
		}
	}
	linux["namespaces"] = nss
	if b, err = json.Marshal(spec); err == nil {
		err = os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
	return bundle
}

// freePort returns a port of 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
