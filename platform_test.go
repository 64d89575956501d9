package graceful

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestEntryPointsUnsupported calls every entry point of the hand-over with
// arguments that make it fail at once. Where descriptors cannot be handed
// over (Windows, for one), each must fail with errors.ErrUnsupported, so
// that an application decides at run time; where they can, each fails for
// a reason of its own, which must not pass for errors.ErrUnsupported.
func TestEntryPointsUnsupported(t *testing.T) {
	unsupported := supported() != nil
	// A socket in a directory that does not exist: nothing is created.
	addr := filepath.Join(t.TempDir(), "missing", "s")
	// Connections without a descriptor, which no transfer can use.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no TCP here: %v", err)
	}
	// Closed, so that a Server that serves fails at its first Accept.
	ln.Close()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cb := func(fd int, _ io.Reader) error {
		closeFd(fd)
		return nil
	}
	h := SequenceHandler()
	c := &Client{}
	ctx := context.Background()
	for _, call := range []struct {
		name string
		f    func() error
	}{
		{"Start", func() error { _, err := Start(Config{Socket: filepath.Join(os.DevNull, "s")}); return err }},
		{"Receive", func() error { return Receive(addr, cb) }},
		{"ReceiveFrom", func() error { return ReceiveFrom(a, cb) }},
		{"Client.Receive", func() error { return c.Receive(ctx, addr, cb) }},
		{"Client.ReceiveFrom", func() error { return c.ReceiveFrom(ctx, a, cb) }},
		{"SendTo", func() error { return SendTo(a, int(f.Fd()), nil) }},
		{"SendListenerTo", func() error { return SendListenerTo(a, ln, nil) }},
		{"SendFileTo", func() error { return SendFileTo(a, f, nil) }},
		{"Server.Serve", func() error { return (&Server{Handler: h}).Serve(ln) }},
		{"Server.ServeConn", func() error { return (&Server{Handler: ObjectHandler(f, nil)}).ServeConn(a) }},
		{"Server.ListenAndServe", func() error { return (&Server{Handler: h}).ListenAndServe(addr) }},
		{"ListenAndServe", func() error { return ListenAndServe(addr, h) }},
		{"FdListener", func() error { _, err := FdListener(-1); return err }},
		{"FdConn", func() error { _, err := FdConn(-1); return err }},
		{"FdPacketConn", func() error { _, err := FdPacketConn(-1); return err }},
	} {
		err := call.f()
		switch {
		case err == nil:
			t.Errorf("%s succeeded", call.name)
		case unsupported && !errors.Is(err, errors.ErrUnsupported):
			t.Errorf("%s on %s: %v, want errors.ErrUnsupported", call.name, runtime.GOOS, err)
		case !unsupported && errors.Is(err, errors.ErrUnsupported):
			t.Errorf("%s on %s: %v, which passes for errors.ErrUnsupported", call.name, runtime.GOOS, err)
		}
	}
}

// TestAbstractNames checks that an abstract socket name (@name) reaches the
// abstract namespace on Linux, where nobody serves at a fresh name, and is
// refused elsewhere rather than taken for a file in the working directory.
func TestAbstractNames(t *testing.T) {
	addr := fmt.Sprintf("@graceful-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	err := Receive(addr, nil)
	if runtime.GOOS == "linux" || runtime.GOOS == "android" {
		if !errors.Is(err, ErrNoServer) {
			t.Fatalf("Receive(%q): %v, want ErrNoServer", addr, err)
		}
		return
	}
	if !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Receive(%q): %v, want errors.ErrUnsupported", addr, err)
	}
	if err := ListenAndServe(addr, SequenceHandler()); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("ListenAndServe(%q): %v, want errors.ErrUnsupported", addr, err)
	}
	if _, err := Start(Config{Socket: addr}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Start with Socket %q: %v, want errors.ErrUnsupported", addr, err)
	}
}
