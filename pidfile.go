package graceful

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// checkPIDFileDir fails early, at Start, if the pid file's directory is
// missing or not writable: at Ready it would be too late to refuse.
func checkPIDFileDir(path string) error {
	if err := writable(filepath.Dir(path)); err != nil {
		return fmt.Errorf("graceful: pid file %s: %w", path, err)
	}
	return nil
}

// pidFile is the pid file of this process in two phases, so that it can be
// part of getting ready: preparePIDFile writes it beside its place, where
// it may fail (a full disk) while the instance can still refuse to take
// over; commit puts it in place, which takes no space, at the moment the
// instance takes over; abort takes it back.
type pidFile struct {
	path string // where it goes
	tmp  string // where it is written, "" once committed or aborted
}

// tempPIDFile names the temporary file of the pid file path for the
// process pid: ".<base>.<pid>" beside it.
func tempPIDFile(path string, pid int) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+strconv.Itoa(pid))
}

// preparePIDFile writes this process's pid to the temporary file of the pid
// file path (tempPIDFile, mode 0644). It first removes the temporary files
// that ended processes left there (killed while writing theirs), and any of
// this process's own. An error, such as ENOSPC, leaves no file behind.
func preparePIDFile(path string) (*pidFile, error) {
	removeStalePIDTemps(path)
	tmp := tempPIDFile(path, os.Getpid())
	// O_EXCL: never through a symlink, nor into a file someone put there.
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("graceful: pid file %s: %w", path, err)
	}
	_, err = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	if err == nil {
		err = f.Chmod(0o644) // whatever the umask
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("graceful: pid file %s: %w", path, err)
	}
	return &pidFile{path: path, tmp: tmp}, nil
}

// removeStalePIDTemps removes the temporary files of the pid file path
// whose process has ended or is this one.
func removeStalePIDTemps(path string) {
	dir := filepath.Dir(path)
	prefix := "." + filepath.Base(path) + "."
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || e.IsDir() {
			continue
		}
		pid, err := strconv.Atoi(rest)
		if err != nil || pid <= 0 || strconv.Itoa(pid) != rest {
			continue
		}
		if pid == os.Getpid() || processGone(pid) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// commit puts the pid file in place, atomically: a reader sees the old one
// or the new one, never a file empty or half written.
func (p *pidFile) commit() error {
	if p.tmp == "" {
		return fmt.Errorf("graceful: pid file %s: %w", p.path, fs.ErrClosed)
	}
	err := os.Rename(p.tmp, p.path)
	if err != nil {
		os.Remove(p.tmp)
		err = fmt.Errorf("graceful: pid file %s: %w", p.path, err)
	}
	p.tmp = ""
	return err
}

// abort removes the temporary file, unless committed; it may be called
// more than once, and after commit.
func (p *pidFile) abort() {
	if p != nil && p.tmp != "" {
		os.Remove(p.tmp)
		p.tmp = ""
	}
}

// removePIDFile removes the pid file if it names this process.
func removePIDFile(path string) {
	if b, err := os.ReadFile(path); err == nil && string(b) == strconv.Itoa(os.Getpid())+"\n" {
		os.Remove(path)
	}
}
