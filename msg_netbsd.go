package graceful

import "golang.org/x/sys/unix"

// recvFlags makes the kernel install received descriptors close-on-exec.
const (
	recvFlags   = unix.MSG_CMSG_CLOEXEC
	cmsgCloexec = true
)

// maxBatch is the most descriptors one sendmsg(2) carries. NetBSD takes up
// to a page of control data per message (sockargs, sys/kern/uipc_syscalls.c),
// over a thousand descriptors, and copies their pointers into memory of
// that size (unp_internalize, sys/kern/uipc_usrreq.c). 253 is Linux's
// SCM_MAX_FD.
const maxBatch = 253

// inFlightLimit is always false. NetBSD bounds the descriptors in flight
// system-wide (maxfiles / unp_rights_ratio), but fails with EAGAIN, which
// reads as a full socket buffer: the sender then waits for the receiver to
// take something, at most its timeout.
func inFlightLimit(error) bool { return false }
