package graceful

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// A Handler sends descriptors to one receiver that connected to a [Server].
// Everything it writes to w is one transfer. When it returns nil, the
// server sends what is still queued, ends the transfer and waits for the
// receiver's acknowledgement. When it returns an error (or panics), the
// server sends nothing more: the receiver fails, and the duplicates that
// object handlers queued are closed. conn is the connection itself, for
// handlers that write application data before their first descriptor.
// A Handler that writes descriptors with w.Write keeps them: see
// [ResponseWriter.Write].
type Handler func(conn net.Conn, w *ResponseWriter) error

// errNilHandler is the error of a nil Handler in a sequence.
var errNilHandler = errors.New("graceful: nil Handler")

// SequenceHandler returns a Handler that runs hs in order, one transfer
// for all. It stops at the first error; a nil Handler in hs is an error.
// It blocks as long as each of hs does, and owns nothing of theirs.
func SequenceHandler(hs ...Handler) Handler {
	return func(conn net.Conn, w *ResponseWriter) error {
		for _, h := range hs {
			if h == nil {
				return errNilHandler
			}
			if err := h(conn, w); err != nil {
				return err
			}
		}
		return nil
	}
}

// ObjectHandler returns a Handler that sends the descriptor of obj with
// meta (nil for none). obj is any object backed by a descriptor: a
// connection, packet connection or listener of package net, or an
// *os.File. A net.Conn or net.PacketConn converts with a type assertion,
// as in c.(syscall.Conn).
//
// The handler queues a duplicate of obj's descriptor (close-on-exec) and
// returns. The server owns the duplicate: it closes it once the frame
// carrying it is sent, or when the transfer fails. obj is borrowed only
// to duplicate it. It stays open and unchanged (a file is not switched to
// blocking mode). Once the handler has run, the application may close obj
// at any time, without waiting for the receiver. Closed before, obj makes
// the handler fail. Both processes share the open file until each has
// closed its copy. Data a connection buffered in user space (in a
// bufio.Reader, say) is not part of the descriptor.
//
// The handler does not wait for the receiver. Descriptors queued by
// consecutive handlers go out together, up to 253 in one frame. A
// [CallbackHandler] or the end of the transfer sends them, so the server
// holds at most a batch of duplicates at a time. The handler blocks only
// when a full batch must be sent first, until the receiver takes it.
func ObjectHandler(obj syscall.Conn, meta io.WriterTo) Handler {
	return objectHandler(obj, meta)
}

// ListenerHandler returns a Handler that sends the descriptor of ln with
// meta, as [ObjectHandler] does. ln must be backed by a descriptor, as
// net.TCPListener, net.UnixListener and [FdListener]'s result are. It
// keeps accepting; both processes share the socket until each closes it.
func ListenerHandler(ln net.Listener, meta io.WriterTo) Handler {
	return objectHandler(ln, meta)
}

// FileHandler returns a Handler that sends the descriptor of f with meta,
// as [ObjectHandler] does. f stays open and in the mode it was.
func FileHandler(f *os.File, meta io.WriterTo) Handler {
	return objectHandler(f, meta)
}

func objectHandler(obj any, meta io.WriterTo) Handler {
	return func(_ net.Conn, w *ResponseWriter) error {
		return writeObject(w, obj, meta)
	}
}

// CallbackHandler returns a Handler that calls f once the receiver has
// acknowledged every descriptor sent before it. Placed after the
// descriptors, f is where an application starts to drain. It runs only
// once the successor holds the sockets, so a successor that dies earlier
// leaves this instance serving. Last in a transfer, f runs after the
// receiver has acknowledged the end of the transfer. A program that exits
// once its drain is done thus never cuts its successor's transfer short.
// Anywhere else, f runs before the next descriptor is written. f must not
// block: it holds up the connection. Start the drain; do not wait for it.
// A nil f makes the handler fail.
func CallbackHandler(f func()) Handler {
	return func(_ net.Conn, w *ResponseWriter) error {
		if f == nil {
			return errors.New("graceful: CallbackHandler of a nil function")
		}
		return w.callAfter(f)
	}
}
