package graceful

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// defaultMaxFds bounds the descriptors of one transfer.
const defaultMaxFds = 1 << 20

// A Client receives descriptors. Its zero value is ready to use with the
// defaults. A Client may be used by several goroutines at once.
//
// A transfer carries at most 1<<20 descriptors. A callback that returns
// an error stops a transfer: it may take fewer.
type Client struct {
	// MaxMetaSize bounds the meta of one descriptor, in bytes; 0 means
	// 64<<10 (64 KiB). A sender that exceeds it is refused, and the
	// transfer fails with ErrLimit.
	MaxMetaSize int
	// Timeout bounds each wait for the sender: to dial, for the next
	// bytes, to take an acknowledgement. 0 means DefaultTimeout; a
	// negative value means no bound. Time spent in the callback does not
	// count.
	Timeout time.Duration
	// Allow decides whether to trust the process at the other end. nil
	// means a process of this process's user, or root.
	Allow func(Peer) error

	maxFds int // for tests; 0 means defaultMaxFds
}

// defaultClient is the Client of the package-level functions.
var defaultClient Client

// errNilContext is the error of a call given a nil Context.
var errNilContext = errors.New("graceful: nil Context")

// Receive dials the server at the Unix socket addr and receives every
// transfer it sends, with a zero [Client]. It blocks until the server
// closes the connection, then closes it too. cb owns each descriptor from
// the moment it is called, whatever it returns. If nothing serves at
// addr, the error satisfies errors.Is(err, [ErrNoServer]). See
// [Client.Receive].
func Receive(addr string, cb func(fd int, meta io.Reader) error) error {
	return defaultClient.Receive(context.Background(), addr, cb)
}

// ReceiveFrom receives one transfer on conn with a zero [Client]. It does
// not close conn. cb owns each descriptor from the moment it is called,
// whatever it returns. See [Client.ReceiveFrom].
func ReceiveFrom(conn net.Conn, cb func(fd int, meta io.Reader) error) error {
	return defaultClient.ReceiveFrom(context.Background(), conn, cb)
}

// Receive dials the server at the Unix socket addr, a path or @name for the
// abstract namespace. It checks the server's credentials, and receives
// every transfer it sends. It blocks until the server closes the
// connection, then closes it too. ctx bounds the whole call, dial
// included. If nothing serves at addr (no socket file, or a stale one),
// the error satisfies errors.Is(err, [ErrNoServer]). Any other error means
// the hand-over itself failed.
//
// cb is called once for each received descriptor, in the order they were
// sent. It owns fd from the moment it is called, whatever it returns. meta
// holds the bytes the sender attached to fd, or is nil when it gave none.
// meta is valid only until cb returns. An error from cb stops the
// transfer. The sender is told it was refused, and the descriptors not yet
// given to cb are closed. A panic in cb is not recovered. Those
// descriptors are closed, and the connection Receive dialled, so the
// sender fails. Then the panic goes on to the caller. A nil cb refuses
// the first descriptor.
func (c *Client) Receive(ctx context.Context, addr string, cb func(fd int, meta io.Reader) error) error {
	if ctx == nil {
		return errNilContext
	}
	if err := checkAddr(addr); err != nil {
		return err
	}
	d := net.Dialer{}
	if t := c.timeout(); t > 0 {
		d.Timeout = t
	}
	conn, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		return dialError(addr, err)
	}
	defer conn.Close()
	n, err := c.receiveHello(ctx, conn, cb, true, true)
	if err == nil && n == 0 {
		// A server always sends a transfer, if only an empty one.
		return fmt.Errorf("graceful: %s closed the connection without a transfer: %w", addr, io.ErrUnexpectedEOF)
	}
	return err
}

// ReceiveFrom receives one transfer on conn: all the descriptors sent by
// one Send call or one server handler. It blocks until the transfer has
// ended, and does not close conn. ctx bounds the whole call. cb gets each
// descriptor as in [Client.Receive], and owns it. ReceiveFrom returns
// io.EOF if the peer closed the connection cleanly before the transfer
// began. It returns io.ErrUnexpectedEOF (wrapped) if the peer closed it
// during the transfer.
//
// conn must be a Unix socket connection. Its peer's credentials are
// checked as in [Client.Receive]. Data the peer wrote before the transfer
// must be read before the call. To interrupt a stuck call, for its
// timeout or ctx, ReceiveFrom sets a past deadline on conn. conn is then
// of no further use. Otherwise ReceiveFrom leaves conn's deadlines as the
// caller set them, and they apply. After any error other than io.EOF, the
// rest of the failed transfer may still be queued on conn: close it
// rather than receive from it again.
func (c *Client) ReceiveFrom(ctx context.Context, conn net.Conn, cb func(fd int, meta io.Reader) error) error {
	if ctx == nil {
		return errNilContext
	}
	_, err := c.receive(ctx, conn, cb, false)
	return err
}

// dialError tells a server that is not there (ErrNoServer) from an address
// that is wrong: connect(2) says ENOENT for a missing directory as for a
// missing socket, and ECONNREFUSED for a file or a directory as for a
// socket nobody listens on.
func dialError(addr string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		dir := filepath.Dir(addr)
		if fi, serr := os.Stat(dir); serr != nil || !fi.IsDir() {
			return fmt.Errorf("graceful: %w (the directory %s is missing)", err, dir)
		}
	case errors.Is(err, syscall.ECONNREFUSED):
		// The file may be gone by now: then nothing served there either.
		if fi, serr := os.Lstat(addr); serr == nil && fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("graceful: %w (%s is not a socket)", err, addr)
		}
	default:
		return fmt.Errorf("graceful: %w", err)
	}
	return fmt.Errorf("%w: %w", ErrNoServer, err)
}

// receive runs one transfer, or all until a clean end of stream, and counts
// those that completed.
func (c *Client) receive(ctx context.Context, conn net.Conn, cb func(fd int, meta io.Reader) error, all bool) (int, error) {
	return c.receiveHello(ctx, conn, cb, all, false)
}

// receiveHello is receive on a connection that it may say its first hello on
// before anything else, when early is set: one just dialled, whose buffer
// the hello cannot fill. The sender waits for the hello, and need not wait
// for this side's own first steps too; the hello tells nothing but the
// versions.
func (c *Client) receiveHello(ctx context.Context, conn net.Conn, cb func(fd int, meta io.Reader) error, all, early bool) (int, error) {
	if early {
		var hello [helloLen]byte
		putHello(hello[:])
		_, err := conn.Write(hello[:])
		if err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			return 0, ioError("sending hello", err)
		}
	}
	if err := checkPeer(conn, c.Allow); err != nil {
		return 0, err
	}
	if cb == nil {
		// Without a callback no descriptor is wanted: refuse, not panic.
		cb = func(fd int, _ io.Reader) error {
			closeFd(fd)
			return errors.New("no callback for descriptors")
		}
	}
	r, err := c.newReceiver(ctx, conn)
	if err != nil {
		return 0, err
	}
	defer r.close()
	r.greeted = early
	for n := 0; ; n++ {
		err := r.transfer(cb)
		if err == io.EOF && all {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if !all {
			return 1, nil
		}
	}
}

func (c *Client) timeout() time.Duration {
	if c.Timeout == 0 {
		return DefaultTimeout
	}
	return c.Timeout
}

// errTruncated means the kernel dropped descriptors in transit
// (MSG_CTRUNC): the receiver's descriptor table is full.
var errTruncated = fmt.Errorf("%w: descriptors truncated, the descriptor table full", ErrLimit)

// receiver reads the transfers of one connection.
type receiver struct {
	mc      msgConn
	wd      *watchdog
	maxFds  int
	maxMeta int
	hdr     [hdrLen]byte
	ver     byte // the version of the transfer under way
	greeted bool // the next transfer's hello is sent
	body    []byte
	oob     []byte
	// fds holds the descriptors of the current frame; those from next on
	// have not been given to the callback and are the receiver's to close.
	fds  []int32
	next int
	meta metaReader
	strs metaStrings // the strings of the frame's metas
}

func (c *Client) newReceiver(ctx context.Context, conn net.Conn) (*receiver, error) {
	r := &receiver{
		maxFds:  c.maxFds,
		maxMeta: c.MaxMetaSize,
		oob:     make([]byte, oobSpace),
		fds:     make([]int32, 0, maxBatch),
	}
	if r.maxFds <= 0 {
		r.maxFds = defaultMaxFds
	}
	if r.maxMeta <= 0 {
		r.maxMeta = defaultMaxMetaSize
	}
	if err := r.mc.init(conn); err != nil {
		return nil, err
	}
	r.wd = newWatchdog(ctx, conn, c.timeout())
	return r, nil
}

// close releases every descriptor not given to the callback. It runs on
// every return, a callback's panic included.
func (r *receiver) close() {
	closeFds(r.fds[r.next:])
	r.fds, r.next = r.fds[:0], 0
	r.wd.stop()
}

// transfer receives one transfer, io.EOF if the stream ends before it.
func (r *receiver) transfer(cb func(fd int, meta io.Reader) error) error {
	if err := r.greet(); err != nil {
		return err
	}
	total := 0
	for {
		flags, bodyLen, err := r.readFrame()
		if err != nil {
			if errors.Is(err, ErrProtocol) || errors.Is(err, errTruncated) {
				// The sender learns why rather than find the connection
				// closed. (A limit was told already.)
				r.refuse(err)
			}
			return err
		}
		if total += len(r.fds); total > r.maxFds {
			return r.refuse(fmt.Errorf("%w: more than %d descriptors", ErrLimit, r.maxFds))
		}
		if err := r.deliver(cb, bodyLen); err != nil {
			return err
		}
		if flags&(flagSync|flagEnd) != 0 {
			if err := r.reply(statusOK, ""); err != nil {
				return err
			}
		}
		if flags&flagEnd != 0 {
			return nil
		}
	}
}

// greet opens a transfer: it sends the hello, which names the versions this
// side speaks, and reads the sender's answer. It returns io.EOF when the
// sender closed the connection instead: it has nothing (more) to send.
func (r *receiver) greet() error {
	if r.greeted {
		r.greeted = false // the first transfer's hello went already
	} else {
		putHello(r.hdr[:])
		r.wd.arm()
		err := r.wd.disarm(r.mc.sendmsg(r.hdr[:helloLen], nil))
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			// Gone before the hello: the end of the stream, read as such.
			err = nil
		}
		if err != nil {
			return ioError("sending hello", err)
		}
	}
	n, err := r.readFull(r.hdr[:ackLen])
	if err != nil {
		if n == 0 && errors.Is(err, io.ErrUnexpectedEOF) {
			return io.EOF
		}
		return err
	}
	if r.hdr[1] == statusRefused {
		_, msgLen, err := parseAck(r.hdr[:ackLen], r.hdr[0])
		if err != nil {
			return err
		}
		msg := make([]byte, msgLen)
		if _, err := r.readFull(msg); err != nil {
			return err
		}
		if r.hdr[0] != 0 {
			// A version was picked: not a mismatch, a refusal.
			return fmt.Errorf("graceful: %w: %q", errSenderRefused, msg)
		}
		return fmt.Errorf("%w: the sender says %q", errNoVersion, msg)
	}
	v := r.hdr[0]
	if v < minVersion || v > maxVersion {
		return fmt.Errorf("%w: the sender picked version %d of %d to %d", ErrProtocol, v, minVersion, maxVersion)
	}
	if _, _, err := parseAck(r.hdr[:ackLen], v); err != nil {
		return err
	}
	r.ver = v
	return nil
}

// errSenderRefused is a sender that answered a hello with a refusal in a
// version both speak: the restart layer's predecessor that keeps the
// connections it failed to pass. No other sender does so.
var errSenderRefused = fmt.Errorf("%w: the sender refused the transfer", ErrProtocol)

// readFull reads len(p) bytes, which must come without descriptors. The
// count is of bytes read before an error.
func (r *receiver) readFull(p []byte) (int, error) {
	got := 0
	for got < len(p) {
		n, err := r.read(p[got:], false)
		if err != nil {
			return got, err
		}
		if n == 0 {
			return got, ioError("receiving", io.EOF)
		}
		got += n
	}
	return got, nil
}

// readFrame reads a frame's header with its descriptors into r.fds, then its
// body into r.body.
func (r *receiver) readFrame() (flags byte, bodyLen int, err error) {
	closeFds(r.fds[r.next:])
	r.fds, r.next = r.fds[:0], 0
	for got := 0; got < hdrLen; {
		n, err := r.read(r.hdr[got:], true)
		if err != nil {
			return 0, 0, err
		}
		if n == 0 {
			return 0, 0, ioError("reading frame", io.EOF)
		}
		got += n
	}
	flags, nfds, bodyLen, err := parseHeader(r.hdr[:])
	if err != nil {
		return 0, 0, err
	}
	if nfds != len(r.fds) {
		return 0, 0, fmt.Errorf("%w: frame announces %d descriptors, %d arrived", ErrProtocol, nfds, len(r.fds))
	}
	// Meta lengths are 32-bit: a larger MaxMetaSize bounds nothing more.
	if uint64(bodyLen) > uint64(nfds)*(4+min(uint64(r.maxMeta), 1<<32-1)) {
		return 0, 0, r.refuse(fmt.Errorf("%w: frame body of %d bytes", ErrLimit, bodyLen))
	}
	// The body grows with what arrives, not with what the header announces.
	r.body = r.body[:0]
	for len(r.body) < bodyLen {
		chunk := min(bodyLen-len(r.body), 64<<10)
		r.body = growLen(r.body, chunk)
		p := r.body[len(r.body)-chunk:]
		n, err := r.read(p, false)
		if err != nil {
			return 0, 0, err
		}
		if n == 0 {
			return 0, 0, ioError("reading frame", io.EOF)
		}
		r.body = r.body[:len(r.body)-chunk+n]
	}
	return flags, bodyLen, r.checkBody(bodyLen)
}

func growLen(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		b = append(b[:cap(b)], make([]byte, len(b)+n-cap(b))...)[:len(b)]
	}
	return b[:len(b)+n]
}

// read is one recvmsg. Descriptors are taken only with a frame's header
// (fds): any others, or more than a frame may carry, are closed and make a
// protocol error.
func (r *receiver) read(p []byte, fds bool) (int, error) {
	r.wd.arm()
	n, oobn, flags, err := r.mc.recvmsg(p, r.oob)
	if err = r.wd.disarm(err); err != nil {
		return 0, ioError("receiving", err)
	}
	had := len(r.fds)
	if oobn > 0 {
		r.fds = appendRights(r.fds, r.oob[:oobn])
	}
	if flags&msgCtrunc != 0 {
		return 0, fmt.Errorf("%w: %d arrived", errTruncated, len(r.fds))
	}
	// Other control messages (SO_PASSCRED's credentials) are no concern.
	if len(r.fds) > had && (!fds || len(r.fds) > maxBatch) {
		return 0, fmt.Errorf("%w: descriptors outside a frame header", ErrProtocol)
	}
	return n, nil
}

// checkBody verifies that the body holds one meta per descriptor within the
// limit and nothing else, before any descriptor is delivered.
func (r *receiver) checkBody(bodyLen int) error {
	if bodyLen == 0 {
		return nil
	}
	body := r.body[:bodyLen]
	for range r.fds {
		if len(body) < 4 {
			return fmt.Errorf("%w: frame body ends early", ErrProtocol)
		}
		n := binary.BigEndian.Uint32(body)
		if uint64(n) > uint64(r.maxMeta) {
			return r.refuse(fmt.Errorf("%w: meta of %d bytes", ErrLimit, n))
		}
		if n > uint32(len(body)-4) {
			return fmt.Errorf("%w: meta past the frame body", ErrProtocol)
		}
		body = body[4+n:]
	}
	if len(body) != 0 {
		return fmt.Errorf("%w: %d bytes after the last meta", ErrProtocol, len(body))
	}
	return nil
}

// deliver gives the frame's descriptors to the callback with their meta.
func (r *receiver) deliver(cb func(fd int, meta io.Reader) error, bodyLen int) error {
	body := r.body[:bodyLen]
	r.strs = metaStrings{body: body}
	r.meta.strs = &r.strs
	for r.next < len(r.fds) {
		fd := int(r.fds[r.next])
		var meta io.Reader
		if bodyLen > 0 {
			n := binary.BigEndian.Uint32(body)
			if n > 0 {
				r.meta.b, r.meta.off, r.meta.at = body[4:4+n], 0, bodyLen-len(body)+4
				meta = &r.meta
			}
			body = body[4+n:]
		}
		r.next++
		if err := cb(fd, meta); err != nil {
			return r.refuse(fmt.Errorf("graceful: callback: %w", err))
		}
	}
	return nil
}

// refuse tells the sender why the transfer stops, as far as it can, and
// returns err.
func (r *receiver) refuse(err error) error {
	msg := err.Error()
	if len(msg) > maxRefusal {
		msg = msg[:maxRefusal]
	}
	r.reply(statusRefused, msg)
	return err
}

func (r *receiver) reply(status byte, msg string) error {
	b := r.hdr[:ackLen]
	if msg != "" {
		b = make([]byte, ackLen, ackLen+len(msg))
		b = append(b, msg...)
	}
	putAck(b, r.ver, status, len(msg))
	r.wd.arm()
	err := r.wd.disarm(r.mc.sendmsg(b, nil))
	if err != nil {
		return ioError("acknowledging", err)
	}
	return nil
}
