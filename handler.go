package graceful

import (
	"io"
	"net"
	"os"
)

// A Handler sends descriptors to one receiver that connected to a [Server].
// Everything it writes to w is one transfer: when Handle returns nil the
// server ends the transfer and waits for the receiver's acknowledgement; when
// it returns an error the server closes the connection, and the receiver
// fails. conn is the connection itself, for handlers that write application
// data before their first descriptor.
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
// net.UnixListener and [FdListener]'s result are). ln stays open and keeps
// accepting; both processes share the socket until one closes its copy. The
// handler waits for the receiver's acknowledgement, since the descriptor is
// borrowed from ln only while the handler runs.
func ListenerHandler(ln net.Listener, meta io.WriterTo) Handler {
	return objectHandler(ln, meta)
}

// FileHandler returns a Handler that sends the descriptor of f with meta, as
// [ListenerHandler] does. f stays open and in the mode it was.
func FileHandler(f *os.File, meta io.WriterTo) Handler {
	return objectHandler(f, meta)
}

// ConnHandler returns a Handler that sends the descriptor of c with meta,
// as [ListenerHandler] does. c stays open; data buffered in user space is not
// part of the descriptor.
func ConnHandler(c net.Conn, meta io.WriterTo) Handler {
	return objectHandler(c, meta)
}

// PacketConnHandler returns a Handler that sends the descriptor of pc with
// meta, as [ListenerHandler] does. pc stays open.
func PacketConnHandler(pc net.PacketConn, meta io.WriterTo) Handler {
	return objectHandler(pc, meta)
}

func objectHandler(obj any, meta io.WriterTo) Handler {
	return HandlerFunc(func(_ net.Conn, w ResponseWriter) error {
		return writeObject(w, obj, meta, w.Flush)
	})
}

// CallbackHandler returns a Handler that waits until the receiver has
// acknowledged every descriptor sent before it, then calls f. Placed after
// the descriptors, f is where an application starts to drain: it runs only
// once the successor holds the sockets, so a successor that dies earlier
// leaves this instance serving. f runs while the receiver still waits for
// the transfer to end, so it must not block: start the drain, do not wait
// for it.
func CallbackHandler(f func()) Handler {
	return HandlerFunc(func(_ net.Conn, w ResponseWriter) error {
		if err := w.Flush(); err != nil {
			return err
		}
		f()
		return nil
	})
}
