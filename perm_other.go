//go:build !darwin && !freebsd && !linux && !netbsd && !openbsd

package graceful

// Stand-ins for perm_unix.go where descriptors cannot be handed over: every
// entry point fails with errUnsupported before it needs them.

func makeDir(string) error    { return errUnsupported }
func checkOwner(string) error { return errUnsupported }
