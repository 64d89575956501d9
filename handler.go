package graceful

import (
	"io"
	"net"
	"os"
)

// A Handler sends descriptors to one receiver that connected to a [Server].
// Everything it writes to w is one transfer: when Handle returns nil the
// server sends what is still queued, ends the transfer and waits for the
// receiver's acknowledgement; when it returns an error (or panics) the
// server closes the connection without sending what is queued, and the
// receiver fails. conn is the connection itself, for handlers that write
// application data before their first descriptor.
type Handler interface {
	Handle(conn net.Conn, w ResponseWriter) error
}

// HandlerFunc adapts a function to a [Handler].
type HandlerFunc func(conn net.Conn, w ResponseWriter) error

// Handle calls f(conn, w).
func (f HandlerFunc) Handle(conn net.Conn, w ResponseWriter) error {
	return f(conn, w)
}

// SequenceHandler returns a Handler that runs hs in order and stops at the
// first error.
func SequenceHandler(hs ...Handler) Handler {
	return HandlerFunc(func(conn net.Conn, w ResponseWriter) error {
		for _, h := range hs {
			if err := h.Handle(conn, w); err != nil {
				return err
			}
		}
		return nil
	})
}

// FdHandler returns a Handler that sends fd with meta (nil for none). The
// caller keeps fd and must keep it open while the server runs.
func FdHandler(fd int, meta io.WriterTo) Handler {
	return HandlerFunc(func(_ net.Conn, w ResponseWriter) error {
		return w.Write(fd, meta)
	})
}

// ListenerHandler returns a Handler that sends the descriptor of ln with
// meta. ln must be backed by a descriptor (as net.TCPListener,
// net.UnixListener and [FdListener]'s result are).
//
// The handler queues a duplicate of ln's descriptor (close-on-exec) and
// returns; the server owns the duplicate and closes it once the frame
// carrying it is sent, or when the transfer fails. ln is borrowed only to
// duplicate it: it stays open and keeps accepting, and once the handler has
// run the application may close it at any time, even before the receiver
// has acknowledged, without waiting for the receiver (closed before, ln
// makes the handler fail). Both processes share the socket until each has
// closed its copy.
//
// The handler does not wait for the receiver: descriptors queued by
// consecutive handlers go out together, up to 253 in one frame, when a
// [CallbackHandler] or the end of the transfer sends them, so the server
// holds at most a batch of duplicates at a time. The handler blocks only
// when a full batch must be sent first, until the receiver takes it. Given
// a ResponseWriter other than the server's (an application's wrapper), it
// writes the duplicate, flushes, and closes the duplicate itself.
func ListenerHandler(ln net.Listener, meta io.WriterTo) Handler {
	return objectHandler(ln, meta)
}

// FileHandler returns a Handler that sends the descriptor of f with meta, a
// duplicate as [ListenerHandler] sends. f stays open and in the mode it
// was, and closing it does not wait for the receiver.
func FileHandler(f *os.File, meta io.WriterTo) Handler {
	return objectHandler(f, meta)
}

// ConnHandler returns a Handler that sends the descriptor of c with meta, a
// duplicate as [ListenerHandler] sends. c stays open, and closing it does
// not wait for the receiver; data buffered in user space is not part of
// the descriptor.
func ConnHandler(c net.Conn, meta io.WriterTo) Handler {
	return objectHandler(c, meta)
}

// PacketConnHandler returns a Handler that sends the descriptor of pc with
// meta, a duplicate as [ListenerHandler] sends. pc stays open, and closing
// it does not wait for the receiver.
func PacketConnHandler(pc net.PacketConn, meta io.WriterTo) Handler {
	return objectHandler(pc, meta)
}

func objectHandler(obj any, meta io.WriterTo) Handler {
	return HandlerFunc(func(_ net.Conn, w ResponseWriter) error {
		return writeObject(w, obj, meta)
	})
}

// CallbackHandler returns a Handler that calls f once the receiver has
// acknowledged every descriptor sent before it. Placed after the
// descriptors, f is where an application starts to drain: it runs only once
// the successor holds the sockets, so a successor that dies earlier leaves
// this instance serving. Last in a transfer, f runs after the receiver has
// acknowledged the end of the transfer, so a program that exits as soon as
// its drain is done never cuts its successor's transfer short; anywhere
// else it runs before the next descriptor is written. f must not block: it
// holds up the connection, so start the drain, do not wait for it.
func CallbackHandler(f func()) Handler {
	return HandlerFunc(func(_ net.Conn, w ResponseWriter) error {
		if s, ok := w.(*sender); ok {
			return s.callAfter(f)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		f()
		return nil
	})
}
