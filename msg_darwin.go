package graceful

// macOS has no MSG_CMSG_CLOEXEC: recvmsgForkLocked marks received
// descriptors close-on-exec.
const (
	recvFlags   = 0
	cmsgCloexec = false
)

// maxBatch is the most descriptors one sendmsg(2) carries. macOS copies a
// message's control data into one mbuf cluster (MCLBYTES, 2048 bytes),
// with twice the room of its descriptors, which become pointers (sockargs
// in xnu's bsd/kern/uipc_syscalls.c): a cmsghdr of 12 bytes and 8 bytes
// per descriptor, 254 at most. 253 is Linux's SCM_MAX_FD.
const maxBatch = 253

// inFlightLimit is always false: macOS counts descriptors in flight but
// bounds them not (unp_internalize, bsd/kern/uipc_usrreq.c).
func inFlightLimit(error) bool { return false }
