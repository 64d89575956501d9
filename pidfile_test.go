//go:build linux

package graceful

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// readFile returns the content of path, or "missing".
func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "missing"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// pidTemps lists the temporary files of the pid file path.
func pidTemps(t *testing.T, path string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPIDFileTwoPhases prepares the pid file, which changes nothing a
// reader sees until commit, and aborts it, which leaves nothing behind.
func TestPIDFileTwoPhases(t *testing.T) {
	checkFds(t)
	path := filepath.Join(t.TempDir(), "app.pid")
	me := strconv.Itoa(os.Getpid()) + "\n"
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := unix.Umask(0o077)
	p, err := preparePIDFile(path)
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	tmp := tempPIDFile(path, os.Getpid())
	if got := readFile(t, tmp); got != me {
		t.Errorf("temporary file %s holds %q, want %q", tmp, got, me)
	}
	if got := readFile(t, path); got != "1\n" {
		t.Errorf("before commit, the pid file holds %q, want the old %q", got, "1\n")
	}
	if err := p.commit(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); got != me {
		t.Errorf("after commit, the pid file holds %q, want %q", got, me)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode() != 0o644 {
		t.Errorf("pid file mode %v (%v), want -rw-r--r--", fi.Mode(), err)
	}
	if m := pidTemps(t, path); len(m) != 0 {
		t.Errorf("temporary files left after commit: %v", m)
	}
	p.abort() // after commit: nothing to do
	if got := readFile(t, path); got != me {
		t.Errorf("abort after commit: the pid file holds %q", got)
	}
	if err := p.commit(); err == nil {
		t.Error("a second commit succeeded")
	}

	// Abort.
	os.WriteFile(path, []byte("1\n"), 0o644)
	p, err = preparePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p.abort()
	p.abort()
	if m := pidTemps(t, path); len(m) != 0 {
		t.Errorf("temporary files left after abort: %v", m)
	}
	if got := readFile(t, path); got != "1\n" {
		t.Errorf("after abort, the pid file holds %q, want the old %q", got, "1\n")
	}
	removePIDFile(path) // not this process's
	if got := readFile(t, path); got != "1\n" {
		t.Errorf("removePIDFile removed another's pid file")
	}
	if p, err := preparePIDFile(path); err != nil {
		t.Fatal(err)
	} else if err := p.commit(); err != nil {
		t.Fatal(err)
	}
	removePIDFile(path)
	if got := readFile(t, path); got != "missing" {
		t.Errorf("removePIDFile left this process's pid file: %q", got)
	}
}

// TestPIDFileStaleTemps has a successor killed while it writes its pid
// file: the next one removes what it left, but not the file of a process
// that is still writing its own.
func TestPIDFileStaleTemps(t *testing.T) {
	checkFds(t)
	path := filepath.Join(t.TempDir(), "app.pid")
	c := startChild(t, "pidprepare", path)
	c.expect("prepared")
	dead := tempPIDFile(path, c.cmd.Process.Pid)
	c.cmd.Process.Kill()
	c.cmd.Wait()
	if got := readFile(t, dead); got != strconv.Itoa(c.cmd.Process.Pid)+"\n" {
		t.Fatalf("the killed child's temporary file holds %q", got)
	}
	live := tempPIDFile(path, os.Getppid())
	mine := tempPIDFile(path, os.Getpid())
	huge := tempPIDFile(path, 3999999999) // as os.CreateTemp named them
	other := []string{path + ".1", filepath.Join(filepath.Dir(path), ".app.pid.x"), filepath.Join(filepath.Dir(path), ".app.pid.01")}
	for _, f := range append([]string{live, mine, huge}, other...) {
		if err := os.WriteFile(f, []byte("?\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := preparePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.abort()
	for _, f := range []string{dead, huge} {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("%s of an ended process is still there", filepath.Base(f))
		}
	}
	for _, f := range append([]string{live}, other...) {
		if _, err := os.Lstat(f); err != nil {
			t.Errorf("%s: %v, want it kept", filepath.Base(f), err)
		}
	}
	if got, want := readFile(t, mine), strconv.Itoa(os.Getpid())+"\n"; got != want {
		t.Errorf("this process's temporary file holds %q, want %q", got, want)
	}
}

// TestPIDFileFull prepares the pid file on a full file system: prepare
// fails, so that the instance can refuse to get ready, and leaves no
// temporary file, and the old pid file stays.
func TestPIDFileFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting a small tmpfs needs root")
	}
	checkFds(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("skipped: mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	path := filepath.Join(dir, "app.pid")
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		if _, err = f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the file system: %v", err)
	}
	p, err := preparePIDFile(path)
	if err == nil {
		p.abort()
		t.Fatal("prepared a pid file on a full file system")
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("error %v, want ENOSPC", err)
	}
	t.Log(err)
	if m := pidTemps(t, path); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
	if got := readFile(t, path); got != "1\n" {
		t.Errorf("the pid file holds %q, want the old %q", got, "1\n")
	}
}
