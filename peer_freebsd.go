package graceful

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// xucredPID returns the pid of the process at the other end, which FreeBSD
// records in x since 13 (cr_pid), and leaves 0 before.
func xucredPID(_ int, x *unix.Xucred) int {
	return int(*(*int32)(unsafe.Add(unsafe.Pointer(x), xucredPid)))
}

// xucredPid is the offset of cr_pid in struct xucred: the pid_t at the
// start of the union (pointer-sized) after cr_groups, which x/sys/unix
// leaves unnamed as its last field.
const xucredPid = (unsafe.Offsetof(unix.Xucred{}.Groups) + unsafe.Sizeof(unix.Xucred{}.Groups) +
	ptrSize - 1) &^ (ptrSize - 1)

const ptrSize = unsafe.Sizeof(uintptr(0))

// Neither compiles unless that union is where xucredPid says, and last.
var (
	_ [unsafe.Sizeof(unix.Xucred{}) - xucredPid - ptrSize]struct{}
	_ [xucredPid + ptrSize - unsafe.Sizeof(unix.Xucred{})]struct{}
)
