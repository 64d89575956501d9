//go:build linux

package graceful

// Shared directories: another user must not be able to plant a symlink, a
// file, a lock or a listening socket where an instance expects its own.
// Cases marked root run as root and give files to the user squatter (a uid
// without a name), or run a process as that user; as another user they are
// skipped, and the rest still run.

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// squatter is the other user of these tests.
const squatter = 1234

func skipUnlessRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: acting as another user needs root")
	}
}

// mkdir makes the directory path with exactly mode, owned by uid unless it
// is -1.
func mkdir(t *testing.T, path string, mode fs.FileMode, uid int) string {
	t.Helper()
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if uid >= 0 {
		if err := os.Lchown(path, uid, -1); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// wantPermError checks that err is a refusal for ownership or mode whose
// message contains each of want.
func wantPermError(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one saying %q", want)
	}
	if !errors.Is(err, fs.ErrPermission) {
		t.Errorf("error %q does not satisfy errors.Is(err, fs.ErrPermission)", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

func TestCheckDir(t *testing.T) {
	self := os.Geteuid()
	tests := []struct {
		name string
		root bool // gives files to squatter
		// dir makes the directory to check in base.
		dir  func(t *testing.T, base string) string
		want []string // nil: accepted
	}{
		{"private", false, func(t *testing.T, base string) string {
			return mkdir(t, base+"/p", 0o700, -1)
		}, nil},
		{"private 0755", false, func(t *testing.T, base string) string {
			return mkdir(t, base+"/p", 0o755, -1)
		}, nil},
		{"world-writable", false, func(t *testing.T, base string) string {
			return mkdir(t, base+"/w", 0o777, -1)
		}, []string{"/w is writable by others (mode drwxrwxrwx)", "$XDG_RUNTIME_DIR", "mode 0700"}},
		{"world-writable sticky", false, func(t *testing.T, base string) string {
			return mkdir(t, base+"/w", 0o777|fs.ModeSticky, -1)
		}, []string{"/w is writable by others (mode drwxrwxrwt)"}},
		{"group-writable", false, func(t *testing.T, base string) string {
			return mkdir(t, base+"/g", 0o770, -1)
		}, []string{"/g is writable by its group (mode drwxrwx---)"}},
		{"tmp-like parent", false, func(t *testing.T, base string) string {
			return mkdir(t, mkdir(t, base+"/tmp", 0o777|fs.ModeSticky, -1)+"/p", 0o700, -1)
		}, nil},
		{"world-writable parent not sticky", false, func(t *testing.T, base string) string {
			return mkdir(t, mkdir(t, base+"/a", 0o777, -1)+"/p", 0o700, -1)
		}, []string{"/a/p is in", "/a, which is writable by others and not sticky (mode drwxrwxrwx)", "chmod +t"}},
		{"group-writable grandparent not sticky", false, func(t *testing.T, base string) string {
			return mkdir(t, mkdir(t, mkdir(t, base+"/a", 0o775, -1)+"/b", 0o755, -1)+"/p", 0o700, -1)
		}, []string{"/a/b/p is in", "/a, which is writable by its group and not sticky (mode drwxrwxr-x)"}},
		{"own symlink to a private directory", false, func(t *testing.T, base string) string {
			mkdir(t, base+"/p", 0o700, -1)
			if err := os.Symlink("p", base+"/l"); err != nil {
				t.Fatal(err)
			}
			return base + "/l"
		}, nil},
		{"symlink through a world-writable directory", false, func(t *testing.T, base string) string {
			mkdir(t, mkdir(t, base+"/a", 0o777, -1)+"/p", 0o700, -1)
			if err := os.Symlink("a/p", base+"/l"); err != nil {
				t.Fatal(err)
			}
			return base + "/l"
		}, []string{"/l is in", "/a, which is writable by others and not sticky"}},
		{"owned by another user", true, func(t *testing.T, base string) string {
			return mkdir(t, base+"/o", 0o700, squatter)
		}, []string{"/o is owned by uid 1234, not by you or root"}},
		{"parent owned by another user", true, func(t *testing.T, base string) string {
			return mkdir(t, mkdir(t, base+"/a", 0o755, squatter)+"/p", 0o700, -1)
		}, []string{"/a/p is in", "/a, which is owned by uid 1234"}},
		{"tmp-like parent, another user's private child", true, func(t *testing.T, base string) string {
			return mkdir(t, mkdir(t, base+"/tmp", 0o777|fs.ModeSticky, -1)+"/p", 0o700, squatter)
		}, []string{"/tmp/p is owned by uid 1234"}},
		{"another user's symlink in a sticky directory", true, func(t *testing.T, base string) string {
			tmp := mkdir(t, base+"/tmp", 0o777|fs.ModeSticky, -1)
			mkdir(t, base+"/p", 0o700, -1)
			if err := os.Symlink("../p", tmp+"/l"); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(tmp+"/l", squatter, squatter); err != nil {
				t.Fatal(err)
			}
			return tmp + "/l"
		}, []string{"/tmp/l, a symbolic link, is owned by uid 1234"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				skipUnlessRoot(t)
			}
			checkFds(t)
			dir := tc.dir(t, t.TempDir())
			err := checkDir(dir)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("checkDir(%s): %v", dir, err)
				}
				return
			}
			wantPermError(t, err, tc.want...)
			t.Logf("euid %d: %v", self, err)
		})
	}
	t.Run("not a directory", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := checkDir(f); !errors.Is(err, syscall.ENOTDIR) {
			t.Fatalf("checkDir(file): %v, want ENOTDIR", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		if err := checkDir(filepath.Join(t.TempDir(), "m")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("checkDir(missing): %v, want ErrNotExist", err)
		}
	})
	t.Run("relative", func(t *testing.T) {
		base := t.TempDir()
		mkdir(t, base+"/w", 0o777, -1)
		t.Chdir(base)
		wantPermError(t, checkDir("w"), base+"/w is writable by others")
		if err := checkDir("."); err != nil {
			t.Fatal(err)
		}
	})
}

// TestMakeDir creates missing directories 0700 whatever the umask, and
// checks what is there.
func TestMakeDir(t *testing.T) {
	checkFds(t)
	base := t.TempDir()
	dir := filepath.Join(base, "a", "b", "c")
	old := unix.Umask(0o777) // would leave d---------
	err := makeDir(dir)
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{base + "/a", base + "/a/b", dir} {
		fi, err := os.Lstat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != fs.ModeDir|0o700 {
			t.Errorf("%s: mode %v, want drwx------", d, fi.Mode())
		}
	}
	if err := makeDir(dir); err != nil {
		t.Fatalf("again: %v", err)
	}
	mkdir(t, base+"/w", 0o777, -1)
	wantPermError(t, makeDir(base+"/w"), "/w is writable by others")
	wantPermError(t, makeDir(base+"/w/x"), "/w/x is in", "/w, which is writable by others and not sticky")
}

// TestOpenLock opens the start lock: a file of its own, made private if
// others may open it, and nothing else.
func TestOpenLock(t *testing.T) {
	checkFds(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sock.lock")
	f, err := openLock(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode %v, want -rw-------", fi.Mode())
	}
	// Made by an older version, or by hand: others may open it, and
	// therefore hold it.
	os.Chmod(path, 0o644)
	l, err := lockFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	l.unlock()
	if fi, _ := os.Lstat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode %v after lockFile, want -rw-------", fi.Mode())
	}
	// A FIFO must be refused, not block the open.
	fifo := filepath.Join(dir, "fifo.lock")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	wantPermError(t, timedLock(t, fifo), "is not a regular file (mode prw-------")
}

// timedLock runs lockFile on path with a long wait, which must fail at
// once: a lock that is not this user's is never waited for.
func timedLock(t *testing.T, path string) error {
	t.Helper()
	start := time.Now()
	l, err := lockFile(path, time.Minute)
	took := time.Since(start)
	if err == nil {
		// What the old code went on to do once it held the lock.
		l.record(os.Getpid())
		l.unlock()
		return nil
	}
	t.Logf("lockFile failed after %v: %v", took, err)
	if took > time.Second {
		t.Errorf("lockFile failed after %v, want at once", took)
	}
	return err
}

// TestLockSymlink puts a symlink to another file where the start lock
// goes: the file must stay untouched.
func TestLockSymlink(t *testing.T) {
	for _, hard := range []bool{false, true} {
		name := "symlink"
		if hard {
			name = "hard link"
		}
		t.Run(name, func(t *testing.T) {
			checkFds(t)
			dir := t.TempDir()
			victim := filepath.Join(dir, "victim")
			if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "app.sock.lock")
			link, want := os.Symlink, "is a symbolic link, owned by"
			if hard {
				link, want = os.Link, "has 2 hard links"
			}
			if err := link(victim, path); err != nil {
				t.Fatal(err)
			}
			if !hard && os.Geteuid() == 0 {
				// The reproduced case: another user's link to
				// root's file.
				if err := os.Lchown(path, squatter, squatter); err != nil {
					t.Fatal(err)
				}
				want += " uid 1234"
			}
			err := timedLock(t, path)
			if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
				t.Errorf("the linked file now holds %q", b)
			}
			wantPermError(t, err, want)
		})
	}
}

// TestLockSquatted has another user make the start lock file and hold it,
// as in the reproduced case: the instance must fail at once, naming them,
// not wait for its timeout.
func TestLockSquatted(t *testing.T) {
	skipUnlessRoot(t)
	checkFds(t)
	dir := t.TempDir()
	enterable(t, dir)
	path := filepath.Join(dir, "app.sock.lock")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, squatter, squatter); err != nil {
		t.Fatal(err)
	}
	c := startChildCmd(t, uidCmd(t, squatter, path), "flock")
	c.expect("locked")
	wantPermError(t, timedLock(t, path), "the start lock "+path+" is owned by uid 1234, not by you or root")
	c.wait()
}

// TestLockOpenToOthers has another user open root's start lock, which they
// may write: openLock must refuse it rather than share it.
func TestLockOpenToOthers(t *testing.T) {
	skipUnlessRoot(t)
	checkFds(t)
	dir := t.TempDir()
	enterable(t, dir)
	path := filepath.Join(dir, "app.sock.lock")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	c := startChildCmd(t, uidCmd(t, squatter, path), "openlock")
	got := c.line()
	c.wait()
	if !strings.Contains(got, "may be opened by others (mode -rw-rw-rw-, owned by root (uid 0))") || !strings.Contains(got, "permission") {
		t.Errorf("the other user's openLock said %q", got)
	}
}

// enterable lets other users enter the test's directory dir, and its
// parent.
func enterable(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// uidCmd returns a command that runs a copy of the test binary as the user
// uid, from a directory anyone may enter.
func uidCmd(t *testing.T, uid int, args ...string) *exec.Cmd {
	t.Helper()
	dir, err := os.MkdirTemp("", "graceful-bin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "graceful.test")
	src, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(bin, src, 0o755)
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	return cmd
}

// TestCheckOwner checks the hand-over socket before dialling: another
// user's socket, listening first, is refused at once, naming them.
func TestCheckOwner(t *testing.T) {
	checkFds(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	if err := checkOwner(sock); err != nil {
		t.Fatalf("no socket: %v", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := checkOwner(sock); err != nil {
		t.Fatalf("own socket: %v", err)
	}
	if os.Geteuid() != 0 {
		return
	}
	if err := os.Lchown(sock, squatter, squatter); err != nil {
		t.Fatal(err)
	}
	wantPermError(t, checkOwner(sock), sock+" is owned by uid 1234, not by you or root (mode srwxr-xr-x)")
}
