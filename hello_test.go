//go:build linux

package graceful

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"strings"
	"testing"
	"time"
)

// TestNotHostage checks that clients that connect and say nothing hold
// nothing: the real successor is served at once, although the server waits
// for each of them without a bound.
func TestNotHostage(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	addr := sockPath(t)
	srv := &Server{Timeout: -1, Handler: fdHandler(p.w, nil)}
	serve(t, srv, addr)
	for i := 0; i < 2; i++ {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: addr, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The server takes up the client (and waits for its hello).
		waitTracked(t, srv, i+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got closer
	if err := (&Client{}).Receive(ctx, addr, got.cb); err != nil || got.count() != 1 {
		t.Fatalf("the successor behind two stalling clients: %d descriptors, %v", got.count(), err)
	}
	p.checkClosed(t)
}

// TestVersions plays peers built with other versions of the library against
// this one: a newer receiver that still speaks version 1 takes over; one that
// speaks only later versions is refused with a reason and the server serves
// on; a server that picks a version this receiver does not speak, or refuses
// it, fails the receiver cleanly.
func TestVersions(t *testing.T) {
	noLeaks(t)
	p := newProbe(t)
	addr := sockPath(t)
	var lb logBuf
	srv := &Server{Handler: fdHandler(p.w, Meta{"k": "v"}), ErrorLog: log.New(&lb, "", 0)}
	serve(t, srv, addr)

	// helloFor is the hello of a library that speaks lo to hi.
	helloFor := func(lo, hi byte) []byte {
		b := hello()
		b[4], b[5] = lo, hi
		return b
	}
	talk := func(t *testing.T, hello []byte) (*net.UnixConn, []byte) {
		t.Helper()
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: addr, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		ans := make([]byte, ackLen)
		if _, err := io.ReadFull(c, ans); err != nil {
			t.Fatal(err)
		}
		return c, ans
	}

	t.Run("newer receiver", func(t *testing.T) {
		c, ans := talk(t, helloFor(1, 7))
		if ans[0] != 1 || ans[1] != statusOK {
			t.Fatalf("answer % x, want version 1 accepted", ans)
		}
		// The rest is version 1: take the frame as a version 1 receiver.
		var got closer
		r, err := defaultClient.newReceiver(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		defer r.close()
		r.ver = ans[0]
		flags, bodyLen, err := r.readFrame()
		if err != nil || flags != flagEnd || len(r.fds) != 1 {
			t.Fatalf("frame: flags %d, %d descriptors, %v", flags, len(r.fds), err)
		}
		if err := r.deliver(got.cb, bodyLen); err != nil {
			t.Fatal(err)
		}
		if err := r.reply(statusOK, ""); err != nil {
			t.Fatal(err)
		}
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("after the transfer: %d bytes, %v; want the end", n, err)
		}
	})
	t.Run("later versions only", func(t *testing.T) {
		c, ans := talk(t, helloFor(2, 9))
		if ans[0] != 0 || ans[1] != statusRefused {
			t.Fatalf("answer % x, want a refusal", ans)
		}
		msg, err := io.ReadAll(c)
		if err != nil || len(msg) != int(ans[2])<<8|int(ans[3]) || !strings.Contains(string(msg), "versions 2 to 9") {
			t.Fatalf("refusal %q, %v", msg, err)
		}
	})
	t.Run("not a hello", func(t *testing.T) {
		c, err := net.Dial("unix", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(helloFor(0, 0))
		// No answer, no transfer: the connection ends.
		if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
			t.Fatalf("read % x, %v; want the end", b, err)
		}
	})
	// The server still serves a receiver of this version.
	var got closer
	if err := Receive(addr, got.cb); err != nil || got.count() != 1 {
		t.Fatalf("after the strangers: %d descriptors, %v", got.count(), err)
	}
	if !strings.Contains(lb.String(), "no protocol version in common") {
		t.Errorf("the server's log does not say why it refused:\n%s", lb.String())
	}

	// A newer server: it picks version 2, which this receiver does not
	// speak, or refuses this receiver's versions.
	for _, tc := range []struct {
		name   string
		answer []byte
		want   error
	}{
		{"picks a later version", func() []byte { b := answer(); b[0] = 2; return b }(), ErrProtocol},
		{"refuses", append(func() []byte { b := make([]byte, ackLen); putAck(b, 0, statusRefused, 3); return b }(), "old"...), errNoVersion},
	} {
		t.Run("server "+tc.name, func(t *testing.T) {
			addr := sockPath(t)
			ln, err := net.Listen("unix", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				io.ReadFull(c, make([]byte, helloLen))
				c.Write(tc.answer)
				io.Copy(io.Discard, c)
			}()
			if err := Receive(addr, (&closer{}).cb); !errors.Is(err, tc.want) || !errors.Is(err, ErrProtocol) {
				t.Fatalf("Receive: %v, want %v", err, tc.want)
			}
		})
	}
	p.checkClosed(t)
}

// waitTracked waits until srv serves n connections.
func waitTracked(t *testing.T, srv *Server, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		srv.mu.Lock()
		got := len(srv.conns)
		srv.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server serves %d connections, want %d", got, n)
		}
	}
}
