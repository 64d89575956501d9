//go:build linux

package graceful

import (
	"errors"
	"io"
	"io/fs"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNoServerOnlyWhenNoServer checks that ErrNoServer means that nothing
// serves at a right address, and that a wrong address says what is wrong.
func TestNoServerOnlyWhenNoServer(t *testing.T) {
	checkFds(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	for _, tc := range []struct {
		name, addr string
		noServer   bool
		is         error // what the error also matches
	}{
		{"no socket file", filepath.Join(dir, "none"), true, syscall.ENOENT},
		{"stale socket", stale, true, syscall.ECONNREFUSED},
		{"abstract name nobody holds", "@graceful-nobody-" + filepath.Base(dir), true, syscall.ECONNREFUSED},
		{"regular file", file, false, syscall.ECONNREFUSED},
		{"directory", dir, false, syscall.ECONNREFUSED},
		{"missing directory", filepath.Join(dir, "none", "s"), false, fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Receive(tc.addr, (&closer{}).cb)
			if errors.Is(err, ErrNoServer) != tc.noServer || !errors.Is(err, tc.is) {
				t.Fatalf("Receive: %v; want ErrNoServer %v, and %v", err, tc.noServer, tc.is)
			}
			if !tc.noServer && !strings.Contains(err.Error(), filepath.Dir(tc.addr)) {
				t.Errorf("the error does not name the path: %v", err)
			}
		})
	}
}

// TestNoHandler checks that a Server without a Handler fails at once, where
// it would have sent its receivers an empty transfer.
func TestNoHandler(t *testing.T) {
	checkFds(t)
	addr := sockPath(t)
	if err := (&Server{}).ListenAndServe(addr); err == nil || errors.Is(err, ErrServerClosed) {
		t.Fatalf("ListenAndServe: %v", err)
	}
	if _, err := os.Lstat(addr); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a socket file was left: %v", err)
	}
	ln, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Server{}).Serve(ln); err == nil || errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	// Serve owns ln: it closed it.
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the listener is open: %v", err)
	}
	// ServeConn fails too, and leaves the caller's connection open.
	a, b := socketPair(t)
	defer a.Close()
	defer b.Close()
	if err := (&Server{}).ServeConn(a); err == nil || errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeConn: %v", err)
	}
	if _, err := a.Write([]byte("x")); err != nil {
		t.Errorf("the connection is closed: %v", err)
	}
}

// TestLargeMaxMetaSize checks that a MaxMetaSize too large for the frame's
// arithmetic bounds nothing more, where it made every frame over the limit.
func TestLargeMaxMetaSize(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	for _, size := range []int{math.MaxInt, math.MaxInt / maxBatch, 1 << 33} {
		a, b := socketPair(t)
		rawSend(t, a, answer())
		rawSend(t, a, append(header(flagEnd, 2, 2*(4+3)), metaBody([]byte("abc"), []byte("def"))...), p.fds(2)...)
		var got closer
		if err := (&Client{MaxMetaSize: size}).ReceiveFrom(t.Context(), b, got.cb); err != nil || got.count() != 2 {
			t.Errorf("MaxMetaSize %d: %d descriptors, %v", size, got.count(), err)
		}
		a.Close()
		b.Close()
	}
	p.checkClosed(t)
}

// TestMetaFromWrapped checks that a callback's meta reader, wrapped by the
// application, decodes up to the Client's limit, not a fixed one.
func TestMetaFromWrapped(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	big := Meta{"v": strings.Repeat("x", 3*defaultMaxMetaSize)}
	a, b := socketPair(t)
	defer a.Close()
	defer b.Close()
	sent := make(chan error, 1)
	go func() { sent <- SendTo(a, p.w, big) }()
	var m Meta
	err := (&Client{MaxMetaSize: 4 * defaultMaxMetaSize}).ReceiveFrom(t.Context(), b, func(fd int, meta io.Reader) error {
		unix.Close(fd)
		var err error
		m, err = MetaFrom(io.TeeReader(meta, io.Discard))
		return err
	})
	if err != nil || len(m["v"]) != len(big["v"]) {
		t.Fatalf("ReceiveFrom: %d bytes of meta, %v", len(m["v"]), err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	p.checkClosed(t)
}

// TestPeerDeathIsUnexpectedEOF checks that a peer that dies during a
// transfer makes it fail with io.ErrUnexpectedEOF on either side, whatever
// the system said (a reset, a broken pipe), which stays in the chain.
func TestPeerDeathIsUnexpectedEOF(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	t.Run("receiver", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			a, b := socketPair(t)
			rawSend(t, a, answer())
			// The receiver is told the transfer goes on, then the
			// sender goes with unread bytes in its socket: a reset.
			rawSend(t, a, header(flagSync, 1, 0), p.fds(1)...)
			done := make(chan error, 1)
			go func() {
				done <- ReceiveFrom(b, func(fd int, _ io.Reader) error {
					unix.Close(fd)
					a.Close()
					return nil
				})
			}()
			err := <-done
			b.Close()
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("ReceiveFrom: %v, want io.ErrUnexpectedEOF", err)
			}
		}
	})
	t.Run("sender", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			a, b := socketPair(t)
			// The receiver says hello, then goes with the sender's
			// answer unread: the sender's next write breaks the pipe.
			b.Write(hello())
			done := make(chan error, 1)
			go func() {
				done <- transfer(t.Context(), a, nil, DefaultTimeout, func(s *ResponseWriter) error {
					b.Close()
					for i := 0; i < 1000; i++ {
						if err := s.Write(p.w, nil); err != nil {
							return err
						}
						if err := s.flush(); err != nil {
							return err
						}
					}
					return nil
				})
			}()
			err := <-done
			a.Close()
			var errno syscall.Errno
			if !errors.Is(err, io.ErrUnexpectedEOF) || !errors.As(err, &errno) {
				t.Fatalf("sender: %v, want io.ErrUnexpectedEOF with the errno", err)
			}
		}
	})
	p.checkClosed(t)
}
