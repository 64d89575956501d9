//go:build !darwin && !freebsd && !linux && !netbsd && !openbsd

package graceful

import "os"

// Stand-ins for perm_unix.go where descriptors cannot be handed over: every
// entry point fails with errUnsupported before it needs them.

func checkDir(string) error             { return errUnsupported }
func makeDir(string) error              { return errUnsupported }
func openLock(string) (*os.File, error) { return nil, errUnsupported }
func checkOwner(string) error           { return errUnsupported }
