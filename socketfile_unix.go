//go:build darwin || freebsd || linux || netbsd || openbsd

package graceful

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// listenUnix listens on the Unix socket addr. A file socket appears at addr
// only once it listens, with mode (and the group gid unless it is -1), so no
// client can connect while the umask's mode is in force and the path never
// names a socket that refuses connections. A stale socket file is replaced;
// a live server's address is never taken, nor is a path that is not a
// socket removed.
//
// The socket is bound in a private directory beside addr (on the same file
// system), which nobody else may write, so its file can be set up there by
// name without a symlink being slipped in. It is then hard-linked into
// place, which fails if anything is at addr instead of replacing it.
func listenUnix(addr string, mode fs.FileMode, gid int) (net.Listener, error) {
	if err := checkAddr(addr); err != nil {
		return nil, err
	}
	if isAbstract(addr) {
		ln, err := net.Listen("unix", addr)
		if err != nil {
			return nil, fmt.Errorf("graceful: %w", err)
		}
		return ln, nil
	}
	dir, base := filepath.Split(addr)
	if base == "" || len(addr) > maxSockPath {
		return nil, listenError(addr, "bind", unix.EINVAL)
	}
	if dir == "" {
		dir = "."
	}
	dirfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, listenError(addr, "open", err)
	}
	defer unix.Close(dirfd)
	tmp, tmpfd, err := privateDir(dirfd)
	if err != nil {
		return nil, listenError(addr, "mkdir", err)
	}
	defer func() {
		// Once linked or renamed into place, the socket file no longer
		// needs its name here.
		unix.Unlinkat(tmpfd, "s", 0)
		unix.Close(tmpfd)
		unix.Unlinkat(dirfd, tmp, unix.AT_REMOVEDIR)
	}()
	fd, err := streamSocket()
	if err != nil {
		return nil, fmt.Errorf("graceful: %w", os.NewSyscallError("socket", err))
	}
	f := os.NewFile(uintptr(fd), addr)
	defer f.Close()
	st, err := bindPrivate(fd, tmpfd, filepath.Join(dir, tmp), addr, mode, gid)
	if err != nil {
		return nil, err
	}
	if err := place(dirfd, tmpfd, base, addr); err != nil {
		return nil, fmt.Errorf("graceful: listen %s: %w", addr, err)
	}
	fl := &fileListener{path: addr, dev: uint64(st.Dev), ino: uint64(st.Ino)}
	ln, err := net.FileListener(f)
	if err != nil {
		fl.removeFile()
		return nil, fmt.Errorf("graceful: %w", err)
	}
	fl.UnixListener = ln.(*net.UnixListener)
	fl.UnixListener.SetUnlinkOnClose(false)
	return fl, nil
}

// bindPrivate binds the socket fd as "s" in the private directory tmpfd
// (at tmpPath), gives its file mode (and the group gid unless it is -1),
// and makes it listen. It returns the file's status.
func bindPrivate(fd, tmpfd int, tmpPath, addr string, mode fs.FileMode, gid int) (*unix.Stat_t, error) {
	path := filepath.Join(tmpPath, "s")
	if len(path) > maxSockPath {
		if alt := dirByFd(tmpfd); alt != "" {
			path = alt + "/s"
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, listenError(addr, "bind", err)
	}
	// Nobody else can create or replace a name in the private directory:
	// what is there is the socket file just bound, unless the directory's
	// own name was swapped in between and the bind went elsewhere.
	var st unix.Stat_t
	if err := unix.Fstatat(tmpfd, "s", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, listenError(addr, "bind", fmt.Errorf("socket file not created in %s: %w", tmpPath, unix.EEXIST))
	}
	// The exact mode, which the umask may have cut at bind.
	if err := unix.Fchmodat(tmpfd, "s", uint32(mode.Perm()), 0); err != nil {
		return nil, listenError(addr, "chmod", err)
	}
	if gid >= 0 {
		if err := unix.Fchownat(tmpfd, "s", -1, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, listenError(addr, "chown", err)
		}
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		return nil, listenError(addr, "listen", err)
	}
	return &st, nil
}

// listenError is the error of listening at addr, when op failed.
func listenError(addr, op string, err error) error {
	return fmt.Errorf("graceful: %w", &net.OpError{Op: "listen", Net: "unix", Addr: &net.UnixAddr{Name: addr, Net: "unix"}, Err: os.NewSyscallError(op, err)})
}

// maxSockPath is the longest path a socket address holds.
var maxSockPath = len(unix.RawSockaddrUnix{}.Path)

// privateDir creates a directory of a random name in the directory dirfd,
// accessible to this user only, and opens it.
func privateDir(dirfd int) (name string, fd int, err error) {
	for try := 0; ; try++ {
		name = ".gr" + strconv.FormatUint(rand.Uint64()>>28, 36)
		err = unix.Mkdirat(dirfd, name, 0o700)
		if err == nil {
			break
		}
		if err != unix.EEXIST || try == 100 {
			return "", -1, err
		}
	}
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err = unix.Openat(dirfd, name, flags, 0)
	if err == unix.EACCES {
		// The umask took the owner's bits, which only the path can give
		// back. Were the name swapped for a symlink (only in a parent
		// that lets others rename entries: writable, not sticky), this
		// would make a file of this user's 0700, no more; the open below
		// takes no symlink, and the owner check no other's directory.
		if err = unix.Fchmodat(dirfd, name, 0o700, 0); err == nil {
			fd, err = unix.Openat(dirfd, name, flags, 0)
		}
	}
	if err == nil {
		// Whoever may write the parent (not sticky) may have swapped in
		// a directory of their own; the umask may have cut the mode.
		var st unix.Stat_t
		if err = unix.Fstat(fd, &st); err == nil && int(st.Uid) != os.Geteuid() {
			err = fmt.Errorf("%s replaced by another user's: %w", name, unix.EEXIST)
		}
		if err == nil {
			err = unix.Fchmod(fd, 0o700)
		}
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
		return "", -1, err
	}
	return name, fd, nil
}

// place gives the socket file "s" of the directory tmpfd the name base in
// the directory dirfd (addr is that path). Nothing but a stale socket is
// ever replaced: a live one, or anything that is not a socket, makes an
// error that satisfies errors.Is(err, syscall.EADDRINUSE).
func place(dirfd, tmpfd int, base, addr string) error {
	for try := 0; try < 100; try++ {
		err := unix.Linkat(tmpfd, "s", dirfd, base, 0)
		if err != unix.EEXIST {
			return os.NewSyscallError("link", err) // nil on success
		}
		stale, err := isStale(dirfd, base, addr)
		if err != nil {
			return err
		}
		if !stale {
			continue // the file went away: link again
		}
		// Another instance may be replacing the same stale file: only
		// the holder of the lock replaces, after looking again.
		unlock, err := lockDir(dirfd)
		if err != nil {
			return err
		}
		stale, err = isStale(dirfd, base, addr)
		if err == nil && stale {
			err = os.NewSyscallError("rename", unix.Renameat(tmpfd, "s", dirfd, base))
		}
		unlock()
		if err != nil || stale {
			return err
		}
	}
	return fmt.Errorf("%s keeps changing: %w", addr, unix.EADDRINUSE)
}

// isStale reports whether base in the directory dirfd, at addr, is a socket
// file on which nobody listens. It returns false and no error when there is
// no file at all.
func isStale(dirfd int, base, addr string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return false, nil
		}
		return false, os.NewSyscallError("stat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return false, fmt.Errorf("%s exists and is not a socket: %w", addr, unix.EADDRINUSE)
	}
	c, err := net.DialTimeout("unix", addr, time.Second)
	switch {
	case err == nil, errors.Is(err, unix.EAGAIN): // EAGAIN: its backlog is full
		if c != nil {
			c.Close()
		}
		return false, fmt.Errorf("a server is listening at %s: %w", addr, unix.EADDRINUSE)
	case errors.Is(err, unix.ECONNREFUSED):
		return !fullBacklogRefuses || keepsRefusing(addr), nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, err
}

// keepsRefusing reports whether the socket at addr refuses every connection
// for a while. Where a live server whose backlog is full refuses
// connections as a socket nobody listens on does (fullBacklogRefuses), that
// server accepts again meanwhile, unless it stopped accepting altogether.
func keepsRefusing(addr string) bool {
	for range 10 {
		time.Sleep(20 * time.Millisecond)
		c, err := net.DialTimeout("unix", addr, time.Second)
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, unix.ECONNREFUSED) {
			return false
		}
	}
	return true
}

// lockWait bounds the wait for the lock on a directory: instances of this
// package hold it for a few system calls, but anyone who can open the
// directory can take it.
const lockWait = 5 * time.Second

// lockDir takes the exclusive lock on the directory dirfd (flock), which
// the instances of this package hold while they replace a stale socket
// file in it. A flock belongs to the open directory, so goroutines of one
// process that each opened it exclude each other too.
func lockDir(dirfd int) (unlock func(), err error) {
	deadline := time.Now().Add(lockWait)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := unix.Flock(dirfd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(dirfd, unix.LOCK_UN) }, nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			return nil, os.NewSyscallError("flock", err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("directory locked for more than %v: %w", lockWait, os.NewSyscallError("flock", err))
		}
		time.Sleep(delay)
	}
}

// fileListener is a Unix listener whose Close removes its socket file, but
// only while the file at its path is still its own socket, so an instance
// that already replaced it keeps its own.
type fileListener struct {
	*net.UnixListener
	path     string
	dev, ino uint64
	once     sync.Once
}

// Addr is the path the socket file has, not the one it was bound at.
func (l *fileListener) Addr() net.Addr {
	return &net.UnixAddr{Name: l.path, Net: "unix"}
}

func (l *fileListener) Close() error {
	// Removing the file before closing the socket leaves no moment in
	// which the path names a dead socket that a successor must clean up.
	l.once.Do(l.removeFile)
	return l.UnixListener.Close()
}

// removeFile removes the socket file if it is still this listener's.
func (l *fileListener) removeFile() {
	var st unix.Stat_t
	if unix.Lstat(l.path, &st) == nil && uint64(st.Dev) == l.dev && uint64(st.Ino) == l.ino {
		unix.Unlink(l.path)
	}
}

// removeStaleSocket removes the socket file at path if nobody listens on
// it, under the directory's lock, so that a listener can take the path.
// Anything else at path stays.
func removeStaleSocket(path string) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	dirfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(dirfd)
	unlock, err := lockDir(dirfd)
	if err != nil {
		return
	}
	defer unlock()
	if stale, _ := isStale(dirfd, base, path); stale {
		unix.Unlinkat(dirfd, base, 0)
	}
}
