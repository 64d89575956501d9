// Package graceful hands open file descriptors (listening sockets, live
// connections, UDP sockets, files) from one process to another over a Unix
// domain socket. Its main use is the graceful restart: a new instance of a
// server takes the old one's sockets, so no connection is refused or dropped
// while the binary is replaced.
//
// # The hand-over
//
// The process that owns the descriptors is the server. At shutdown it calls
// [ListenAndServe] with a [Handler] that says what to send; handlers combine
// with [SequenceHandler], and [ListenerHandler], [FileHandler], [ConnHandler],
// [PacketConnHandler] and [FdHandler] send one object each. The process that
// wants the descriptors is the client: at start-up it calls [Receive], which
// dials the server and calls a [ReceiveCallback] once per descriptor, with the
// descriptor's meta (bytes the sender attached to it, or nil). [Meta] is a
// ready-made key-value encoding for that meta; [FdListener], [FdConn] and
// [FdPacketConn] turn a received descriptor back into a net object.
//
// Sending never changes the sender's objects: a listener that was sent keeps
// accepting, and both processes share the socket until one closes its copy,
// so connections queued on a listener are accepted by whichever process asks
// first and none is lost. An application typically stops accepting in a
// [CallbackHandler] placed after the descriptors: it runs only once the
// receiver has acknowledged them, so a successor that crashes before that
// leaves the old instance serving. The server side's work (write, wait for
// the acknowledgement) is also available on a plain connection through
// [SendTo] and its typed variants, and [ReceiveFrom] reads what they send.
//
// # Ownership
//
// Senders keep their descriptors: the kernel installs new descriptors for the
// same open files in the receiver, which owns them from the moment its
// callback is called, whatever the callback returns. The library closes every
// descriptor it received and did not hand to a callback, on every path: a
// protocol error, a limit exceeded, a timeout, the peer's death, a callback
// that fails or panics. Received descriptors are close-on-exec.
//
// # Trust and limits
//
// Both ends check the peer's credentials (SO_PEERCRED): by default only a
// process of the same user, or root, is served or trusted; [Server.Allow] and
// [Client.Allow] change that. [ListenAndServe] creates the socket file 0600
// whatever the umask, replaces a stale socket file left by a crashed process,
// and never takes the address of a live server. A [Client] bounds the number
// of descriptors per transfer, the size of each meta, and how long it waits
// for the peer.
//
// # Wire protocol
//
// A transfer is a sequence of frames from sender to receiver, each sent with
// one sendmsg(2) call that carries up to 253 descriptors (SCM_MAX_FD) as
// SCM_RIGHTS ancillary data on its first byte. A frame is an 8-byte header
//
//	version(1) = 1 | flags(1) | nfds(2, big endian) | body length(4, big endian)
//
// followed by the body: for each of the nfds descriptors, in order, a 4-byte
// big-endian meta length and that many meta bytes (length 0 means no meta).
// A body length of 0 means no descriptor of the frame has meta. Flags: 1
// (sync) asks the receiver to acknowledge every descriptor so far; 2 (end)
// ends the transfer and asks the same. The receiver acknowledges with a
// 4-byte reply
//
//	version(1) = 1 | status(1) | message length(2, big endian)
//
// status 0 meaning accepted and 1 refused, followed by the refusal's message.
// A transfer that ends without an end frame is an error for the receiver,
// never a partial success; frames with descriptors missing, unexpected
// descriptors, unknown flags or another version are protocol errors.
package graceful

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errors returned by the package. They are wrapped with details; test them
// with [errors.Is].
var (
	// ErrNoServer means nothing serves at the address: no socket file, or a
	// stale one. An application takes it as "I am the first instance".
	ErrNoServer = errors.New("graceful: no server at the address")
	// ErrProtocol means the peer sent something that does not follow the
	// protocol: bad framing, wrong version, descriptors that do not match
	// their frame.
	ErrProtocol = errors.New("graceful: protocol violation")
	// ErrLimit means the peer exceeded a limit of the receiving [Client].
	ErrLimit = errors.New("graceful: limit exceeded")
	// ErrTruncated means the kernel dropped descriptors in transit
	// (MSG_CTRUNC), usually because the receiver's descriptor table is full.
	ErrTruncated = errors.New("graceful: descriptors truncated")
	// ErrRefused means the receiver did not accept a transfer: its callback
	// returned an error.
	ErrRefused = errors.New("graceful: refused by receiver")
	// ErrPeerRefused means the peer's credentials did not pass the Allow
	// policy of this side.
	ErrPeerRefused = errors.New("graceful: peer not allowed")
	// ErrServerClosed is returned by [Server.Serve] and
	// [Server.ListenAndServe] after [Server.Close] or [Server.Shutdown].
	ErrServerClosed = errors.New("graceful: server closed")
)

const (
	// DefaultTimeout is how long either side waits for its peer to make
	// progress (the next bytes, an acknowledgement) when no other timeout is
	// set.
	DefaultTimeout = 10 * time.Second

	version = 1
	hdrLen  = 8
	ackLen  = 4
	// maxBatch is SCM_MAX_FD, the kernel's limit of descriptors per sendmsg.
	maxBatch = 253
	// maxRefusal bounds the message of a refusal on both sides.
	maxRefusal = 1024

	flagSync = 1
	flagEnd  = 2

	statusOK      = 0
	statusRefused = 1
)

// oobSpace is the control buffer that holds a full batch, and the
// credentials the kernel adds before it on a socket with SO_PASSCRED.
var oobSpace = unix.CmsgSpace(maxBatch*4) + unix.CmsgSpace(unix.SizeofUcred)

func putHeader(b []byte, flags byte, nfds, bodyLen int) {
	b[0] = version
	b[1] = flags
	binary.BigEndian.PutUint16(b[2:], uint16(nfds))
	binary.BigEndian.PutUint32(b[4:], uint32(bodyLen))
}

func parseHeader(b []byte) (flags byte, nfds, bodyLen int, err error) {
	if b[0] != version {
		return 0, 0, 0, fmt.Errorf("%w: version %d, want %d", ErrProtocol, b[0], version)
	}
	flags = b[1]
	if flags&^(flagSync|flagEnd) != 0 {
		return 0, 0, 0, fmt.Errorf("%w: unknown flags %#x", ErrProtocol, flags)
	}
	nfds = int(binary.BigEndian.Uint16(b[2:]))
	bodyLen = int(binary.BigEndian.Uint32(b[4:]))
	if nfds > maxBatch {
		return 0, 0, 0, fmt.Errorf("%w: frame announces %d descriptors", ErrProtocol, nfds)
	}
	if bodyLen != 0 && (nfds == 0 || bodyLen < 4*nfds) {
		return 0, 0, 0, fmt.Errorf("%w: body of %d bytes for %d descriptors", ErrProtocol, bodyLen, nfds)
	}
	return flags, nfds, bodyLen, nil
}

func putAck(b []byte, status byte, msgLen int) {
	b[0] = version
	b[1] = status
	binary.BigEndian.PutUint16(b[2:], uint16(msgLen))
}

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

// rawConn returns the descriptor access of a net or os object without
// calling Fd, which would switch it to blocking mode.
func rawConn(obj any) (syscall.RawConn, error) {
	sc, ok := obj.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("graceful: %T has no descriptor", obj)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("graceful: %w", err)
	}
	return rc, nil
}

// msgConn does sendmsg and recvmsg on a connection through the runtime's
// poller, so the connection's deadlines apply. Its buffers live as long as
// the connection's transfer, so the calls allocate nothing.
type msgConn struct {
	rc    syscall.RawConn
	iov   unix.Iovec
	msg   unix.Msghdr
	trap  uintptr // SYS_SENDMSG or SYS_RECVMSG
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
		r, _, e := unix.Syscall(m.trap, fd, uintptr(unsafe.Pointer(&m.msg)), m.flags)
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
	m.setMsg(unix.SYS_RECVMSG, unix.MSG_CMSG_CLOEXEC, p, oob)
	if err := m.rc.Read(m.callFn); err != nil {
		return 0, 0, 0, err
	}
	if m.errno != 0 {
		return 0, 0, 0, os.NewSyscallError("recvmsg", m.errno)
	}
	return m.n, int(m.msg.Controllen), int(m.msg.Flags), nil
}

// sendmsg writes all of p, the control message oob with its first byte.
func (m *msgConn) sendmsg(p, oob []byte) error {
	for len(p) > 0 {
		m.setMsg(unix.SYS_SENDMSG, unix.MSG_NOSIGNAL, p, oob)
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

// watchdog interrupts a blocked call on a connection when the peer has made
// no progress for the idle timeout, or when the context is done, by setting a
// deadline in the past. Until then it never touches the connection's
// deadlines, so a caller's own deadline stays in force and as it was.
type watchdog struct {
	conn    net.Conn
	idle    time.Duration
	timer   *time.Timer
	stopCtx func() bool
	mu      sync.Mutex
	cause   error
	stopped bool
}

// newWatchdog returns nil when there is nothing to watch for.
func newWatchdog(ctx context.Context, conn net.Conn, idle time.Duration) *watchdog {
	if idle <= 0 && ctx.Done() == nil {
		return nil
	}
	w := &watchdog{conn: conn, idle: idle}
	if idle > 0 {
		w.timer = time.AfterFunc(time.Hour, func() {
			w.fire(fmt.Errorf("peer idle for %v: %w", idle, os.ErrDeadlineExceeded))
		})
		w.timer.Stop()
	}
	if ctx.Done() != nil {
		w.stopCtx = context.AfterFunc(ctx, func() { w.fire(ctx.Err()) })
	}
	return w
}

func (w *watchdog) fire(cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || w.cause != nil {
		return
	}
	w.cause = cause
	w.conn.SetDeadline(time.Unix(1, 0))
}

// arm starts the idle clock before a call that waits for the peer.
func (w *watchdog) arm() {
	if w != nil && w.timer != nil {
		w.timer.Reset(w.idle)
	}
}

// disarm stops the idle clock after such a call; err is the call's error,
// replaced by the watchdog's reason when it interrupted the call.
func (w *watchdog) disarm(err error) error {
	if w == nil {
		return err
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	if err == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cause != nil {
		return w.cause
	}
	return err
}

// stop ends the watch. If the watchdog fired after the last call succeeded,
// the deadline it set is cleared again, since the caller's transfer is done.
func (w *watchdog) stop() {
	if w == nil {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	if w.stopCtx != nil {
		w.stopCtx()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	if w.cause != nil {
		w.conn.SetDeadline(time.Time{})
	}
}

// ioError describes a failed read or write on the connection; a stream that
// ends early is io.ErrUnexpectedEOF.
func ioError(op string, err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("graceful: %s: %w", op, err)
}
