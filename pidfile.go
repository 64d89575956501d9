package graceful

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// checkPIDFileDir fails early, at Start, if the pid file's directory is
// missing or not writable: at Ready it would be too late to refuse.
func checkPIDFileDir(path string) error {
	if err := writable(filepath.Dir(path)); err != nil {
		return fmt.Errorf("graceful: pid file %s: %w", path, err)
	}
	return nil
}

// writePIDFile replaces the pid file atomically, so that a reader never sees
// it empty or half written.
func writePIDFile(path string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%d\n", os.Getpid())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// removePIDFile removes the pid file if it names this process.
func removePIDFile(path string) {
	if b, err := os.ReadFile(path); err == nil && string(b) == strconv.Itoa(os.Getpid())+"\n" {
		os.Remove(path)
	}
}
