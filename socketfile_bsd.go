//go:build !linux

package graceful

// dirByFd has no short name for a directory to offer here: a socket path
// too long for bind fails.
func dirByFd(fd int) string { return "" }
