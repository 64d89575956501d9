//go:build darwin || freebsd || linux || netbsd || openbsd

package graceful

import (
	"encoding/binary"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// oobSpace is the control buffer that holds a full batch, and the
// credentials the kernel adds before it on a socket with SO_PASSCRED.
var oobSpace = unix.CmsgSpace(maxBatch*4) + credSpace

// putRights writes an SCM_RIGHTS message for fds into oob and returns its
// length.
func putRights(oob []byte, fds []int32) int {
	if len(fds) == 0 {
		return 0
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SCM_RIGHTS
	h.SetLen(unix.CmsgLen(4 * len(fds)))
	data := oob[unix.CmsgLen(0):]
	for i, fd := range fds {
		binary.NativeEndian.PutUint32(data[4*i:], uint32(fd))
	}
	return unix.CmsgSpace(4 * len(fds))
}

// appendRights appends to fds every descriptor in the control messages of
// oob. It never fails: descriptors are collected even from malformed
// messages as far as they can be read, so the caller can close them.
func appendRights(fds []int32, oob []byte) []int32 {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return fds
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			data := oob[unix.CmsgLen(0):l]
			for ; len(data) >= 4; data = data[4:] {
				fds = append(fds, int32(binary.NativeEndian.Uint32(data)))
			}
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			return fds
		}
		oob = oob[next:]
	}
	return fds
}

func closeFds(fds []int32) {
	for _, fd := range fds {
		unix.Close(int(fd))
	}
}

// msgConn does sendmsg and recvmsg on a connection through the runtime's
// poller, so the connection's deadlines apply. Its buffers live as long as
// the connection's transfer, so the calls allocate nothing.
type msgConn struct {
	rc    syscall.RawConn
	iov   unix.Iovec
	msg   unix.Msghdr
	trap  uintptr // sysSendmsg or sysRecvmsg
	flags uintptr
	n     int
	errno syscall.Errno
	// callFn is call as a method value made once, so the poller calls
	// allocate nothing.
	callFn func(uintptr) bool
}

func (m *msgConn) init(conn net.Conn) error {
	rc, err := rawConn(conn)
	if err != nil {
		return err
	}
	m.rc = rc
	m.callFn = m.call
	return nil
}

func (m *msgConn) setMsg(trap, flags uintptr, p, oob []byte) {
	m.trap, m.flags = trap, flags
	m.iov.Base = nil
	if len(p) > 0 {
		m.iov.Base = &p[0]
	}
	m.iov.SetLen(len(p))
	m.msg.Iov = &m.iov
	m.msg.SetIovlen(1)
	m.msg.Control = nil
	if len(oob) > 0 {
		m.msg.Control = &oob[0]
	}
	m.msg.SetControllen(len(oob))
	m.msg.Flags = 0
}

// call makes the system call set up by setMsg; false asks the poller to wait
// until the socket is ready.
func (m *msgConn) call(fd uintptr) bool {
	for {
		r, e := m.invoke(fd)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		m.n, m.errno = int(r), e
		return true
	}
}

// recvmsg reads into p and collects descriptors from oob. It returns the
// number of bytes read (0 at end of stream), the control bytes used and the
// message flags.
func (m *msgConn) recvmsg(p, oob []byte) (n, oobn, flags int, err error) {
	m.setMsg(sysRecvmsg, recvFlags, p, oob)
	if err := m.rc.Read(m.callFn); err != nil {
		return 0, 0, 0, err
	}
	if m.errno != 0 {
		return 0, 0, 0, os.NewSyscallError("recvmsg", m.errno)
	}
	return m.n, int(m.msg.Controllen), int(m.msg.Flags), nil
}

// sendmsg writes all of p, the control message oob with its first byte.
// MSG_NOSIGNAL keeps a peer that is gone from raising SIGPIPE: all five
// systems have it (macOS since 11, xnu's bsd/kern/uipc_syscalls.c).
func (m *msgConn) sendmsg(p, oob []byte) error {
	for len(p) > 0 {
		m.setMsg(sysSendmsg, unix.MSG_NOSIGNAL, p, oob)
		if err := m.rc.Write(m.callFn); err != nil {
			return err
		}
		if m.errno != 0 {
			return os.NewSyscallError("sendmsg", m.errno)
		}
		p, oob = p[m.n:], nil
	}
	return nil
}

func closeFd(fd int) {
	unix.Close(fd)
}

// msgCtrunc is the flag of a message whose control data the kernel cut,
// closing the descriptors that did not fit.
const msgCtrunc = unix.MSG_CTRUNC

// supported reports whether this platform can hand descriptors over.
func supported() error {
	return nil
}
