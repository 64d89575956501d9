package graceful

import "golang.org/x/sys/unix"

// recvFlags makes the kernel install received descriptors close-on-exec.
const (
	recvFlags   = unix.MSG_CMSG_CLOEXEC
	cmsgCloexec = true
)

// maxBatch is the most descriptors one sendmsg(2) carries. FreeBSD turns
// them into pointers in one mbuf cluster and refuses a message for which
// CMSG_SPACE(n * sizeof(struct filedescent *)) exceeds MCLBYTES, 2048 bytes
// (unp_internalize, sys/kern/uipc_usrreq.c: EMSGSIZE, E2BIG in older
// releases): 254 descriptors on 64-bit systems, 509 on 32-bit ones. 253 is
// Linux's SCM_MAX_FD.
const maxBatch = 253

// inFlightLimit is always false: FreeBSD counts descriptors in flight
// (net.local.inflight) but bounds them not.
func inFlightLimit(error) bool { return false }
