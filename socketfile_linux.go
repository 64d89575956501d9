package graceful

import "strconv"

// dirByFd names the directory open as fd by a path that fits in a socket
// address whatever the directory's own path: the kernel resolves
// /proc/self/fd/N to the very directory. It serves bind when that path is
// too long.
func dirByFd(fd int) string {
	return "/proc/self/fd/" + strconv.Itoa(fd)
}

// fullBacklogRefuses is false: connect(2) says EAGAIN when a live server's
// backlog is full, and ECONNREFUSED only when nobody listens.
const fullBacklogRefuses = false
