package graceful

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// The wire format; the package doc describes it.
const (
	// minVersion and maxVersion are the protocol versions this library
	// speaks. A receiver names its range in its hello and the sender picks
	// the highest version of both ranges, so a newer library takes over from
	// an older one as long as it still speaks the older one's version.
	minVersion = 1
	maxVersion = 1
	// version is the version whose frames this library writes and reads.
	version = 1

	helloLen = 8
	hdrLen   = 8
	ackLen   = 4
	// maxRefusal bounds the message of a refusal on both sides.
	maxRefusal = 1024

	flagSync = 1
	flagEnd  = 2

	statusOK      = 0
	statusRefused = 1
	// statusReady is a successor's commit, sent in the reply layout to its
	// predecessor after the hand-over (see Instance.Ready).
	statusReady = 2
)

// errNoVersion means the two sides speak no protocol version in common:
// one was built with a library too old or too new for the other.
var errNoVersion = fmt.Errorf("%w: no protocol version in common", ErrProtocol)

// helloMagic opens every hello. The hello and its answer keep their layout
// in every version, so that any two versions can tell each other apart.
const helloMagic = "GRFL"

// putHello writes the receiver's hello: the magic, then the lowest and the
// highest version it speaks, then two bytes reserved as zero.
func putHello(b []byte) {
	copy(b, helloMagic)
	b[4] = minVersion
	b[5] = maxVersion
	b[6], b[7] = 0, 0
}

// pickVersion reads a receiver's hello and returns the version to speak: the
// highest that both sides speak. The reserved bytes are ignored, so that a
// later version may use them.
func pickVersion(b []byte) (byte, error) {
	if string(b[:4]) != helloMagic {
		return 0, fmt.Errorf("%w: no hello: % x", ErrProtocol, b[:helloLen])
	}
	lo, hi := b[4], b[5]
	if lo > hi || lo == 0 {
		return 0, fmt.Errorf("%w: hello for versions %d to %d", ErrProtocol, lo, hi)
	}
	v := min(hi, maxVersion)
	if v < lo || v < minVersion {
		return 0, fmt.Errorf("%w: the receiver speaks versions %d to %d, the sender %d to %d", errNoVersion, lo, hi, minVersion, maxVersion)
	}
	return v, nil
}

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

// putAck writes a reply: an acknowledgement, a refusal, or the answer to a
// hello, whose version field is then the version picked.
func putAck(b []byte, v, status byte, msgLen int) {
	b[0] = v
	b[1] = status
	binary.BigEndian.PutUint16(b[2:], uint16(msgLen))
}

// parseAck reads a reply in version v and returns its status and the
// length of the message that follows it.
func parseAck(b []byte, v byte) (status byte, msgLen int, err error) {
	if b[0] != v {
		return 0, 0, fmt.Errorf("%w: reply in version %d, want %d", ErrProtocol, b[0], v)
	}
	msgLen = int(binary.BigEndian.Uint16(b[2:]))
	if b[1] != statusOK && b[1] != statusRefused || b[1] == statusOK && msgLen != 0 {
		return 0, 0, fmt.Errorf("%w: reply status %d with %d bytes", ErrProtocol, b[1], msgLen)
	}
	if msgLen > maxRefusal {
		return 0, 0, fmt.Errorf("%w: refusal of %d bytes", ErrProtocol, msgLen)
	}
	return b[1], msgLen, nil
}

// The restart layer's messages have the layout of a reply, followed by
// their text: a successor's ready message (statusReady, its pid if its
// predecessor asked for it), a predecessor's commit (statusOK) or refusal
// (statusRefused, the reason), and the commit of passed connections.
// docs/PROTOCOL.md describes them.

// errNoReply is a connection closed before the first byte of a reply.
var errNoReply = fmt.Errorf("closed without a reply: %w", io.ErrUnexpectedEOF)

// writeReply writes a message of the restart layer on conn, a status and
// its text, by deadline (none for the zero time).
func writeReply(conn net.Conn, deadline time.Time, status byte, text string) error {
	if len(text) > maxRefusal {
		text = text[:maxRefusal]
	}
	b := make([]byte, ackLen, ackLen+len(text))
	putAck(b, version, status, len(text))
	conn.SetWriteDeadline(deadline)
	defer conn.SetWriteDeadline(time.Time{})
	_, err := conn.Write(append(b, text...))
	return err
}

// readReply reads a message of the restart layer: its status and text.
// Plain reads: descriptors sent along would be closed by the kernel.
func readReply(r io.Reader) (byte, []byte, error) {
	var head [ackLen]byte
	n, err := io.ReadFull(r, head[:])
	if n == 0 && (err == io.EOF || errors.Is(err, syscall.ECONNRESET)) {
		return 0, nil, errNoReply
	}
	if err != nil {
		return 0, nil, err
	}
	if head[0] != version || head[1] > statusReady {
		return 0, nil, fmt.Errorf("%w: % x instead of a reply", ErrProtocol, head)
	}
	text := make([]byte, binary.BigEndian.Uint16(head[2:]))
	if len(text) > maxRefusal || head[1] == statusOK && len(text) != 0 {
		return 0, nil, fmt.Errorf("%w: reply status %d with %d bytes", ErrProtocol, head[1], len(text))
	}
	if _, err := io.ReadFull(r, text); err != nil {
		return 0, nil, err
	}
	return head[1], text, nil
}

// refuse tells the instance at the other end of conn, at most a second
// from now, that it will not take over, or keep what it got.
func refuse(conn net.Conn, reason string) {
	writeReply(conn, time.Now().Add(time.Second), statusRefused, reason)
}
