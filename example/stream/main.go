// Command stream is a line server whose live connections survive restarts.
//
// For each line a client sends it answers "pid=<pid> n=<k> <the line>",
// where k counts the lines the connection has had answered, from 1, and
// goes on counting across restarts: at a restart the old instance stops
// each connection, hands it to its successor with its state (k, the bytes
// it read and did not process, the answers it did not write), and the
// successor goes on where it stopped. Clients see nothing but a slower
// answer. SIGHUP starts a successor, a second instance started with the
// same flags takes over, SIGTERM or SIGINT ends. See README.md in the
// parent directory.
package main

import (
	"cmp"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/graceful-go/graceful"
)

type config struct {
	listen, socket, pidFile string
	handoverTimeout         time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.listen, "listen", "127.0.0.1:8081", "TCP address of the first instance (later ones take over its socket)")
	flag.StringVar(&cfg.socket, "socket", defaultSocket(), "Unix socket on which an instance hands its listener and connections to the next")
	flag.StringVar(&cfg.pidFile, "pid-file", "", "file to hold the pid of the instance that serves (none if empty)")
	flag.DurationVar(&cfg.handoverTimeout, "handover-timeout", graceful.DefaultTimeout, "how long each step of a hand-over may wait for the other instance")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "stream: unexpected arguments %q\n", flag.Args())
		flag.Usage()
		os.Exit(2)
	}
	logger := log.New(os.Stderr, fmt.Sprintf("stream[%d] ", os.Getpid()), log.Ltime|log.Lmicroseconds|log.Lmsgprefix)
	if err := run(cfg, logger); err != nil {
		logger.Printf("exited: %v", err)
		os.Exit(1)
	}
	logger.Print("exited")
}

// defaultSocket is in the user's runtime directory, else in a directory of
// this user's in the temp directory, which Start makes (0700) and checks.
func defaultSocket() string {
	dir := cmp.Or(os.Getenv("XDG_RUNTIME_DIR"), filepath.Join(os.TempDir(), "graceful-stream-"+strconv.Itoa(os.Getuid())))
	return filepath.Join(dir, "graceful-stream.sock")
}

// run is one instance: it takes over from the instance serving at the
// socket, if any, serves until a successor is ready, hands it every
// connection, and returns once what it could not hand over has closed; or
// it ends at SIGTERM.
func run(cfg config, logger *log.Logger) error {
	// From the start: SIGHUP would kill the process before Notify.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	inst, err := graceful.Start(graceful.Config{
		Socket:   cfg.socket,
		PIDFile:  cfg.pidFile,
		Timeout:  cfg.handoverTimeout,
		ErrorLog: logger,
	})
	if err != nil {
		return err
	}
	ln, err := inst.Listen("tcp", cfg.listen)
	if err != nil {
		inst.Stop()
		return err
	}
	restoreFds := faultBeforeReady(inst, logger)
	// Nothing is accepted before Ready: connections wait in the shared
	// socket's queue meanwhile, so a failed Ready costs none of them.
	if err := inst.Ready(); err != nil {
		ln.Close()
		return fmt.Errorf("not ready (the predecessor serves on): %w", err)
	}
	ready := time.Now()
	if inst.Inherited() {
		logger.Printf("took over %s", ln.Addr())
	} else {
		logger.Printf("listening on %s (first instance)", ln.Addr())
	}
	srv := newServer(logger)
	go srv.accept(ln)
	go srv.receive(inst, ready, restoreFds)

	restarted := make(chan error, 1)
	restarting := false
	for {
		select {
		case sig := <-sigs:
			if sig != syscall.SIGHUP {
				logger.Printf("signal %v: closing every connection", sig)
				inst.Stop()
				ln.Close()
				srv.closeAll()
				return nil
			}
			if restarting {
				logger.Print("SIGHUP ignored: a successor is starting")
				continue
			}
			restarting = true
			logger.Print("SIGHUP: starting a successor")
			go func() { restarted <- inst.Restart() }()
		case err := <-restarted:
			restarting = false
			if err != nil {
				logger.Printf("restart failed, serving on: %v", err)
			}
		case <-inst.Done():
			// Signals wait in sigs meanwhile: SIGTERM is for what could
			// not be handed over.
			ln.Close()
			srv.handOver(inst)
			srv.serveOn(sigs)
			return nil
		}
	}
}
