//go:build linux

package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-go/graceful"
)

// baselineEnv makes the test binary the fork/exec baseline that
// BenchmarkRestartLatency compares the example with: "first" for the first
// instance, "successor" for one it starts.
const baselineEnv = "GRACEFUL_EXAMPLE_BASELINE"

// baselineMain is a web server that restarts the way a fork/exec hand-over
// does (tableflip's mechanism): on SIGHUP it starts this program again with
// its listening socket as descriptor 3 (exec.Cmd.ExtraFiles) and the writing
// end of a pipe as descriptor 4, on which the successor says that it
// accepts; then it drains and exits. It serves and logs like the example,
// with the same handler and drain, so that the tests' cluster runs it.
func baselineMain() int {
	logger := log.New(os.Stderr, fmt.Sprintf("example[%d] ", os.Getpid()), log.Ltime|log.Lmicroseconds|log.Lmsgprefix)
	hup, stop := make(chan os.Signal, 1), make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	signal.Notify(stop, syscall.SIGTERM)
	fs := flag.NewFlagSet("baseline", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "HTTP address of the first instance")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	var ln net.Listener
	var err error
	successor := os.Getenv(baselineEnv) == "successor"
	if successor {
		f := os.NewFile(3, "listener")
		ln, err = net.FileListener(f)
		f.Close()
	} else {
		ln, err = net.Listen("tcp", *listen)
	}
	if err != nil {
		logger.Printf("exited: %v", err)
		return 1
	}
	hs := &http.Server{Handler: http.HandlerFunc(serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	var dr graceful.Drainer
	go dr.Serve(hs, ln)
	if successor {
		ready := os.NewFile(4, "ready")
		ready.Write([]byte{1})
		ready.Close()
		logger.Printf("took over http://%s", ln.Addr())
	} else {
		logger.Printf("listening on http://%s (first instance)", ln.Addr())
	}
	for handedOver := false; !handedOver; {
		select {
		case <-hup:
			logger.Print("SIGHUP: restarting")
			pid, err := forkExec(ln)
			if err != nil {
				logger.Printf("successor failed: %v", err)
				continue
			}
			logger.Printf("handed over to pid %d; draining", pid)
			handedOver = true
		case sig := <-stop:
			logger.Printf("signal %v: draining", sig)
			handedOver = true
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dr.Drain(ctx); err != nil {
		logger.Printf("exited: draining: %v", err)
		return 1
	}
	logger.Print("exited")
	return 0
}

// forkExec starts the successor with the listener and waits until it
// accepts.
func forkExec(ln net.Listener) (int, error) {
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		return 0, err
	}
	defer lf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), baselineEnv+"=successor")
	cmd.ExtraFiles = []*os.File{lf, w}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Start()
	w.Close()
	if err != nil {
		return 0, err
	}
	// EOF: the successor exited before it accepted.
	if n, _ := r.Read(make([]byte, 1)); n != 1 {
		return 0, fmt.Errorf("successor pid %d: %v", cmd.Process.Pid, cmd.Wait())
	}
	return cmd.Process.Pid, nil
}

// latencyLoad is the load of BenchmarkRestartLatency: 16 clients, half of
// them on keep-alive connections.
var latencyLoad = slices.Repeat([]string{"new-conn GET", "keep-alive GET"}, 8)

// BenchmarkRestartLatency measures the time from SIGHUP to the first answer
// by the new pid, under a load of 16 clients, for the example and for a
// fork/exec baseline (baselineMain) side by side: both run at once, and each
// of the b.N rounds restarts each once, in turn (in alternating order), with
// the load on it alone, so that both see the same machine. It reports the
// medians and extremes in milliseconds, and the ratio of the medians. The
// README's figures come from -benchtime 20x, without -race.
func BenchmarkRestartLatency(b *testing.B) {
	servers := []*latencyServer{{name: "example"}, {name: "forkexec"}}
	for _, s := range servers {
		s.c = newCluster(b)
		// Neither writes a pid file: what is compared is the hand-over.
		s.c.Args = []string{"-listen", "127.0.0.1:0", "-socket", s.c.Sock}
		if s.name == "forkexec" {
			s.c.Bin, s.c.Args = os.Args[0], []string{"-listen", "127.0.0.1:0"}
			s.c.Env = []string{baselineEnv + "=first"}
		}
		s.pid = s.c.StartFirst()
	}
	requests, failed := 0, 0
	for i := 0; i < b.N; i++ {
		for j := range servers {
			s := servers[(i+j)%2]
			l := startLoad(b, s.c.Addr, latencyLoad)
			l.waitPid(b, s.pid, answersPerInstance)
			sent := time.Now()
			if err := syscall.Kill(s.pid, syscall.SIGHUP); err != nil {
				b.Fatal(err)
			}
			next, first := l.newPid(b, sent)
			s.lat = append(s.lat, first.Sub(sent))
			// The old instance is gone before the next restart.
			s.c.WaitContains(0, s.pid, "exited")
			l.waitPid(b, next, answersPerInstance)
			s.pid = next
			l.finish()
			for _, n := range l.ok {
				requests += n
			}
			failed += l.failures()
			for _, e := range l.errs {
				b.Errorf("%s: %s", s.name, e)
			}
		}
	}
	b.StopTimer()
	b.Logf("%d requests, %d failed", requests+failed, failed)
	if failed > 0 {
		b.Errorf("%d requests failed", failed)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, s := range servers {
		s.c.Stop(s.pid)
		slices.Sort(s.lat)
		b.ReportMetric(ms(s.lat[len(s.lat)/2]), s.name+"-median-ms")
		b.ReportMetric(ms(s.lat[0]), s.name+"-min-ms")
		b.ReportMetric(ms(s.lat[len(s.lat)-1]), s.name+"-max-ms")
		b.Logf("%s: %v", s.name, s.lat)
	}
	b.ReportMetric(float64(servers[0].lat[b.N/2])/float64(servers[1].lat[b.N/2]), "median-ratio")
}

// A latencyServer is a server that BenchmarkRestartLatency restarts.
type latencyServer struct {
	name string
	c    *cluster
	pid  int             // serving
	lat  []time.Duration // from SIGHUP to its successor's first answer
}

// newPid waits for the first answer by a pid that had not answered before
// since, and returns that pid and when its first answer arrived.
func (l *load) newPid(t testing.TB, since time.Time) (int, time.Time) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		l.mu.Lock()
		for pid, first := range l.first {
			if first.After(since) {
				l.mu.Unlock()
				return pid, first
			}
		}
		news := l.news
		l.mu.Unlock()
		select {
		case <-news:
		case <-timeout:
			t.Fatal("no new pid answered")
		}
	}
}
