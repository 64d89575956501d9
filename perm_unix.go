//go:build darwin || freebsd || linux || netbsd || openbsd

package graceful

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The files of an instance (the hand-over socket, its start lock, the pid
// file) are only as safe as the directories they are in. Whoever may write
// a directory may put a symlink, a file or a listening socket of their own
// where an instance expects its own, or rename a directory away and put
// another in its place. So, as OpenSSH's StrictModes does for a user's
// files, the directory and every directory above it must be owned by this
// process's user or by root; the directory itself may be written by its
// owner only, and a directory above it by others only if it is sticky (as
// /tmp is), which keeps others from renaming or removing what is not theirs.

// permError is a refusal for reasons of ownership or mode. Its message says
// what is wrong and what to do; it satisfies errors.Is(err, fs.ErrPermission).
type permError struct{ msg string }

func (e *permError) Error() string { return e.msg }
func (e *permError) Unwrap() error { return fs.ErrPermission }

func permErrorf(format string, args ...any) error {
	return &permError{msg: "graceful: " + fmt.Sprintf(format, args...)}
}

// trusted reports whether uid may own what an instance relies on: this
// process's effective user or root.
func trusted(uid uint32) bool {
	return uid == 0 || int(uid) == os.Geteuid()
}

// unmapped reports whether uid is the overflow uid of a user namespace:
// the owner of a file outside the namespace's map, typically the real
// root's /, /tmp or /home. A directory above the socket's may be owned so.
func unmapped(uid uint32) bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if f := strings.Fields(string(b)); err != nil || len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295" {
		return false // the initial namespace: every uid is mapped
	}
	o, err := os.ReadFile("/proc/sys/kernel/overflowuid")
	return err == nil && strings.TrimSpace(string(o)) == strconv.FormatUint(uint64(uid), 10)
}

// ownerName names the user uid for a message: "alice (uid 1234)", or
// "uid 1234" if the user database does not know it.
func ownerName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil && u.Username != "" {
		return u.Username + " (uid " + id + ")"
	}
	return "uid " + id
}

// lsMode formats a raw st_mode as ls(1) does: "drwxrwxrwt".
func lsMode(mode uint32) string {
	var b [10]byte
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		b[0] = 'd'
	case unix.S_IFLNK:
		b[0] = 'l'
	case unix.S_IFSOCK:
		b[0] = 's'
	case unix.S_IFIFO:
		b[0] = 'p'
	case unix.S_IFCHR:
		b[0] = 'c'
	case unix.S_IFBLK:
		b[0] = 'b'
	default:
		b[0] = '-'
	}
	const rwx = "rwxrwxrwx"
	for i := range 9 {
		if mode&(1<<(8-i)) != 0 {
			b[i+1] = rwx[i]
		} else {
			b[i+1] = '-'
		}
	}
	special := func(i int, bit uint32, set, alone byte) {
		switch {
		case mode&bit == 0:
		case b[i] == '-':
			b[i] = alone
		default:
			b[i] = set
		}
	}
	special(3, unix.S_ISUID, 's', 'S')
	special(6, unix.S_ISGID, 's', 'S')
	special(9, unix.S_ISVTX, 't', 'T')
	return string(b[:])
}

// writers says who besides the owner may write a file of mode: "others",
// "its group", or "" for nobody.
func writers(mode uint32) string {
	switch {
	case mode&0o002 != 0:
		return "others"
	case mode&0o020 != 0:
		return "its group"
	}
	return ""
}

const dirAdvice = "use a directory only you can write, such as $XDG_RUNTIME_DIR, or create one with mode 0700"

// checkDir checks that the directory dir, where an instance creates its
// files, and the directories it is in, cannot be changed by another user:
// dir must be owned by this process's effective user or by root, and not be
// writable by group or others; every directory above it, up to /, must be
// owned by this user or root, and if group or others may write it, it must
// be sticky. Symbolic links on the way are followed as the kernel would,
// and must be owned by this user or root too, since their owner may point
// them elsewhere. A refusal satisfies errors.Is(err, fs.ErrPermission) and
// says what to do.
func checkDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("graceful: directory %s: %w", dir, err)
	}
	cur, err := resolveDir(abs)
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Stat(cur, &st); err != nil {
		return fmt.Errorf("graceful: directory %s: %w", dir, &os.PathError{Op: "stat", Path: cur, Err: err})
	}
	name := abs
	if cur != abs {
		name = abs + " (" + cur + ")"
	}
	mode := uint32(st.Mode)
	switch {
	case mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("graceful: %s is not a directory: %w", name, unix.ENOTDIR)
	case !trusted(st.Uid):
		return permErrorf("%s is owned by %s, not by you or root: %s", name, ownerName(st.Uid), dirAdvice)
	case writers(mode) != "":
		return permErrorf("%s is writable by %s (mode %s): %s", name, writers(mode), lsMode(mode), dirAdvice)
	}
	return nil
}

// resolveDir resolves abs one name at a time, from /, checking each
// directory it looks a name up in (checkAncestor) and each symbolic link
// it follows, and returns the path reached, without links.
func resolveDir(abs string) (string, error) {
	cur := "/"
	todo := splitPath(abs) // the names left to look up
	links := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		switch name {
		case ".", "":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		// cur is looked up in: it is an ancestor of dir.
		if err := checkAncestor(cur, abs); err != nil {
			return "", err
		}
		next := filepath.Join(cur, name)
		target, err := readTrustedLink(next, abs)
		if err != nil {
			return "", err
		}
		if target == "" {
			cur = next
			continue
		}
		if links++; links > 40 {
			return "", fmt.Errorf("graceful: directory %s: %w", abs, &os.PathError{Op: "lstat", Path: abs, Err: unix.ELOOP})
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		todo = append(splitPath(target), todo...)
	}
	return cur, nil
}

// readTrustedLink returns the target of next if it is a symbolic link,
// "" if it is not. A link must be owned by this user or root: its owner
// may point it elsewhere.
func readTrustedLink(next, abs string) (string, error) {
	var st unix.Stat_t
	if err := unix.Lstat(next, &st); err != nil {
		return "", fmt.Errorf("graceful: directory %s: %w", abs, &os.PathError{Op: "lstat", Path: next, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return "", nil
	}
	if !trusted(st.Uid) {
		what := abs + ": the symbolic link " + next
		if next == abs {
			what = abs + ", a symbolic link,"
		}
		return "", permErrorf("%s is owned by %s, who may point it elsewhere: %s", what, ownerName(st.Uid), dirAdvice)
	}
	target, err := os.Readlink(next)
	if err != nil {
		return "", fmt.Errorf("graceful: directory %s: %w", abs, err)
	}
	return target, nil
}

// checkAncestor checks the directory dir, which the directory abs is in.
func checkAncestor(dir, abs string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("graceful: directory %s: %w", abs, &os.PathError{Op: "stat", Path: dir, Err: err})
	}
	mode := uint32(st.Mode)
	if !trusted(st.Uid) && !unmapped(st.Uid) {
		return permErrorf("%s is in %s, which is owned by %s, who may replace what is in it: %s", abs, dir, ownerName(st.Uid), dirAdvice)
	}
	if w := writers(mode); w != "" && mode&unix.S_ISVTX == 0 {
		return permErrorf("%s is in %s, which is writable by %s and not sticky (mode %s), so they may replace what is in it: %s, or make %s sticky (chmod +t)", abs, dir, w, lsMode(mode), dirAdvice, dir)
	}
	return nil
}

// splitPath returns the names of path, in order; an absolute path's first
// is empty.
func splitPath(path string) []string {
	return strings.Split(path, "/")
}

// makeDir creates the directory dir and those above it that are missing,
// with mode 0700 whatever the umask, and then checks it (checkDir).
func makeDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("graceful: directory %s: %w", dir, err)
	}
	var missing []string
	for p := abs; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		err := unix.Lstat(p, &st)
		if err == nil {
			break
		}
		if err != unix.ENOENT {
			return fmt.Errorf("graceful: directory %s: %w", dir, &os.PathError{Op: "lstat", Path: p, Err: err})
		}
		missing = append(missing, p)
		if p == "/" {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		p := missing[i]
		err := unix.Mkdir(p, 0o700)
		if err == unix.EEXIST {
			continue // made meanwhile by someone else: checkDir judges it
		}
		if err == nil {
			err = chmodDir(p)
		}
		if err != nil {
			return fmt.Errorf("graceful: directory %s: %w", dir, &os.PathError{Op: "mkdir", Path: p, Err: err})
		}
	}
	return checkDir(abs)
}

// chmodDir gives the directory just made at p the mode 0700 that the umask
// may have cut, if it is still this user's directory.
func chmodDir(p string) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.EACCES {
		// The umask took the owner's bits, which only the path gives back.
		if err = unix.Chmod(p, 0o700); err == nil {
			fd, err = unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if int(st.Uid) != os.Geteuid() {
		return unix.EEXIST // replaced by another user's
	}
	return unix.Fchmod(fd, 0o700)
}

// openLock opens the start lock file at path, creating it with mode 0600.
// It takes no symbolic link, and only a regular file of one link owned by
// this process's effective user or by root; a file of this user that
// others may open is made private again (a lock file that another user may
// open, they may lock). Anything else is refused at once, naming its owner,
// with an error that satisfies errors.Is(err, fs.ErrPermission).
func openLock(path string) (*os.File, error) {
	// O_NONBLOCK: a FIFO put there must not block the open.
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o600)
	if err != nil {
		// O_NOFOLLOW fails on a symbolic link with ELOOP, EMLINK on
		// FreeBSD, EFTYPE on NetBSD: look.
		var st unix.Stat_t
		if unix.Lstat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return nil, permErrorf("the start lock %s is a symbolic link, owned by %s, which is never followed: remove it, and keep the directory of Config.Socket writable by you only", path, ownerName(st.Uid))
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	mode := uint32(st.Mode)
	switch {
	case err != nil:
		err = &os.PathError{Op: "fstat", Path: path, Err: err}
	case mode&unix.S_IFMT != unix.S_IFREG:
		err = permErrorf("the start lock %s is not a regular file (mode %s, owned by %s): remove it, and keep the directory of Config.Socket writable by you only", path, lsMode(mode), ownerName(st.Uid))
	case !trusted(st.Uid):
		err = permErrorf("the start lock %s is owned by %s, not by you or root, so they may hold it or write it: remove it, and keep the directory of Config.Socket writable by you only", path, ownerName(st.Uid))
	case st.Nlink != 1:
		err = permErrorf("the start lock %s has %d hard links, so it may be another file: remove it, and keep the directory of Config.Socket writable by you only", path, st.Nlink)
	case mode&0o077 != 0 && int(st.Uid) == os.Geteuid():
		err = unix.Fchmod(fd, 0o600)
		if err != nil {
			err = &os.PathError{Op: "chmod", Path: path, Err: err}
		}
	case mode&0o077 != 0:
		err = permErrorf("the start lock %s may be opened by others (mode %s, owned by %s), who may hold it: remove it, or make it mode 0600", path, lsMode(mode), ownerName(st.Uid))
	}
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// checkOwner checks the file at path, the hand-over socket before it is
// dialled: if it exists, it must be owned by this process's effective user
// or by root; another user's socket there is refused at once, naming its
// owner, with an error that satisfies errors.Is(err, fs.ErrPermission). No
// file there is fine.
func checkOwner(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return fmt.Errorf("graceful: %w", &os.PathError{Op: "lstat", Path: path, Err: err})
	}
	if !trusted(st.Uid) {
		return permErrorf("%s is owned by %s, not by you or root (mode %s): another user got there first; remove it, and keep the directory of Config.Socket writable by you only", path, ownerName(st.Uid), lsMode(uint32(st.Mode)))
	}
	return nil
}
