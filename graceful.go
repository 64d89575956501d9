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
