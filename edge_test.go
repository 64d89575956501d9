//go:build linux

package graceful

import (
	"errors"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Faults at the edges of the restart layer: files removed or that cannot
// be written, predecessors and successors that die at the wrong moment.

// A hand-over socket file removed while an instance serves (rm, or the
// directory made anew) is bound again, so that an instance started beside
// takes over. The instance checks its file every 20 ms here, not every
// second.
func TestSocketFileRebound(t *testing.T) {
	for _, how := range []string{"rm", "rm -rf dir; mkdir dir"} {
		t.Run(how, func(t *testing.T) {
			// Set before the instance starts, and restored once it
			// has stopped (cleanups run last first).
			old := socketFileCheck
			socketFileCheck = 20 * time.Millisecond
			t.Cleanup(func() { socketFileCheck = old })
			sock := filepath.Join(sockPath(t), "s")
			var plog logBuf
			pred := readyFirst(t, Config{Socket: sock, ErrorLog: log.New(&plog, "", 0)})
			if how == "rm" {
				os.Remove(sock)
			} else {
				os.RemoveAll(filepath.Dir(sock))
				os.Mkdir(filepath.Dir(sock), 0o700)
			}
			plog.waitFor(t, "bound it again")
			succ, err := Start(Config{Socket: sock})
			if err != nil {
				t.Fatalf("an instance started beside: %v", err)
			}
			defer succ.Stop()
			if !succ.Inherited() {
				t.Fatal("the instance started beside did not take over")
			}
			if err := succ.Ready(); err != nil {
				t.Fatal(err)
			}
			<-pred.Done()
		})
	}
}

// fullDir mounts a small tmpfs on a new directory and returns it with a
// function that fills it up.
func fullDir(t *testing.T) (dir string, fill func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting a small tmpfs needs root")
	}
	dir = t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		t.Skipf("skipped: mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir, func() {
		f, err := os.Create(filepath.Join(dir, "fill"))
		if err != nil {
			return // full already
		}
		defer f.Close()
		buf := make([]byte, 4096)
		for {
			if _, err := f.Write(buf); err != nil {
				return
			}
		}
	}
}

// On a full file system a successor cannot write its pid file: its Ready
// fails and its predecessor serves on, named by the pid file; a first
// instance there does not get ready either.
func TestPIDFileFullFailsReady(t *testing.T) {
	dir, fill := fullDir(t)
	pidFile := filepath.Join(dir, "app.pid")
	sock := sockPath(t)
	var plog logBuf
	pred := readyFirst(t, Config{Socket: sock, PIDFile: pidFile, ErrorLog: log.New(&plog, "", 0)})
	fill()
	for i := 0; i < 5; i++ {
		succ, err := Start(Config{Socket: sock, PIDFile: pidFile})
		if err != nil {
			t.Fatal(err)
		}
		if err := succ.Ready(); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("the successor's Ready on a full disk: %v, want ENOSPC", err)
		}
		succ.Stop()
	}
	plog.waitFor(t, "it cannot write its pid file")
	select {
	case <-pred.Done():
		t.Error("the predecessor handed over to a successor that failed its Ready")
	default:
	}
	if b, _ := os.ReadFile(pidFile); string(b) != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("the pid file holds %q", b)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".app.pid.*")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}

	first, err := Start(Config{Socket: sockPath(t), PIDFile: filepath.Join(dir, "first.pid")})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	if err := first.Ready(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("a first instance's Ready on a full disk: %v, want ENOSPC", err)
	}
}

// A predecessor that dies before it hands anything (here it answers the
// hello, then its connection and socket close, its file staying behind):
// the successor serves as the first instance.
func TestPredecessorDiesBeforeHanding(t *testing.T) {
	noLeaks(t)
	sock := sockPath(t)
	ln, err := listenUnix(sock, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	hln := ln.(*fileListener).UnixListener
	hln.SetUnlinkOnClose(false)
	go func() {
		conn, err := hln.Accept()
		if err != nil {
			return
		}
		var hello [helloLen]byte
		io.ReadFull(conn, hello[:])
		var answer [ackLen]byte
		putAck(answer[:], version, statusOK, 0)
		conn.Write(answer[:])
		hln.Close() // dead: nobody listens at the file any more
		conn.Close()
	}()
	var slog logBuf
	inst, err := Start(Config{Socket: sock, ErrorLog: log.New(&slog, "", 0)})
	if err != nil {
		t.Fatalf("Start with a predecessor that died: %v", err)
	}
	defer inst.Stop()
	if inst.Inherited() {
		t.Error("took over from a dead predecessor")
	}
	if err := inst.Ready(); err != nil {
		t.Fatal(err)
	}
	slog.waitFor(t, "unexpected EOF")
}

// The red team's steps: an instance started beside while the old one is
// killed 0 to 15 ms later. Whoever wins, something serves.
func TestPredecessorKilledWhileConnecting(t *testing.T) {
	trials := sweep(5, 50)
	nothing := 0
	for i := 0; i < trials; i++ {
		c := newChain(t)
		old := c.startFirst()
		next := c.start()
		time.Sleep(time.Duration(i%16) * time.Millisecond) // the scenario: the kill 0 to 15 ms later
		syscall.Kill(old, syscall.SIGKILL)
		pid := c.readyAfter(map[int]bool{old: true})
		if pid != next.Process.Pid {
			t.Fatalf("pid %d got ready, not the new instance %d", pid, next.Process.Pid)
		}
		resp, err := http.Get("http://" + c.addr + "/")
		if err != nil {
			nothing++
			t.Errorf("trial %d: nothing serves: %v\n%s", i, err, c.output())
			continue
		}
		resp.Body.Close()
		syscall.Kill(pid, syscall.SIGTERM)
		c.wait(pid, "exit ")
	}
	t.Logf("%d of %d trials left nothing serving", nothing, trials)
}

// A PassConns that fails before its transfer began refuses the successor
// where it waits for the next transfer: the successor reports the refusal,
// not a version mismatch.
func TestPassRefusalNotVersion(t *testing.T) {
	inst := readyFirst(t, Config{Socket: sockPath(t)})
	pred, succ := socketPair(t)
	defer succ.Close()
	go func() {
		defer pred.Close()
		var hello [helloLen]byte
		io.ReadFull(pred, hello[:])
		refuse(pred, "the predecessor keeps them")
	}()
	_, err := inst.receiveConns(&Client{Timeout: -1}, &predecessor{conn: succ, pid: os.Getpid()})
	if !errors.Is(err, errPassKept) {
		t.Errorf("receiveConns: %v, want errPassKept", err)
	}
}
