//go:build linux

package graceful

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkDrainer measures what serving through a Drainer costs per request
// against a plain http.Server on the same trivial handler, over loopback TCP.
// The machine is shared and noisy, so one benchmark serves both: in each
// round it sends a block of requests to one server and then one to the
// other, alternating which goes first, and times each block, so that drift
// and other load hit both. benchClients*GOMAXPROCS clients send each block
// concurrently.
//
//	conn=keepalive      each client on one keep-alive connection to each
//	                    server, dialled before the timer starts: steady
//	                    throughput
//	conn=new            each client dials a connection per request and resets
//	                    it once it has the answer (SO_LINGER 0, so no
//	                    TIME_WAIT piles up over a run)
//
// An op is one request to each server. Reported:
//
//	plain-ns/req        wall time per request of the plain server's blocks,
//	                    their median
//	drainer-ns/req      the same for Drainer.Serve
//	x-plain             the median over rounds of drainer's time / plain's
//	*-cpu-ns/req        the same for the process's CPU time, user and
//	x-plain-cpu         system: less sensitive to other load on the machine
//	*-allocs/req        allocations in the blocks per request; the clients
//	*-B/req             parse answers without allocating, so they are the
//	                    server's (and, for conn=new, the dial's)
//
// Compare runs of one binary, or of two binaries interleaved, for example
//
//	go test -c -o drain.test
//	for i in $(seq 10); do ./drain.test -test.run '^$' -test.bench Drainer; done | tee drain.txt
//	benchstat drain.txt
//
// On our shared 2-core machines, with both servers plain, x-plain and
// x-plain-cpu came out at 1.00 ± 2-3% over 12 runs for conn=keepalive and
// within ± 5% for conn=new: smaller differences are not measurable there.
func BenchmarkDrainer(b *testing.B) {
	for _, conn := range []string{"keepalive", "new"} {
		b.Run("conn="+conn, func(b *testing.B) {
			benchDrainer(b, conn == "keepalive")
		})
	}
}

// benchServer is one of the two servers and what its blocks used.
type benchServer struct {
	name      string
	addr      string
	wall, cpu []float64 // per request, a sample per block
	allocs    uint64
	bytes     uint64
}

func benchDrainer(b *testing.B, keepAlive bool) {
	servers := [2]*benchServer{
		{name: "plain", addr: benchServe(b, false)},
		{name: "drainer", addr: benchServe(b, true)},
	}
	n := benchClients * runtime.GOMAXPROCS(0)
	// clients[i][j] is client i's connection to servers[j], with keepAlive.
	clients := make([][2]*benchClient, n)
	if keepAlive {
		for i := range clients {
			for j, s := range servers {
				c, err := dialBench(s.addr)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { c.conn.Close() })
				// The server's goroutine for the connection is up.
				if err := c.roundTrip(); err != nil {
					b.Fatal(err)
				}
				clients[i][j] = c
			}
		}
	}

	// block sends m requests to servers[j] and records what they used.
	block := func(j, m int) {
		var left atomic.Int64
		left.Store(int64(m))
		var wg sync.WaitGroup
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		allocs, bytes := ms.Mallocs, ms.TotalAlloc
		cpu, t0 := processCPU(), time.Now()
		for i := range clients {
			wg.Go(func() {
				for left.Add(-1) >= 0 {
					var err error
					if keepAlive {
						err = clients[i][j].roundTrip()
					} else {
						err = newConnRoundTrip(servers[j].addr)
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		s := servers[j]
		s.wall = append(s.wall, float64(time.Since(t0).Nanoseconds())/float64(m))
		s.cpu = append(s.cpu, float64((processCPU()-cpu).Nanoseconds())/float64(m))
		runtime.ReadMemStats(&ms)
		s.allocs += ms.Mallocs - allocs
		s.bytes += ms.TotalAlloc - bytes
	}

	// Small blocks: a hiccup of the machine spoils few, and the medians
	// ignore them.
	const perBlock = 16 // requests per client
	var xWall, xCPU []float64
	b.ResetTimer()
	for done, round := 0, 0; done < b.N && !b.Failed(); round++ {
		m := min(b.N-done, perBlock*n)
		block(round%2, m)
		block(1-round%2, m)
		done += m
		p, d := servers[0], servers[1]
		xWall = append(xWall, d.wall[round]/p.wall[round])
		xCPU = append(xCPU, d.cpu[round]/p.cpu[round])
	}
	b.StopTimer()

	for _, s := range servers {
		b.ReportMetric(median(s.wall), s.name+"-ns/req")
		b.ReportMetric(median(s.cpu), s.name+"-cpu-ns/req")
		b.ReportMetric(float64(s.allocs)/float64(b.N), s.name+"-allocs/req")
		b.ReportMetric(float64(s.bytes)/float64(b.N), s.name+"-B/req")
	}
	b.ReportMetric(median(xWall), "x-plain")
	b.ReportMetric(median(xCPU), "x-plain-cpu")
}

// benchClients is the number of clients per GOMAXPROCS: enough to keep both
// cores busy while some clients wait for their answers.
const benchClients = 4

var benchRequest = []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")

// benchServe serves the trivial handler on a fresh port of 127.0.0.1, through
// a Drainer or not, until b ends, and returns the address.
func benchServe(b *testing.B, drainer bool) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	})}
	served := make(chan error, 1)
	stop := func() error { return srv.Close() }
	if drainer {
		d := &Drainer{}
		go func() { served <- d.Serve(srv, ln) }()
		stop = func() error {
			// A grace of 1 s for the clients left idle.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return d.Drain(ctx)
		}
	} else {
		go func() { served <- srv.Serve(ln) }()
	}
	b.Cleanup(func() {
		if err := stop(); err != nil {
			b.Errorf("stopping the server: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			b.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// benchClient is a client's connection and its reader.
type benchClient struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialBench(addr string) (*benchClient, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &benchClient{conn, bufio.NewReader(conn)}, nil
}

// roundTrip sends benchRequest and reads the answer, which must be a 200
// with body "ok", without allocating.
func (c *benchClient) roundTrip() error {
	if _, err := c.conn.Write(benchRequest); err != nil {
		return err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("answer %q", line)
	}
	n := -1
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 { // the empty line ending the header
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			n = 0
			for _, ch := range bytes.TrimSpace(v) {
				n = n*10 + int(ch-'0')
			}
		}
	}
	body, err := c.br.Peek(max(n, 0))
	if err != nil {
		return err
	}
	if string(body) != "ok" {
		return fmt.Errorf("body %q, Content-Length %d", body, n)
	}
	_, err = c.br.Discard(n)
	return err
}

// newConnRoundTrip dials addr, sends one request and resets the connection.
func newConnRoundTrip(addr string) error {
	c, err := dialBench(addr)
	if err != nil {
		return err
	}
	err = c.roundTrip()
	// A reset, not a FIN: neither end keeps the port in TIME_WAIT.
	c.conn.(*net.TCPConn).SetLinger(0)
	c.conn.Close()
	return err
}

// BenchmarkDrainerHooks measures what a Drainer adds to each request by
// itself, without the network: for server=drainer, its ConnState hook for
// StateActive and StateIdle and its Handler wrapper around a handler that
// does nothing; for server=plain, that handler alone (net/http calls no hook
// when ConnState is nil). GOMAXPROCS goroutines call them at once, as
// net/http does for different connections, so the figures include any
// contention between requests. Besides ns/op, cpu-ns/op is the process's
// CPU time, user and system, per op: less sensitive to other load on the
// machine.
func BenchmarkDrainerHooks(b *testing.B) {
	for _, server := range []string{"plain", "drainer"} {
		b.Run("server="+server, func(b *testing.B) {
			srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
			if server == "drainer" {
				// What Serve installs, without serving.
				d := &Drainer{conns: make(map[net.Conn]struct{})}
				d.install(srv)
			}
			hook, h := srv.ConnState, srv.Handler
			r, err := http.NewRequest("GET", "http://bench/", nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if hook != nil {
						hook(nil, http.StateActive)
					}
					h.ServeHTTP(nil, r)
					if hook != nil {
						hook(nil, http.StateIdle)
					}
				}
			})
			b.ReportMetric(float64((processCPU()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}
