//go:build darwin || freebsd || netbsd || openbsd

package graceful

// dirByFd has no short name for a directory to offer here: a socket path
// too long for bind fails.
func dirByFd(fd int) string { return "" }

// fullBacklogRefuses is true: connect(2) says ECONNREFUSED both when nobody
// listens and when a live server's backlog is full (sonewconn fails in
// unp_connect), so only a socket that keeps refusing counts as stale.
const fullBacklogRefuses = true
