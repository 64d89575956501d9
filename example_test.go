//go:build linux

package graceful_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/graceful-go/graceful"
)

// The README's examples, runnable: both instances of the application live in
// one process here, and the socket is in a temporary directory.

// oldInstance stands for the running application: a listener, a file, and
// the server that hands them over.
func oldInstance(sock string) (stop func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	file, err := os.CreateTemp("", "app.log")
	if err != nil {
		log.Fatal(err)
	}
	os.Remove(file.Name())
	srv := &graceful.Server{}

	// Somewhere close to the application termination.
	//
	// This code sends ln and file to every process that connects to the
	// Unix socket sock, then runs startDrain once the receiver holds them.
	startDrain := func() { fmt.Println("old instance: draining") }
	srv.Handler = graceful.SequenceHandler(
		graceful.ListenerHandler(ln, nil),
		graceful.FileHandler(file, graceful.Meta{
			"name": "app.log",
		}),
		graceful.CallbackHandler(startDrain),
	)
	go srv.ListenAndServe(sock)

	dial(sock).Close()
	return func() {
		srv.Close()
		ln.Close()
		file.Close()
	}
}

func Example() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "app.sock")
	stop := oldInstance(sock)
	defer stop()

	// Somewhere close to the application initialization.
	var (
		ln   net.Listener
		file *os.File
	)
	err := graceful.Receive(sock, func(fd int, meta io.Reader) error {
		// The callback owns fd, whatever it returns.
		if meta == nil {
			// In our example the listener is sent without meta.
			var err error
			ln, err = graceful.FdListener(fd)
			return err
		}
		// graceful.Meta is a ready-made key-value encoding for meta.
		m, err := graceful.MetaFrom(meta)
		if err != nil {
			return err
		}
		file = os.NewFile(uintptr(fd), m["name"])
		return nil
	})
	if errors.Is(err, graceful.ErrNoServer) {
		// Nobody to take over from: this is the first instance.
		ln, err = net.Listen("tcp", "127.0.0.1:8080")
	}
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	defer file.Close()

	fmt.Printf("new instance: listener %T, file %s\n", ln, file.Name())
	// Output:
	// old instance: draining
	// new instance: listener *net.TCPListener, file app.log
}

func ExampleSendTo() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "app.sock")
	file, _ := os.Open(os.DevNull)
	defer file.Close()
	data := []byte("application state")
	go receiver(sock, len(data))

	// Listen for an upcoming instance at the socket.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	// Accept the connection of another instance of the application.
	conn, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// Send application data first: data too large for meta goes on the
	// connection itself, and the receiver reads it before ReceiveFrom.
	if _, err := conn.Write(data); err != nil {
		log.Fatal(err)
	}

	// Then send descriptors, each in a transfer of its own.
	if err := graceful.SendListenerTo(conn, ln, nil); err != nil {
		log.Fatal(err)
	}
	if err := graceful.SendFileTo(conn, file, graceful.Meta{
		"name": file.Name(),
	}); err != nil {
		log.Fatal(err)
	}

	// Any io.WriterTo is meta: *bytes.Buffer is one. The receiver gets
	// an io.Reader with these bytes.
	buf := new(bytes.Buffer)
	buf.WriteString("Hello, I am meta!")
	if err := graceful.SendTo(conn, int(file.Fd()), buf); err != nil {
		log.Fatal(err)
	}
	// Output:
	// data: application state
	// fd with meta ""
	// fd with meta "\x01\x01\x04name\t/dev/null"
	// fd with meta "Hello, I am meta!"
}

// receiver is the other side of ExampleSendTo.
func receiver(sock string, size int) {
	conn := dial(sock)
	defer conn.Close()
	data := make([]byte, size)
	if _, err := io.ReadFull(conn, data); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("data: %s\n", data)
	for i := 0; i < 3; i++ {
		err := graceful.ReceiveFrom(conn, func(fd int, meta io.Reader) error {
			defer os.NewFile(uintptr(fd), "").Close()
			var b []byte
			if meta != nil {
				b, _ = io.ReadAll(meta)
			}
			fmt.Printf("fd with meta %q\n", b)
			return nil
		})
		if err != nil {
			log.Fatal(err)
		}
	}
}

// dial connects to sock once something listens there.
func dial(sock string) net.Conn {
	for i := 0; i < 1000; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			return c
		}
		time.Sleep(time.Millisecond)
	}
	log.Fatalf("nothing listens at %s", sock)
	return nil
}

func ExampleHandler() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "app.sock")
	conns := map[string]int{}
	for _, id := range []string{"a", "b", "c"} {
		f, _ := os.Open(os.DevNull)
		defer f.Close()
		conns[id] = int(f.Fd())
	}

	h := graceful.Handler(func(_ net.Conn, w *graceful.ResponseWriter) error {
		for id, fd := range conns {
			if err := w.Write(fd, graceful.Meta{"id": id}); err != nil {
				return err
			}
		}
		return nil
	})
	srv := &graceful.Server{Handler: h}
	go srv.ListenAndServe(sock)
	defer srv.Close()
	dial(sock).Close()

	ids := map[string]bool{}
	err := graceful.Receive(sock, func(fd int, meta io.Reader) error {
		defer os.NewFile(uintptr(fd), "").Close()
		m, err := graceful.MetaFrom(meta)
		ids[m["id"]] = true
		return err
	})
	fmt.Println(len(ids), ids["a"] && ids["b"] && ids["c"], err)
	// Output: 3 true <nil>
}

func ExampleServer_ServeConn() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "app.sock")
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		log.Fatal(err)
	}
	defer udp.Close()

	// Serve one receiver only, with a timeout of one's own: accept one
	// connection, serve it, then close the listener before the
	// connection, so that the receiver's Receive returns once the
	// address is free.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	received := make(chan error)
	go func() { received <- receivePacketConn(sock) }()
	conn, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	srv := &graceful.Server{
		Handler: graceful.ObjectHandler(udp, graceful.Meta{"name": "dns"}),
		Timeout: time.Minute,
	}
	err = srv.ServeConn(conn)
	ln.Close()
	conn.Close()
	fmt.Println("served:", err)
	fmt.Println("received:", <-received)
	// Output:
	// served: <nil>
	// received: <nil>
}

// receivePacketConn is the other side of ExampleServer_ServeConn.
func receivePacketConn(sock string) error {
	var pc net.PacketConn
	err := graceful.Receive(sock, func(fd int, meta io.Reader) error {
		var err error
		pc, err = graceful.FdPacketConn(fd)
		return err
	})
	if err != nil {
		return err
	}
	return pc.Close()
}
