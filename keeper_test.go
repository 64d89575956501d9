//go:build linux

package graceful

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The keeper's parts that need no service; the example's tests run the
// keeper whole (example/keeper_test.go).

// A kept instance takes the keeper's variables out of its environment, so
// that a subprocess of the application (an sd_notify-aware one) cannot say
// READY=1 for the service, and gives them to its successors.
func TestKeptEnvironment(t *testing.T) {
	c := exec.Command(os.Args[0])
	c.Env = append(childEnvFor("keptenv"), keeperEnv+"=@graceful-test-keeper", "NOTIFY_SOCKET=@graceful-test-keeper")
	if out, err := c.CombinedOutput(); err != nil {
		t.Errorf("%v: %s", err, out)
	}
}

// The keeper takes notifications from its instances only: not from a
// process of the application that is none, nor from another user, and no
// MAINPID= that names no process, or the keeper itself (a signal to -1
// would reach every process the keeper may signal). What an ignored
// notification carried is closed.
func TestKeeperTrust(t *testing.T) {
	sleeper := func() int {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		return c.Process.Pid
	}
	inst, other := sleeper(), sleeper()
	k := &keeper{instances: map[int]bool{inst: true}, handedBy: map[int]int{}}
	uid := os.Geteuid()
	send := func(pid, uid int, body string, fds ...int) {
		k.take(keeperMsg{pid: pid, uid: uid, fds: fds}, []byte(body))
	}
	send(other, uid, "READY=1")
	send(inst, uid+1, "READY=1")
	for _, v := range []string{"-1", "0", "x", strconv.Itoa(os.Getpid())} {
		send(inst, uid, "MAINPID="+v)
	}
	if k.serving != 0 {
		t.Fatalf("serving %d after notifications it should ignore", k.serving)
	}
	fd, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	send(other, uid, keeperSockets+"=x", fd)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, syscall.EBADF) {
		t.Errorf("the descriptor of an ignored notification is open (%v)", err)
		unix.Close(fd)
	}
	if k.stored != nil {
		t.Errorf("kept the sockets of a process that is no instance")
	}
	send(inst, uid, "READY=1\nMAINPID="+strconv.Itoa(inst))
	if k.serving != inst {
		t.Fatalf("serving %d after its instance's READY=1, want %d", k.serving, inst)
	}
	send(inst, uid, "MAINPID="+strconv.Itoa(other))
	if k.serving != other || !k.instances[other] {
		t.Errorf("serving %d after MAINPID=%d from the instance", k.serving, other)
	}
}

// A predecessor that names its successor and exits at once: the keeper
// reads what it sent before it settles its end. It read the queue on
// another goroutine, so it settled the exit first now and then (3 runs in
// 6 of 50 restarts, under load): the end of the service, and no instance
// started after the next crash.
func TestKeeperReadsBeforeSettling(t *testing.T) {
	c := exec.Command(os.Args[0])
	c.Env = childEnvFor("keeperreap")
	if out, err := c.CombinedOutput(); err != nil {
		t.Errorf("%v: %s", err, out)
	}
}

// A keeper asked to stop exits once its instances have, though a
// subprocess of the application lives on: it waited for every orphan
// before, so a `sleep 300` held the service's pid after SIGTERM.
func TestKeeperLeavesOrphans(t *testing.T) {
	c := newChain(t, "GRACEFUL_TEST_KEEP=1")
	c.fault("orphan")
	cmd := c.start()
	keeper := cmd.Process.Pid
	pid := c.readyAfter(map[int]bool{keeper: true})
	orphan, _ := strconv.Atoi(strings.Fields(c.wait(pid, "orphan "))[2])
	defer syscall.Kill(orphan, syscall.SIGKILL)
	syscall.Kill(keeper, syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("the keeper ended with %v, want status 0", err)
	}
	if err := syscall.Kill(orphan, 0); err != nil {
		t.Errorf("the orphan ended before the keeper: %v", err)
	}
}

// A successor that dies while its predecessor drains, under a keeper: the
// predecessor, which started it and reaped it, tells the keeper, which
// starts the next instance at once, as for any crash. The keeper took the
// dead successor for one serving under a keeper of its own before, and
// exited 0 with nothing serving once the predecessor ended.
func TestKeeperSuccessorDiesWhilePredecessorDrains(t *testing.T) {
	c := newChain(t, "GRACEFUL_TEST_KEEP=1")
	cmd := c.start()
	keeper := cmd.Process.Pid
	first := c.readyAfter(map[int]bool{keeper: true})
	release := holdRequest(t, strings.Fields(c.wait(first, "ready "))[2], first)
	syscall.Kill(keeper, syscall.SIGHUP)
	second := c.readyAfter(map[int]bool{keeper: true, first: true})
	syscall.Kill(second, syscall.SIGKILL)
	third := c.readyAfter(map[int]bool{keeper: true, first: true, second: true})
	if p := parentOf(third); p != keeper {
		t.Errorf("pid %d serves, started by %d, not by the keeper", third, p)
	}
	if _, err := syscall.Getpgid(first); err != nil {
		t.Errorf("pid %d ended before the next instance served: %v\n%s", first, err, c.output())
	}
	release() // the first instance's drain ends
	t.Logf("pid %d serves after %d died and %d drained", third, second, first)
	syscall.Kill(keeper, syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("the keeper ended with %v, want status 0; output:\n%s", err, c.output())
	}
}
