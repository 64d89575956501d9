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
	k := &keeper{instances: map[int]bool{inst: true}}
	uid := os.Geteuid()
	msg := func(pid, uid int, vars map[string]string) keeperMsg {
		return keeperMsg{pid: pid, uid: uid, vars: vars}
	}
	k.message(msg(other, uid, map[string]string{"READY": "1"}))
	k.message(msg(inst, uid+1, map[string]string{"READY": "1"}))
	for _, v := range []string{"-1", "0", "x", strconv.Itoa(os.Getpid())} {
		k.message(msg(inst, uid, map[string]string{"MAINPID": v}))
	}
	if k.serving != 0 {
		t.Fatalf("serving %d after notifications it should ignore", k.serving)
	}
	fd, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	forged := msg(other, uid, map[string]string{keeperSockets: "x"})
	forged.fds = []int{fd}
	k.message(forged)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, syscall.EBADF) {
		t.Errorf("the descriptor of an ignored notification is open (%v)", err)
		unix.Close(fd)
	}
	if k.stored != nil {
		t.Errorf("kept the sockets of a process that is no instance")
	}
	k.message(msg(inst, uid, map[string]string{"READY": "1", "MAINPID": strconv.Itoa(inst)}))
	if k.serving != inst {
		t.Fatalf("serving %d after its instance's READY=1, want %d", k.serving, inst)
	}
	k.message(msg(inst, uid, map[string]string{"MAINPID": strconv.Itoa(other)}))
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
