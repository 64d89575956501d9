package graceful

import (
	"encoding/binary"
	"fmt"
)

// The wire format; the package doc describes it.
const (
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
