//go:build darwin || freebsd || netbsd || openbsd

package graceful

import "golang.org/x/sys/unix"

// selfExe is empty: these systems have no name for the running binary that
// outlives its file.
const selfExe = ""

// processGone reports whether the process pid has ended: it does not
// exist, or it is a zombie that its parent has not reaped yet. kill(2)
// succeeds for a zombie, as POSIX asks, while getpgid(2) looks among live
// processes only (pfind on FreeBSD, prfind on OpenBSD, proc_find on NetBSD
// and macOS) and fails with ESRCH. A kill that succeeds also means the
// process is visible to this one, so that ESRCH can mean nothing else.
func processGone(pid int) bool {
	if pid <= 0 {
		return false
	}
	switch err := unix.Kill(pid, 0); err {
	case unix.ESRCH:
		return true
	case nil:
		_, err := unix.Getpgid(pid)
		return err == unix.ESRCH
	}
	return false // EPERM: another user's process, alive
}
