//go:build linux

package graceful

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FuzzReceive feeds arbitrary bytes, with up to a batch of descriptors
// attached to the first at bytes, to a receiver through a real socket: it
// must fail with a typed error or deliver exactly what was sent, close every
// descriptor it did not deliver, and return once the stream ends.
func FuzzReceive(f *testing.F) {
	meta := Meta{"name": "app.log"}.appendBinary(nil)
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	// Each transfer opens with the answer to the receiver's hello; the
	// descriptors go with the first byte at or after at.
	ans := answer()
	refused := make([]byte, ackLen)
	putAck(refused, 0, statusRefused, 2)
	f.Add(cat(ans, header(flagEnd, 0, 0)), uint8(0), uint16(0))
	f.Add(cat(ans, header(flagEnd, 1, 0)), uint8(1), uint16(ackLen))
	f.Add(cat(ans, header(flagEnd, 2, 8+len(meta)), metaBody(meta, nil)), uint8(2), uint16(ackLen))
	f.Add(cat(ans, header(flagSync, 1, 0), header(flagEnd, 0, 0), ans, header(flagEnd, 0, 0)), uint8(1), uint16(ackLen))
	f.Add(cat(ans, header(0, 3, 0), header(flagEnd, 0, 0)), uint8(3), uint16(ackLen))
	f.Add(cat(ans, header(flagEnd, 1, 4+17), metaBody(bytes.Repeat([]byte{1}, 17))), uint8(1), uint16(100))
	f.Add(cat(ans, []byte{version, flagEnd, 0, 1, 0xff, 0xff, 0xff, 0xff}), uint8(1), uint16(ackLen))
	f.Add(cat(refused, []byte("no")), uint8(0), uint16(0))
	client := &Client{Timeout: time.Second, maxFds: 300, MaxMetaSize: 1 << 10}
	f.Fuzz(func(t *testing.T, data []byte, nfds uint8, at uint16) {
		before := countFds(t)
		var pfd [2]int
		if err := unix.Pipe2(pfd[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		fds := make([]int, min(int(nfds), maxBatch))
		for i := range fds {
			fds[i] = pfd[1]
		}
		a, b := socketPair(t)
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			split := min(int(at), len(data))
			var oob []byte
			if len(fds) > 0 {
				oob = unix.UnixRights(fds...)
			}
			if _, _, err := a.WriteMsgUnix(data[:split], oob, nil); err == nil {
				a.Write(data[split:])
			}
			// Then end the stream, and take the receiver's replies.
			a.CloseWrite()
			io.Copy(io.Discard, a)
		}()
		delivered := 0
		err := receiveAll(client, b, func(fd int, meta io.Reader) error {
			delivered++
			checkCallbackMeta(t, meta)
			return unix.Close(fd)
		})
		b.Close()
		<-sent
		a.Close()
		unix.Close(pfd[0])
		unix.Close(pfd[1])
		switch {
		case err == nil && delivered != len(fds):
			t.Fatalf("success with %d of %d descriptors delivered", delivered, len(fds))
		case err != nil && !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrLimit) && !errors.Is(err, io.ErrUnexpectedEOF):
			t.Fatalf("untyped error: %v", err)
		}
		if after := countFds(t); after != before {
			t.Fatalf("%d descriptors open before, %d after", before, after)
		}
	})
}

// checkCallbackMeta decodes a callback's meta as an application would, and
// checks that the receiver's own way of decoding it gives what decoding a
// copy of its bytes gives.
func checkCallbackMeta(t *testing.T, meta io.Reader) {
	t.Helper()
	var raw []byte
	if mr, ok := meta.(*metaReader); ok {
		raw = bytes.Clone(mr.b[mr.off:])
	}
	m, err := MetaFrom(meta)
	want, werr := MetaFrom(bytes.NewReader(raw))
	if (err == nil) != (werr == nil) || !maps.Equal(m, want) {
		t.Fatalf("meta %x: decoded %q, %v in the callback; %q, %v from a copy", raw, m, err, want, werr)
	}
}
