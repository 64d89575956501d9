package graceful

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
)

// isAbstract reports whether addr names a socket in the abstract namespace,
// which has no file and so no file mode: only credentials protect it.
func isAbstract(addr string) bool {
	return strings.HasPrefix(addr, "@")
}

// checkAddr tells why a hand-over at the Unix socket addr cannot work here:
// this platform has no hand-over, or addr is an abstract name (@name),
// which only Linux has. Elsewhere net would take "@name" for a file in the
// working directory, where a successor would find nobody and start afresh.
func checkAddr(addr string) error {
	if err := supported(); err != nil {
		return err
	}
	if isAbstract(addr) && runtime.GOOS != "linux" && runtime.GOOS != "android" {
		return fmt.Errorf("graceful: %s: abstract socket names exist on Linux only: %w", addr, errors.ErrUnsupported)
	}
	return nil
}
