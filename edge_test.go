//go:build linux

package graceful

import (
	"errors"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Faults at the edges of the restart layer: files removed or that cannot
// be written, predecessors and successors that die at the wrong moment.

// A hand-over socket file removed while an instance serves (rm, or the
// directory made anew) is bound again, so that an instance started beside
// takes over.
func TestSocketFileRebound(t *testing.T) {
	for _, how := range []string{"rm", "rm -rf dir; mkdir dir"} {
		t.Run(how, func(t *testing.T) {
			sock := filepath.Join(sockPath(t), "s")
			var plog syncLog
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
	var plog syncLog
	pred := readyFirst(t, Config{Socket: sock, PIDFile: pidFile, ErrorLog: log.New(&plog, "", 0)})
	fill()
	succ, err := Start(Config{Socket: sock, PIDFile: pidFile})
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Stop()
	if err := succ.Ready(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("the successor's Ready on a full disk: %v, want ENOSPC", err)
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
