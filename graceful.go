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
	"errors"
	"fmt"
	"io"
	"time"
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

// DefaultTimeout is how long either side waits for its peer to make
// progress (the next bytes, an acknowledgement) when no other timeout is
// set.
const DefaultTimeout = 10 * time.Second

// ioError describes a failed read or write on the connection; a stream that
// ends early is io.ErrUnexpectedEOF.
func ioError(op string, err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("graceful: %s: %w", op, err)
}
