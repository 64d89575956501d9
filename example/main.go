// Command example is a web server that restarts without failing a request:
// an instance takes over the listening socket of the running one when it
// starts (graceful.Start), starts its successor on SIGHUP, and drains and
// exits on SIGTERM or SIGINT. See README.md in this directory.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/graceful-go/graceful"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "HTTP address (an instance given its predecessor's takes over its socket)")
	cfg := graceful.Config{ErrorLog: log.New(os.Stderr, fmt.Sprintf("example[%d] ", os.Getpid()), log.Ltime|log.Lmicroseconds|log.Lmsgprefix)}
	flag.StringVar(&cfg.Socket, "socket", defaultSocket(), "Unix socket on which an instance hands its listener to the next, in a directory only this user can write")
	flag.StringVar(&cfg.PIDFile, "pid-file", "", "file to hold the pid of the instance that serves (none if empty)")
	drainTimeout := flag.Duration("drain-timeout", 30*time.Second, "how long an old instance may take to finish its requests")
	flag.DurationVar(&cfg.Timeout, "handover-timeout", graceful.DefaultTimeout, "how long each step of a hand-over may wait for the other instance")
	flag.DurationVar(&cfg.ReadyTimeout, "ready-timeout", time.Minute, "how long a successor may take to start serving")
	flag.BoolVar(&cfg.KeepPID, "keep-pid", false, "keep the started process, and its pid, for the whole service (on by itself as pid 1, a container's init)")
	flag.Parse()
	if err := run(cfg, *listen, *drainTimeout); err != nil {
		cfg.ErrorLog.Fatalf("exited: %v", err)
	}
	cfg.ErrorLog.Print("exited")
}

func run(cfg graceful.Config, listen string, drainTimeout time.Duration) error {
	logger := cfg.ErrorLog
	// From the start: SIGHUP would kill the process before Notify.
	hup, stop := make(chan os.Signal, 1), make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	inst, err := graceful.Start(cfg)
	if err != nil {
		return err
	}
	defer inst.Stop()
	takingOver(inst, logger)
	ln, err := inst.Listen("tcp", listen)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: http.HandlerFunc(serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	// Drain gives idle connections half of drainTimeout, 5 s at most.
	dr := &graceful.Drainer{}
	go dr.Serve(hs, ln)

	// Ready once serving: the predecessor stops accepting right after.
	if err = inst.Ready(); err != nil {
		err = fmt.Errorf("taking over: %w", err)
	} else if inst.Inherited() {
		logger.Printf("took over http://%s", ln.Addr())
	} else {
		logger.Printf("listening on http://%s (first instance)", ln.Addr())
	}
	var restarts sync.WaitGroup
	restarts.Go(func() {
		for {
			select {
			case <-hup:
			case <-inst.Done():
				return // SIGHUP is ignored from now on
			}
			logger.Print("SIGHUP: restarting")
			// Not inline: another SIGHUP (a fixed binary deployed)
			// supersedes a Restart under way, and SIGTERM calls it off.
			restarts.Go(func() {
				if err := inst.Restart(); err != nil {
					logger.Printf("successor failed: %v", err)
				}
			})
		}
	})
	select {
	case sig := <-stop:
		logger.Printf("signal %v: draining", sig)
	case <-inst.Done(): // a successor is ready, or Ready failed
		if pid := inst.SuccessorPID(); pid != 0 {
			logger.Printf("handed over to pid %d; draining", pid)
		}
	}
	// No successor takes over now (one starting is killed); files go.
	inst.Stop()
	restarts.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if derr := drain(dr, hs, ctx); derr != nil && err == nil {
		err = fmt.Errorf("draining: %w", derr)
	}
	return err
}

// defaultSocket is in $XDG_RUNTIME_DIR, else in a directory of this user's
// in /tmp, which Start makes (0700) and checks: another user must not be
// able to write where the socket is.
func defaultSocket() string {
	dir := cmp.Or(os.Getenv("XDG_RUNTIME_DIR"), filepath.Join(os.TempDir(), "graceful-example-"+strconv.Itoa(os.Getuid())))
	return filepath.Join(dir, "graceful-example.sock")
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
