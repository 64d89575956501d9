package graceful

import (
	"errors"

	"golang.org/x/sys/unix"
)

// recvFlags makes the kernel install received descriptors close-on-exec.
const (
	recvFlags   = unix.MSG_CMSG_CLOEXEC
	cmsgCloexec = true
)

// maxBatch is the most descriptors one sendmsg(2) carries. OpenBSD turns
// each into a struct fdpass (a pointer and an int: 16 bytes on 64-bit
// systems) in one mbuf cluster of MCLBYTES, 2048 bytes, and fails with
// E2BIG past it (unp_internalize, sys/kern/uipc_usrreq.c): with a cmsghdr
// of 16 bytes, 127 descriptors at most.
const maxBatch = 127

// inFlightLimit reports whether sendmsg failed, sending nothing, because
// the descriptors in flight in the whole system would exceed maxfiles / 10
// (EMFILE, unp_internalize).
func inFlightLimit(err error) bool {
	return errors.Is(err, unix.EMFILE)
}
