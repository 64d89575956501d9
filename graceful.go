// Package graceful restarts servers gracefully: a new instance of a server
// takes over the old one's listening sockets, and its live connections too,
// so that no request or connection is refused or dropped while the binary
// is replaced. Underneath, it hands open file descriptors (listening
// sockets, live connections, UDP sockets, files) from one process to
// another over a Unix domain socket.
//
// # Restarts
//
// [Start] makes an [Instance], taking over from the instance that serves at
// a Unix socket if there is one. [Instance.Listen] returns the predecessor's
// listener for an address (or systemd's, or a new one), [Instance.Ready]
// commits, [Instance.Restart] starts a successor and waits until it is
// ready, and [Instance.Done] closes when a successor has taken over; then
// [Drainer.Drain] finishes the requests under way, and
// [Instance.PassConns] hands live connections to the successor, which takes
// them with [Instance.AcceptConn]. A successor that fails before its Ready
// changes nothing: the old instance serves on.
//
// # The hand-over
//
// The process that owns the descriptors is the server. At shutdown it calls
// [ListenAndServe] with a [Handler] that says what to send. Handlers
// combine with [SequenceHandler]. [ObjectHandler], [ListenerHandler] and
// [FileHandler] send one object each; a Handler of one's own writes
// descriptors with [ResponseWriter.Write]. The process that wants the
// descriptors is the client. At start-up it calls [Receive], which dials
// the server and calls a callback once per descriptor, with the
// descriptor's meta (bytes the sender attached to it, or nil). [Meta] is a
// ready-made key-value encoding for that meta. [FdListener], [FdConn] and
// [FdPacketConn] turn a received descriptor back into a net object.
//
// Sending never changes the sender's objects: a listener that was sent keeps
// accepting, and both processes share the socket until one closes its copy,
// so connections queued on a listener are accepted by whichever process asks
// first and none is lost. An application typically stops accepting in a
// [CallbackHandler] placed after the descriptors: it runs only once the
// receiver has acknowledged them, so a successor that crashes before that
// leaves the old instance serving. The server side's work (write, wait for
// the acknowledgement) is also available on a plain connection: [SendTo],
// [SendListenerTo] and [SendFileTo] send one descriptor, and
// [Server.ServeConn] runs a Handler. [ReceiveFrom] reads what they send.
//
// # Ownership
//
// Senders keep their descriptors: the kernel installs new descriptors for the
// same open files in the receiver, which owns them from the moment its
// callback is called, whatever the callback returns. The library closes every
// descriptor it received and did not hand to a callback, on every path: a
// protocol error, a limit exceeded, a timeout, the peer's death, a callback
// that fails or panics. Received descriptors are close-on-exec (on macOS
// from just after their receipt: see Platforms).
//
// # Trust and limits
//
// Both ends check the peer's credentials, as the kernel recorded them when the
// connection was made (SO_PEERCRED on Linux and OpenBSD, LOCAL_PEERCRED on
// macOS and FreeBSD, LOCAL_PEEREID on NetBSD): by default only a process of the
// same user, or root, is served or trusted; [Server.Allow] and [Client.Allow]
// change that. [ListenAndServe] creates the socket file 0600 whatever the
// umask, replaces a stale socket file left by a crashed process, and never
// takes the address of a live server. A [Client] bounds the number of
// descriptors per transfer, the size of each meta, and how long it waits for
// the peer.
//
// # Wire protocol
//
// Every transfer opens with the receiver's hello, 8 bytes that keep their
// layout in every version of the protocol:
//
//	"GRFL" | lowest version(1) | highest version(1) | reserved(2) = 0
//
// The sender answers with the highest version both sides speak,
//
//	version(1) | status(1) = 0 | 0(2)
//
// or, when they speak none in common, with version 0, status 1 and the
// length and text of its reason. Both sides then fail with an error that
// matches [ErrProtocol] and says so, and carry on as before. A newer library thus takes over from an older one
// as long as it still speaks the older one's version. The sender waits for
// the hello before it commits anything to a receiver, so a client that
// connects and stalls holds nothing. This library speaks version 1.
//
// A transfer is then a sequence of frames from sender to receiver, each sent
// with one sendmsg(2) call that carries up to 253 descriptors (SCM_MAX_FD;
// 127 on OpenBSD, whose kernel takes no more) as SCM_RIGHTS ancillary data
// on its first byte. A frame is an 8-byte header
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
// status 0 meaning accepted and 1 rejected, followed by the rejection's
// reason. A transfer that ends without an end frame is an error for the
// receiver, never a partial success; frames with descriptors missing,
// unexpected descriptors, unknown flags or another version are protocol
// errors. The next transfer on the same connection opens with a hello again;
// a sender that has nothing more to send closes the connection instead.
//
// # Platforms
//
// Linux is where the library is tested. On macOS, FreeBSD, NetBSD and
// OpenBSD it hands descriptors over with each system's own calls; the
// tests that hand descriptors over run on Linux only, and CI builds and
// vets the package and its tests for the others. Abstract socket names (@name)
// are Linux's: elsewhere they fail with an error that matches
// [errors.ErrUnsupported]. macOS cannot install received descriptors
// close-on-exec, so the library marks them right after recvmsg(2), holding
// [syscall.ForkLock] meanwhile: a child that os/exec starts then cannot
// inherit them, but a process forked by other means (from C, or by a raw
// system call) between the two calls can. [Instance.Restart] starts the
// executable at the path this program was started from; if it is gone,
// Restart fails on these systems, which have no /proc/self/exe.
//
// Elsewhere (Windows, js/wasm, wasip1, and other systems) the package
// compiles, so that a program that uses it builds everywhere and decides
// at run time. [Start], the Receive functions and methods, [SendTo],
// [SendListenerTo], [SendFileTo], [Server.Serve], [Server.ServeConn],
// [Server.ListenAndServe], [ListenAndServe], [FdListener], [FdConn] and
// [FdPacketConn] return an error that matches [errors.ErrUnsupported],
// and close nothing. [Meta]
// and [Drainer] work everywhere.
package graceful

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"time"
)

// Errors returned by the package. They are wrapped with details; test them
// with [errors.Is].
var (
	// ErrNoServer means nothing serves at the address: no socket file in
	// an existing directory, or a socket file nobody listens on (left by a
	// process that died). An application takes it as "I am the first
	// instance". A path that is not a socket, or whose directory is
	// missing, is another error.
	ErrNoServer = errors.New("graceful: no server at the address")
	// ErrProtocol means the peer does not speak this side's protocol: bad
	// framing, descriptors that do not match their frame, a malformed
	// [Meta]. It is also the error when the two sides speak no protocol
	// version in common: one was built with a library too old or too new
	// for the other. Both sides then stay as they were.
	ErrProtocol = errors.New("graceful: protocol error")
	// ErrLimit means a limit was exceeded. A receiving [Client] fails with
	// it when the sender exceeds its limits, and the
	// sender is refused. It also fails with it when the kernel drops
	// descriptors in transit (MSG_CTRUNC), because the receiver's
	// descriptor table is full. A sender fails with it for a meta of 2 GiB
	// or more, and [Instance.SetState] for state over 32 KiB.
	ErrLimit = errors.New("graceful: limit exceeded")
	// ErrRejected means the receiver did not accept a transfer: its
	// callback returned an error, or the sender exceeded one of its
	// limits. The error carries the receiver's reason.
	ErrRejected = errors.New("graceful: transfer rejected by the receiver")
	// ErrPeerNotAllowed means the process at the other end did not pass
	// this side's Allow policy. A nil Allow admits only a process of this
	// process's user, or root. Nothing was sent or taken.
	ErrPeerNotAllowed = errors.New("graceful: peer not allowed")
	// ErrServerClosed is returned by [Server.Serve] and
	// [Server.ListenAndServe] after [Server.Close] or [Server.Shutdown],
	// and by [Drainer.Serve] after [Drainer.Drain]. It also matches
	// [http.ErrServerClosed], which code written for net/http tests for.
	ErrServerClosed error = serverClosed{}
)

type serverClosed struct{}

func (serverClosed) Error() string { return "graceful: server closed" }

func (serverClosed) Is(target error) bool { return target == http.ErrServerClosed }

// DefaultTimeout is how long either side waits for its peer to make
// progress (the next bytes, an acknowledgement) when no other timeout is
// set.
const DefaultTimeout = 10 * time.Second

// ioError describes a failed read or write on the connection. A stream that
// ends early, or a peer that went away (the connection reset, the pipe
// broken), is io.ErrUnexpectedEOF; the system's error stays in the chain.
func ioError(op string, err error) error {
	switch {
	case err == io.EOF:
		err = io.ErrUnexpectedEOF
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("graceful: %s: %w (%w)", op, io.ErrUnexpectedEOF, err)
	}
	return fmt.Errorf("graceful: %s: %w", op, err)
}
