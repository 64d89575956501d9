package graceful

import (
	"context"
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// A ResponseWriter sends descriptors to the receiver on behalf of a
// [Handler]. A [Server] makes one per transfer: a ResponseWriter made any
// other way fails every call. It queues descriptors and sends up to 253 in
// one system call. Used after its transfer ended, it fails with an error
// that matches [net.ErrClosed].
type ResponseWriter struct {
	mc  msgConn
	wd  *watchdog
	fds []int32
	// dups are the queued descriptors that the writer owns: duplicates
	// of objects' descriptors, closed once their frame is sent or the
	// transfer fails.
	dups []int32
	buf  []byte // a frame: header, then each queued descriptor's meta
	meta bool   // whether any queued descriptor has meta
	oob  []byte
	ack  [ackLen]byte
	sync [hdrLen]byte // a frame of its own, for catchUp
	err  error        // once a frame failed, the stream is broken for good
	done bool
	// after holds the functions of CallbackHandlers, to run once the
	// receiver has acknowledged everything written before them: before
	// the next Write, or after the end of the transfer.
	after []func()
}

// errEnded is the error of a ResponseWriter used after its transfer ended:
// the writer is closed.
var errEnded = fmt.Errorf("graceful: transfer already ended: %w", net.ErrClosed)

// errNoTransfer is the error of a ResponseWriter that no Server made.
var errNoTransfer = errors.New("graceful: ResponseWriter of no transfer")

// bodyTarget is how much meta a frame gathers before it is sent early.
const bodyTarget = 64 << 10

func newResponseWriter(ctx context.Context, conn net.Conn, timeout time.Duration) (*ResponseWriter, error) {
	s := &ResponseWriter{
		fds: make([]int32, 0, maxBatch),
		buf: make([]byte, hdrLen, 1024),
		oob: make([]byte, oobSpace),
	}
	if err := s.mc.init(conn); err != nil {
		return nil, err
	}
	s.wd = newWatchdog(ctx, conn, timeout)
	return s, nil
}

// metaWriter appends what a meta's WriteTo writes to the frame.
type metaWriter ResponseWriter

func (w *metaWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	return len(p), nil
}

// Write queues fd with its meta (nil for none), which it encodes at once.
// The caller keeps fd; the receiver gets a descriptor of its own. fd must
// stay open until the transfer ends, or until a later [CallbackHandler]
// runs its function: it may be sent as late as that. Write blocks only
// when a full batch must be sent first, until the receiver takes it.
// A [Meta], or any meta that implements [encoding.BinaryAppender], is
// encoded into the frame without a copy.
func (w *ResponseWriter) Write(fd int, meta io.WriterTo) error {
	if err := w.check(); err != nil {
		return err
	}
	if len(w.after) != 0 {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if fd < 0 || fd > 1<<31-1 {
		return fmt.Errorf("graceful: invalid descriptor %d: %w", fd, syscall.EBADF)
	}
	if len(w.fds) == maxBatch || len(w.buf)-hdrLen >= bodyTarget {
		if err := w.send(0); err != nil {
			return err
		}
	}
	if err := w.appendMeta(meta); err != nil {
		return err
	}
	w.fds = append(w.fds, int32(fd))
	return nil
}

// appendMeta appends a descriptor's meta to the frame: its length, then
// its bytes.
func (w *ResponseWriter) appendMeta(meta io.WriterTo) error {
	mark := len(w.buf)
	w.buf = append(w.buf, 0, 0, 0, 0)
	var err error
	switch a := meta.(type) {
	case nil:
	case Meta: // without the look-up of an interface
		w.buf = a.appendBinary(w.buf)
	case *Meta:
		if a != nil {
			w.buf = a.appendBinary(w.buf)
		}
	case encoding.BinaryAppender:
		w.buf, err = a.AppendBinary(w.buf)
	default:
		_, err = meta.WriteTo((*metaWriter)(w))
	}
	if err != nil {
		w.buf = w.buf[:mark]
		return fmt.Errorf("graceful: writing meta: %w", err)
	}
	n := len(w.buf) - mark - 4
	if n > 1<<31-1 {
		w.buf = w.buf[:mark]
		return fmt.Errorf("%w: meta of %d bytes", ErrLimit, n)
	}
	if n > 0 {
		binary.BigEndian.PutUint32(w.buf[mark:], uint32(n))
		w.meta = true
	}
	return nil
}

// check tells why w cannot be written to: no Server made it, its
// transfer failed, or it ended.
func (w *ResponseWriter) check() error {
	switch {
	case w == nil || w.buf == nil:
		return errNoTransfer
	case w.err != nil:
		return w.err
	case w.done:
		return errEnded
	}
	return nil
}

// flush sends every queued descriptor, waits until the receiver has
// acknowledged all descriptors written so far, then runs the pending
// functions of callAfter.
func (w *ResponseWriter) flush() error {
	if err := w.check(); err != nil {
		return err
	}
	if err := w.roundTrip(flagSync); err != nil {
		return err
	}
	w.callPending()
	return nil
}

// callAfter arranges for f to run once the receiver has acknowledged every
// descriptor written so far, without a round trip of its own when nothing
// is written after it: then f runs after the end of the transfer.
func (w *ResponseWriter) callAfter(f func()) error {
	if err := w.check(); err != nil {
		return err
	}
	w.after = append(w.after, f)
	return nil
}

// callPending calls the functions of callAfter, once.
func (w *ResponseWriter) callPending() {
	after := w.after
	w.after = nil
	for _, f := range after {
		f()
	}
}

// end finishes the transfer and waits for the receiver's acknowledgement.
func (w *ResponseWriter) end() error {
	err := w.roundTrip(flagEnd)
	w.done = true
	if err == nil {
		w.callPending()
	}
	return err
}

// writeDup queues fd, a duplicate that w then owns: it closes fd
// on every path, once sent or when fd will not be sent.
func (w *ResponseWriter) writeDup(fd int, meta io.WriterTo) error {
	queued := false
	defer func() {
		if !queued { // an error, or a panic in meta's WriteTo
			closeFd(fd)
		}
	}()
	if err := w.Write(fd, meta); err != nil {
		return err
	}
	w.dups = append(w.dups, int32(fd))
	queued = true
	return nil
}

// close closes the duplicates that were queued and will not be sent now
// (the handler failed or panicked), and ends the watch on the connection,
// which stays open.
func (w *ResponseWriter) close() {
	w.clear()
	w.wd.stop()
}

// clear empties the queue once its frame is sent or given up, and closes
// the writer's duplicates: after sendmsg the kernel holds its own
// references to the descriptors in flight.
func (w *ResponseWriter) clear() {
	w.fds, w.buf, w.meta = w.fds[:0], w.buf[:hdrLen], false
	closeFds(w.dups)
	w.dups = w.dups[:0]
}

func (w *ResponseWriter) roundTrip(flags byte) error {
	if err := w.send(flags); err != nil {
		return err
	}
	if err := w.readAck(); err != nil {
		w.err = err
		return err
	}
	return nil
}

// send writes the queued descriptors as one frame.
func (w *ResponseWriter) send(flags byte) error {
	if w.err != nil {
		return w.err
	}
	body := len(w.buf) - hdrLen
	if !w.meta {
		body = 0
	}
	putHeader(w.buf, flags, len(w.fds), body)
	oobn := putRights(w.oob, w.fds)
	w.wd.arm()
	err := w.wd.disarm(w.mc.sendmsg(w.buf[:hdrLen+body], w.oob[:oobn]))
	if inFlightLimit(err) {
		// The kernel bounds the descriptors in flight (on Linux, a user
		// other than root has its RLIMIT_NOFILE), which a large transfer
		// reaches when the receiver lags. Nothing was sent: wait until the
		// receiver has taken every frame so far, then send again.
		if cerr := w.catchUp(); cerr != nil {
			w.clear()
			w.err = cerr
			return cerr
		}
		w.wd.arm()
		err = w.wd.disarm(w.mc.sendmsg(w.buf[:hdrLen+body], w.oob[:oobn]))
	}
	w.clear()
	if err != nil {
		w.err = ioError("sending descriptors", err)
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			// A receiver that refuses writes its reason before it closes:
			// report that rather than the broken pipe it left.
			if rerr := w.readAck(); errors.Is(rerr, ErrRejected) {
				w.err = rerr
			}
		}
	}
	return w.err
}

// catchUp sends a sync frame without descriptors and waits for its
// acknowledgement.
func (w *ResponseWriter) catchUp() error {
	putHeader(w.sync[:], flagSync, 0, 0)
	w.wd.arm()
	if err := w.wd.disarm(w.mc.sendmsg(w.sync[:], nil)); err != nil {
		return ioError("sending descriptors", err)
	}
	return w.readAck()
}

func (w *ResponseWriter) readAck() error {
	if err := w.readFull(w.ack[:]); err != nil {
		return err
	}
	status, n, err := parseAck(w.ack[:], version)
	if err != nil || status == statusOK {
		return err
	}
	msg := make([]byte, n)
	if err := w.readFull(msg); err != nil {
		return err
	}
	return fmt.Errorf("%w: %q", ErrRejected, msg)
}

// answerHello reads the receiver's hello, which opens each transfer, and
// answers it with the version to speak, or with a refusal when the two
// sides speak none in common.
func (w *ResponseWriter) answerHello() error {
	var hello [helloLen]byte
	if err := w.readFull(hello[:]); err != nil {
		return err
	}
	v, perr := pickVersion(hello[:])
	if perr != nil && !errors.Is(perr, errNoVersion) {
		return perr
	}
	b := w.ack[:]
	if perr == nil {
		putAck(b, v, statusOK, 0)
	} else {
		// The version field is 0: no version was picked.
		msg := perr.Error()
		b = append(make([]byte, ackLen, ackLen+len(msg)), msg...)
		putAck(b, 0, statusRefused, len(msg))
	}
	w.wd.arm()
	if err := w.wd.disarm(w.mc.sendmsg(b, nil)); err != nil {
		return ioError("answering hello", err)
	}
	return perr
}

// readFull reads from the receiver, refusing any descriptor it sends.
func (w *ResponseWriter) readFull(p []byte) error {
	for len(p) > 0 {
		w.wd.arm()
		n, oobn, _, err := w.mc.recvmsg(p, w.oob)
		if err = w.wd.disarm(err); err != nil {
			return ioError("reading from the receiver", err)
		}
		if oobn > 0 {
			var buf [maxBatch]int32
			if fds := appendRights(buf[:0], w.oob[:oobn]); len(fds) > 0 {
				closeFds(fds)
				return fmt.Errorf("%w: receiver sent descriptors", ErrProtocol)
			}
		}
		if n == 0 {
			return ioError("reading from the receiver", io.EOF)
		}
		p = p[n:]
	}
	return nil
}

// transfer runs one complete transfer on conn: it checks the peer, lets
// write queue descriptors, ends the transfer unless write did, and waits for
// the acknowledgement.
func transfer(ctx context.Context, conn net.Conn, allow func(Peer) error, timeout time.Duration, write func(*ResponseWriter) error) error {
	s, err := openTransfer(ctx, conn, allow, timeout)
	if err != nil {
		return err
	}
	defer s.close()
	return s.run(write)
}

// openTransfer checks the peer and answers its hello. The caller closes the
// writer it returns.
func openTransfer(ctx context.Context, conn net.Conn, allow func(Peer) error, timeout time.Duration) (*ResponseWriter, error) {
	if err := checkPeer(conn, allow); err != nil {
		return nil, err
	}
	s, err := newResponseWriter(ctx, conn, timeout)
	if err != nil {
		return nil, err
	}
	if err := s.answerHello(); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// run lets write queue descriptors, ends the transfer unless write did, and
// waits for the acknowledgement.
func (w *ResponseWriter) run(write func(*ResponseWriter) error) error {
	if err := write(w); err != nil {
		return err
	}
	return w.end()
}

// SendTo sends fd with meta (nil for none) to the receiver at the other end
// of conn, as one transfer. It blocks until the receiver has acknowledged
// it. The caller keeps fd; the receiver gets a descriptor of its own.
//
// conn must be a Unix socket connection. Its peer must be the same user
// as this process, or root. SendTo waits at most [DefaultTimeout] for each
// step of the receiver. It interrupts a stuck call by setting a past
// deadline on conn, and otherwise leaves conn's deadlines alone. It does
// not close conn. For another timeout or peer policy, or to send a
// connection, use [Server.ServeConn] with an [ObjectHandler].
func SendTo(conn net.Conn, fd int, meta io.WriterTo) error {
	return transfer(context.Background(), conn, nil, DefaultTimeout, func(s *ResponseWriter) error {
		return s.Write(fd, meta)
	})
}

// SendListenerTo sends the descriptor of ln with meta, as [SendTo] does.
// It sends a duplicate, made at the start (close-on-exec) and closed
// before it returns. ln is borrowed only for that moment: it stays open
// and keeps accepting. Another goroutine may close ln while SendListenerTo
// waits for the receiver; the close does not wait. Closed before the
// duplicate is made, ln makes SendListenerTo fail. Both processes share
// the listening socket until each has closed its copy.
func SendListenerTo(conn net.Conn, ln net.Listener, meta io.WriterTo) error {
	return sendObjectTo(conn, ln, meta)
}

// SendFileTo sends the descriptor of f with meta, a duplicate as
// [SendListenerTo] sends. f stays open and unchanged: it is not switched
// to blocking mode. Closing it does not wait for the receiver.
func SendFileTo(conn net.Conn, f *os.File, meta io.WriterTo) error {
	return sendObjectTo(conn, f, meta)
}

func sendObjectTo(conn net.Conn, obj any, meta io.WriterTo) error {
	return transfer(context.Background(), conn, nil, DefaultTimeout, func(s *ResponseWriter) error {
		return writeObject(s, obj, meta)
	})
}

// writeObject queues a duplicate of obj's descriptor, which w owns from
// then on.
func writeObject(w *ResponseWriter, obj any, meta io.WriterTo) error {
	if err := w.check(); err != nil {
		return err
	}
	fd, err := dupObject(obj)
	if err != nil {
		return err
	}
	return w.writeDup(fd, meta)
}
