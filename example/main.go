// Command example is a web server that restarts without failing a request.
//
// Every instance serves HTTP and, on a Unix socket, hands its listening
// socket to the next instance. An instance takes over from the running one
// when it starts, if there is one; it starts its own successor on SIGHUP;
// it drains and exits on SIGTERM or SIGINT. See README.md in this directory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/graceful-go/graceful"
)

// faultEnv makes an instance fail while it takes over, for the tests only:
// once the listener arrives, "crash" exits, "hang" sleeps three hand-over
// timeouts and "refuse" refuses it.
const faultEnv = "GRACEFUL_EXAMPLE_FAULT"

// drainEnv set to "shutdown" drains with http.Server.Shutdown right after the
// hand-over, the common pattern that fails requests, for the benchmark that
// compares it with graceful.Drainer.
const drainEnv = "GRACEFUL_EXAMPLE_DRAIN"

type config struct {
	listen, socket, pidFile string
	drainTimeout            time.Duration
	handoverTimeout         time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.listen, "listen", "127.0.0.1:8080", "HTTP address of the first instance (later ones take over its socket)")
	flag.StringVar(&cfg.socket, "socket", defaultSocket(), "Unix socket on which an instance hands its listener to the next")
	flag.StringVar(&cfg.pidFile, "pid-file", "", "file to hold the pid of the instance that serves (none if empty)")
	flag.DurationVar(&cfg.drainTimeout, "drain-timeout", 30*time.Second, "how long an old instance may take to finish its requests")
	flag.DurationVar(&cfg.handoverTimeout, "handover-timeout", graceful.DefaultTimeout, "how long each step of a hand-over may wait for the other instance")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "example: unexpected arguments %q\n", flag.Args())
		flag.Usage()
		os.Exit(2)
	}
	logger := log.New(os.Stderr, fmt.Sprintf("example[%d] ", os.Getpid()), log.Ltime|log.Lmicroseconds|log.Lmsgprefix)
	if err := run(cfg, logger); err != nil {
		logger.Printf("exited: %v", err)
		os.Exit(1)
	}
	logger.Print("exited")
}

// defaultSocket is in the user's runtime directory, else the temp directory.
func defaultSocket() string {
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "graceful-example.sock")
}

func run(cfg config, logger *log.Logger) error {
	// From the start: SIGHUP would kill the process before Notify.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	ln, tookOver, err := takeOver(cfg)
	if err != nil {
		return err
	}
	if tookOver {
		logger.Printf("took over http://%s", ln.Addr())
	} else {
		logger.Printf("listening on http://%s (first instance)", ln.Addr())
	}

	// Serve HTTP.
	hs := &http.Server{Handler: http.HandlerFunc(serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	dr := &graceful.Drainer{IdleGrace: min(graceful.DefaultIdleGrace, cfg.drainTimeout/2)}
	httpDone := make(chan error, 1)
	naive := os.Getenv(drainEnv) == "shutdown"
	go func() {
		if naive {
			httpDone <- hs.Serve(ln)
			return
		}
		httpDone <- dr.Serve(hs, ln)
	}()

	// Hand the listener to the next instance that connects, once, and
	// learn its pid once it holds the listener.
	handedOver := make(chan int, 1)
	hand := &graceful.Server{
		Once:     true,
		Timeout:  cfg.handoverTimeout,
		ErrorLog: log.New(logger.Writer(), logger.Prefix()+"hand-over failed: ", logger.Flags()),
		Handler: graceful.HandlerFunc(func(conn net.Conn, w graceful.ResponseWriter) error {
			return graceful.SequenceHandler(
				graceful.ListenerHandler(ln, nil),
				graceful.CallbackHandler(func() {
					select {
					case handedOver <- peerPID(conn):
					default: // draining already
					}
				}),
			).Handle(conn, w)
		}),
	}
	handDone := make(chan error, 1)
	go func() { handDone <- hand.ListenAndServe(cfg.socket) }()
	if err := waitSocket(cfg.socket, handDone); err != nil {
		// Serving on without a way to restart beats an outage.
		logger.Printf("cannot restart: %v", err)
	} else if cfg.pidFile != "" {
		if err := writePidFile(cfg.pidFile); err != nil {
			logger.Printf("pid file: %v", err)
		}
	}

	var successor *exec.Cmd
	successorExited := make(chan error, 1)
	stopped := false // by a signal, rather than handed over
loop:
	for {
		select {
		case pid := <-handedOver:
			logger.Printf("handed over to pid %d; draining", pid)
			break loop
		case sig := <-sigs:
			if sig != syscall.SIGHUP {
				logger.Printf("signal %v: draining", sig)
				stopped = true
				break loop
			}
			if successor != nil {
				logger.Printf("SIGHUP ignored: successor pid %d is still starting", successor.Process.Pid)
				continue
			}
			cmd, err := startSuccessor()
			if err != nil {
				logger.Printf("SIGHUP: cannot start a successor: %v", err)
				continue
			}
			successor = cmd
			logger.Printf("SIGHUP: started successor pid %d", cmd.Process.Pid)
			go func() { successorExited <- cmd.Wait() }()
		case err := <-successorExited:
			logger.Printf("successor pid %d exited before taking over (%v); serving on", successor.Process.Pid, err)
			successor = nil
		case err := <-handDone:
			logger.Printf("cannot restart: %v", err)
			handDone = nil
		case err := <-httpDone:
			hand.Close()
			return fmt.Errorf("serving http: %w", err)
		}
	}
	signal.Stop(sigs)

	// A hand-over in progress when a signal came may still complete; then
	// the successor serves and this instance drains all the same.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.handoverTimeout)
	hand.Shutdown(ctx)
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), cfg.drainTimeout)
	defer cancel()
	if naive {
		err = hs.Shutdown(ctx)
	} else {
		err = dr.Drain(ctx)
	}
	<-httpDone
	if cfg.pidFile != "" {
		if stopped {
			removePidFile(cfg.pidFile)
		} else if !waitPidFile(cfg.pidFile, cfg.handoverTimeout) {
			logger.Printf("the pid file still names this process")
		}
	}
	if err != nil {
		return fmt.Errorf("draining: %w", err)
	}
	return nil
}

// takeOver receives the listener of the running instance, or listens on
// cfg.listen when there is none.
func takeOver(cfg config) (ln net.Listener, tookOver bool, err error) {
	fault := os.Getenv(faultEnv)
	client := &graceful.Client{Timeout: cfg.handoverTimeout}
	deadline := time.Now().Add(cfg.handoverTimeout)
	for {
		ln = nil
		err = client.Receive(cfg.socket, func(fd int, _ io.Reader) error {
			switch fault {
			case "crash":
				os.Exit(3)
			case "hang":
				time.Sleep(3 * cfg.handoverTimeout)
			case "refuse":
				os.NewFile(uintptr(fd), "").Close()
				return errors.New("refused for the test")
			}
			if ln != nil {
				os.NewFile(uintptr(fd), "").Close()
				return errors.New("more than one descriptor")
			}
			var err error
			ln, err = graceful.FdListener(fd)
			return err
		})
		if err == nil && ln == nil {
			err = errors.New("no listener in the hand-over")
		}
		if err == nil {
			return ln, true, nil
		}
		if ln != nil {
			ln.Close()
		}
		if !errors.Is(err, graceful.ErrNoServer) {
			return nil, false, fmt.Errorf("taking over: %w", err)
		}
		ln, err = net.Listen("tcp", cfg.listen)
		if err == nil {
			return ln, false, nil
		}
		// The address is taken but nobody serves the hand-over socket: an
		// instance is likely between handing over and serving the socket
		// in turn. Ask again for a while.
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, false, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serveHTTP answers with this instance's pid, the method and the size of the
// body; ?delay=100ms makes it a slow request.
func serveHTTP(w http.ResponseWriter, r *http.Request) {
	n, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	if d, err := time.ParseDuration(r.URL.Query().Get("delay")); err == nil {
		select {
		case <-time.After(min(d, 10*time.Second)):
		case <-r.Context().Done():
			return
		}
	}
	fmt.Fprintf(w, "pid=%d method=%s body=%d\n", os.Getpid(), r.Method, n)
}

// startSuccessor runs this program again with the same arguments and
// environment, its output going where this one's goes.
func startSuccessor() (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// waitSocket waits until the hand-over socket file exists, so that the pid
// file names an instance that can be restarted.
func waitSocket(path string, done <-chan error) error {
	for {
		if _, err := os.Lstat(path); err == nil {
			return nil
		}
		select {
		case err := <-done:
			return err
		case <-time.After(time.Millisecond):
		}
	}
}

// writePidFile replaces the pid file atomically, so a reader never sees it
// empty or half written.
func writePidFile(path string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%d\n", os.Getpid())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// namesMe reports whether the pid file names this process.
func namesMe(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && string(b) == strconv.Itoa(os.Getpid())+"\n"
}

// removePidFile removes the pid file if it still names this process.
func removePidFile(path string) {
	if namesMe(path) {
		os.Remove(path)
	}
}

// waitPidFile waits until the successor has written its pid, for at most
// timeout. A supervisor that reads the pid file when its main process exits
// (systemd with PIDFile=) then finds the successor there.
func waitPidFile(path string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for namesMe(path) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
