//go:build linux

package graceful_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/graceful-go/graceful"
)

// serve serves h at addr until a successor takes over or SIGTERM (or
// SIGINT) comes, and restarts on SIGHUP. dir holds the hand-over socket and
// the pid file; Start makes it if need be.
func serve(dir, addr string, h http.Handler, sigs <-chan os.Signal) error {
	inst, err := graceful.Start(graceful.Config{
		Socket:   filepath.Join(dir, "app.sock"),
		PIDFile:  filepath.Join(dir, "app.pid"),
		ErrorLog: log.Default(), // why a hand-over failed
	})
	if err != nil {
		return err
	}
	// The predecessor's listener for addr, or a new one.
	ln, err := inst.Listen("tcp", addr)
	if err != nil {
		inst.Stop()
		return err
	}
	var d graceful.Drainer
	go d.Serve(&http.Server{Handler: h}, ln)
	if err := inst.Ready(); err != nil {
		d.Drain(context.Background())
		return err // the predecessor serves on
	}
	for {
		select {
		case sig := <-sigs:
			if sig != syscall.SIGHUP {
				inst.Stop() // and a Restart under way
				continue
			}
			go func() {
				if err := inst.Restart(); err != nil {
					log.Print(err) // this instance serves on
				}
			}()
		case <-inst.Done():
			// Requests in flight finish, a minute at most.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			return d.Drain(ctx)
		}
	}
}

// Two instances of an application live in one process here: the second
// takes over from the first, as a new version does when a deploy script
// starts it beside the old one. In a real program, main calls serve once
// with the process's signals:
//
//	handler := http.NewServeMux() // with the application's routes
//	sigs := make(chan os.Signal, 1)
//	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
//	if err := serve("/run/app", ":8080", handler, sigs); err != nil {
//		log.Fatal(err)
//	}
func ExampleStart() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	})

	first := make(chan error, 1)
	go func() { first <- serve(dir, "127.0.0.1:0", h, nil) }()
	waitFile(filepath.Join(dir, "app.pid"))
	fmt.Println("first instance serving")

	sigs := make(chan os.Signal, 1)
	second := make(chan error, 1)
	go func() { second <- serve(dir, "127.0.0.1:0", h, sigs) }()
	fmt.Println("first instance drained:", <-first)

	sigs <- syscall.SIGTERM
	fmt.Println("second instance stopped:", <-second)
	_, err := os.Stat(filepath.Join(dir, "app.pid"))
	fmt.Println("pid file removed:", os.IsNotExist(err))
	// Output:
	// first instance serving
	// first instance drained: <nil>
	// second instance stopped: <nil>
	// pid file removed: true
}

// waitFile waits until path exists.
func waitFile(path string) {
	for i := 0; i < 1000; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(time.Millisecond)
	}
	log.Fatalf("no %s", path)
}

// An instance passes its live connections to its successor once the
// successor is ready; each goes with the state the successor needs to go
// on, here a count of lines. The application stops using each connection
// first (its reads are interrupted), and PassConns closes only this
// instance's descriptors: the clients see nothing.
func ExampleInstance_PassConns() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "app.sock")

	old, _ := graceful.Start(graceful.Config{Socket: sock})
	defer old.Stop()
	ln, _ := old.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	old.Ready()
	client, _ := net.Dial("tcp", ln.Addr().String())
	defer client.Close()
	conn, _ := ln.Accept()

	// A successor starts and gets ready: its AcceptConn returns what the
	// old instance passes.
	go func() {
		inst, _ := graceful.Start(graceful.Config{Socket: sock})
		defer inst.Stop()
		inst.Ready()
		for {
			c, meta, err := inst.AcceptConn()
			if err != nil {
				return // io.EOF: the old instance passes no more
			}
			fmt.Fprintf(c, "successor: lines=%s\n", meta["lines"])
			c.Close()
		}
	}()

	<-old.Done()
	err := old.PassConns([]graceful.PassedConn{
		{Conn: conn, Meta: graceful.Meta{"lines": "41"}},
	})
	if err != nil {
		log.Fatal(err) // the connections are still ours
	}
	old.Stop() // no more connections come
	b, _ := io.ReadAll(client)
	fmt.Print(string(b))
	// Output:
	// successor: lines=41
}
