package graceful

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
)

// TestNilArguments gives the entry points nil where an argument is needed: each
// must fail with an error, not panic.
func TestNilArguments(t *testing.T) {
	var noCtx context.Context // nil, as a caller's bug would pass it
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	cb := func(int, io.Reader) error { return nil }
	for _, call := range []struct {
		name string
		f    func() error
	}{
		{"Client.Receive with a nil ctx", func() error { return (&Client{}).Receive(noCtx, "@x", cb) }},
		{"Client.ReceiveFrom with a nil ctx", func() error { return (&Client{}).ReceiveFrom(noCtx, a, cb) }},
		{"ReceiveFrom of a nil conn", func() error { return ReceiveFrom(nil, cb) }},
		{"SendTo on a nil conn", func() error { return SendTo(nil, 0, nil) }},
		{"SendListenerTo of a nil listener", func() error { return SendListenerTo(a, nil, nil) }},
		{"SendFileTo of a nil file", func() error { return SendFileTo(a, nil, nil) }},
		{"Server.Serve of a nil listener", func() error { return (&Server{Handler: SequenceHandler()}).Serve(nil) }},
		{"Server.ServeConn of a nil conn", func() error { return (&Server{Handler: SequenceHandler()}).ServeConn(nil) }},
		{"Drainer.Drain with a nil ctx", func() error { return new(Drainer).Drain(noCtx) }},
		{"Drainer.Serve of nil", func() error { return new(Drainer).Serve(nil, nil) }},
		{"Meta.ReadFrom into nil", func() error { _, err := (*Meta)(nil).ReadFrom(bytes.NewReader(nil)); return err }},
		{"a nil Handler in a sequence", func() error { return SequenceHandler(nil)(a, nil) }},
		{"CallbackHandler of nil", func() error { return CallbackHandler(nil)(a, nil) }},
		{"ObjectHandler of nil", func() error { return ObjectHandler(nil, nil)(a, nil) }},
		{"Write on a nil ResponseWriter", func() error { return (*ResponseWriter)(nil).Write(0, nil) }},
		{"Write on a zero ResponseWriter", func() error { return new(ResponseWriter).Write(0, nil) }},
		{"FdConn of -1", func() error { _, err := FdConn(-1); return err }},
	} {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("%s panicked: %v", call.name, p)
				}
			}()
			if err := call.f(); err == nil {
				t.Errorf("%s succeeded", call.name)
			}
		}()
	}
}
