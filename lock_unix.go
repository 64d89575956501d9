//go:build darwin || freebsd || linux || netbsd || openbsd

package graceful

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// fileLock is an exclusive flock(2) on a file, which the kernel releases
// when the process dies.
type fileLock struct {
	f    *os.File
	once sync.Once
}

// lockFile takes the lock on path, waiting at most wait for another holder.
// The file holds the pid of the last instance that got ready (record).
// A file that another user owns or may open, or a symbolic link, is
// refused at once (openLock): nobody else can hold the lock, so the wait
// is only ever for an instance of this user.
func lockFile(path string, wait time.Duration) (*fileLock, error) {
	f, err := openLock(path)
	if _, ok := err.(*permError); ok {
		return nil, err // says what the file is and what to do
	}
	if err != nil {
		return nil, fmt.Errorf("graceful: the start lock beside Config.Socket: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("graceful: lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	delay := time.Millisecond
	for {
		var lerr error
		if err := rc.Control(func(fd uintptr) {
			lerr = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB)
		}); err != nil {
			lerr = err
		}
		if lerr == nil {
			break
		}
		if !errors.Is(lerr, unix.EWOULDBLOCK) && !errors.Is(lerr, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("graceful: lock %s: %w", path, os.NewSyscallError("flock", lerr))
		}
		if time.Now().After(deadline) {
			holder := "another process"
			if pid := lockHolder(f); pid > 0 {
				holder = "pid " + strconv.Itoa(pid)
			}
			f.Close()
			return nil, fmt.Errorf("%w: another instance is starting: %s has held %s for more than %v", ErrAborted, holder, path, wait)
		}
		time.Sleep(delay)
		delay = min(2*delay, 50*time.Millisecond)
	}
	return &fileLock{f: f}, nil
}

// record writes pid into the file as the last instance that got ready.
func (l *fileLock) record(pid int) error {
	if err := l.f.Truncate(0); err != nil {
		return err
	}
	_, err := l.f.WriteAt([]byte(strconv.Itoa(pid)+"\n"), 0)
	return err
}

// recorded returns the pid of the last instance that got ready, 0 if none
// is recorded.
func (l *fileLock) recorded() int {
	var b [24]byte
	n, _ := l.f.ReadAt(b[:], 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil {
		return 0
	}
	return pid
}

// unlock releases the lock; it may be called more than once.
func (l *fileLock) unlock() {
	if l == nil {
		return
	}
	l.once.Do(func() { l.f.Close() })
}

// writable reports whether this process may create files in dir.
func writable(dir string) error {
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return &os.PathError{Op: "access", Path: dir, Err: err}
	}
	return nil
}
