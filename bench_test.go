//go:build linux

package graceful

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The hand-over benchmarks measure what a restarting process pays: each
// iteration starts a fresh receiving process (the test binary as a child),
// whose callback closes every descriptor and, with meta, decodes it with
// MetaFrom. Process start-up and the dial are not timed: the window runs
// from the sender's first frame to the receiver's final acknowledgement.
// Every iteration also hands the same descriptors to a fresh process with
// bare sendmsg/recvmsg (batches of 253, no framing): the floor. Reported:
//
//	ns/op, ns/fd     the library's window per hand-over and per descriptor
//	B/op, allocs/op  the sender's allocations in that window
//	floor-ns/fd      the floor's window per descriptor, same iteration
//	x-floor          ns/fd / floor-ns/fd
//	cpu-ns/fd        CPU time, user and system, of both processes over
//	floor-cpu-ns/fd  the window, per descriptor: less sensitive than time
//	x-floor-cpu      to other load on the machine
//	recv-cpu-ns/fd   the receiving process's part of cpu-ns/fd
//	recv-allocs/fd   the receiving process's allocations per descriptor
//	recv-B/fd        (dial, library and callback's MetaFrom included)
//	recv-rss-MB      the receiving process's peak resident memory
//	maps-ns/fd       with meta: building the same maps alone in a fresh
//	                 process: a map each, strings cut from a copy per frame
//	x-floor+maps     ns/fd / (floor-ns/fd + maps-ns/fd)
//
// ns/op is the window, not the wall time of an iteration, which includes
// starting the processes and sets how many iterations run. For more
// descriptors than RLIMIT_NOFILE allows, the same set (at most benchBase
// pipe ends) is sent again: each SCM_RIGHTS entry is a reference of its own,
// and the kernel's work per descriptor is the same.
//
// Reproduce the README's table with
//
//	go test -run '^$' -bench . -count 8 | tee bench.txt
func BenchmarkHandover(b *testing.B) {
	for _, n := range []int{1, 253, 10_000, 100_000} {
		for _, meta := range []string{"nil", "two"} {
			b.Run(fmt.Sprintf("n=%d/meta=%s", n, meta), func(b *testing.B) {
				benchHandover(b, n, meta == "two")
			})
		}
	}
}

// BenchmarkHandoverMeta measures what a hand-over of live connections pays
// for their state: the sender builds each descriptor's two-key Meta inside
// the timed window, in its send loop, as a program builds it from a
// connection's state, and writes it through its ResponseWriter; the fresh
// receiving process decodes each with MetaFrom and closes the descriptor.
// The reference, in the same iteration between fresh processes of the same
// kind, is the floor plus the same maps built on both sides: bare
// sendmsg/recvmsg of 253 descriptors per call, the sender building the same
// Metas in its loop, and the receiver building equal maps from the
// encodings' bytes as the maps-ns/fd of BenchmarkHandover does (a copy of
// each frame's bytes, strings cut from it, a map each), closing each
// descriptor and building its map in turn as the library's callback does.
// Both receivers start with the young heap of a fresh process, whose new
// pages are much of what the maps cost. Reported, beside the sender's
// allocations:
//
//	ns/fd, floor-ns/fd      the library's and the bare floor's windows
//	floor+maps-ns/fd        the reference's window
//	x-floor+maps            ns/fd / floor+maps-ns/fd, the median of the
//	                        ratios within each iteration
//	cpu-ns/fd               CPU time, user and system, of both processes
//	floor+maps-cpu-ns/fd    over the window, per descriptor
//	x-floor+maps-cpu        their ratio, median of the iterations'
//	recv-cpu-ns/fd          the receiving processes' part of cpu-ns/fd
//	floor+maps-recv-cpu-ns/fd  and of floor+maps-cpu-ns/fd
//
// Run it with
//
//	go test -run '^$' -bench HandoverMeta -count 8 | tee bench.txt
func BenchmarkHandoverMeta(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			benchHandoverMeta(b, n)
		})
	}
}

func benchHandoverMeta(b *testing.B, n int) {
	fds := benchFds(b, min(n, benchBase))
	oobs := floorRights(fds, n)
	addr := sockPath(b)
	b.ReportAllocs()
	var lib, floor, ref time.Duration
	var cpu, refCPU, recvCPU, refRecvCPU time.Duration
	var mallocs, bytes uint64
	var ratios, cpuRatios []float64
	for range b.N {
		var fl recvStats
		floor += runHandover(b, addr, "floor", n, false, func(conn net.Conn) (func() error, error) {
			return floorSender(conn, oobs, n, nil)
		}, &fl)

		var rf recvStats
		d := runHandover(b, addr, "floor-maps", n, true, func(conn net.Conn) (func() error, error) {
			return floorSender(conn, oobs, n, func(i int) { metaSink = sendMeta(i % len(fds)) })
		}, &rf)
		ref += d
		c := time.Duration(rf.cpu + rf.sendCPU)
		refCPU += c
		refRecvCPU += time.Duration(rf.cpu)

		var rs recvStats
		l := runHandover(b, addr, "lib", n, true, func(conn net.Conn) (func() error, error) {
			return func() error {
				return transfer(b.Context(), conn, nil, DefaultTimeout, func(w *ResponseWriter) error {
					for i := range n {
						j := i % len(fds)
						if err := w.Write(fds[j], sendMeta(j)); err != nil {
							return err
						}
					}
					return nil
				})
			}, nil
		}, &rs)
		lib += l
		lc := time.Duration(rs.cpu + rs.sendCPU)
		cpu += lc
		recvCPU += time.Duration(rs.cpu)
		mallocs += rs.sendMallocs
		bytes += rs.sendBytes
		ratios = append(ratios, float64(l)/float64(d))
		cpuRatios = append(cpuRatios, float64(lc)/float64(c))
	}
	perFd := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N*n) }
	b.ReportMetric(float64(lib.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(mallocs)/float64(b.N), "allocs/op")
	b.ReportMetric(float64(bytes)/float64(b.N), "B/op")
	b.ReportMetric(perFd(lib), "ns/fd")
	b.ReportMetric(perFd(floor), "floor-ns/fd")
	b.ReportMetric(perFd(ref), "floor+maps-ns/fd")
	b.ReportMetric(median(ratios), "x-floor+maps")
	b.ReportMetric(perFd(cpu), "cpu-ns/fd")
	b.ReportMetric(perFd(refCPU), "floor+maps-cpu-ns/fd")
	b.ReportMetric(median(cpuRatios), "x-floor+maps-cpu")
	b.ReportMetric(perFd(recvCPU), "recv-cpu-ns/fd")
	b.ReportMetric(perFd(refRecvCPU), "floor+maps-recv-cpu-ns/fd")
}

// median returns the median of xs, leaving xs as it is.
func median(xs []float64) float64 {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

var metaSink Meta

// sendMeta builds benchMeta(i) as a program builds a connection's state in
// its send loop: two strings of fixed width and a map, without fmt.
func sendMeta(i int) Meta {
	id, peer := benchStrings(i)
	return Meta{"id": string(id[:]), "peer": string(peer[:])}
}

// benchStrings writes the id and peer of benchMeta(i).
func benchStrings(i int) (id [7]byte, peer [19]byte) {
	id[0] = 'c'
	putDecimal(id[1:], 100000+i)
	copy(peer[:], "203.0.113.")
	putDecimal(peer[10:13], i%256)
	peer[13] = ':'
	putDecimal(peer[14:], 10000+i)
	return id, peer
}

// putDecimal writes v in decimal, zero-padded to fill b.
func putDecimal(b []byte, v int) {
	for k := len(b) - 1; k >= 0; k-- {
		b[k] = byte('0' + v%10)
		v /= 10
	}
}

// benchBase bounds the distinct descriptors a hand-over sends; more are
// sent again. The hard RLIMIT_NOFILE of our machines is 20,000.
const benchBase = 5000

// benchMeta is the two-key meta of descriptor i < benchBase: an id and a
// peer address, of fixed widths.
func benchMeta(i int) Meta {
	return Meta{
		"id":   fmt.Sprintf("c%06d", 100000+i),
		"peer": fmt.Sprintf("203.0.113.%03d:%05d", i%256, 10000+i),
	}
}

// benchFds returns n descriptors (pipe ends), closed when b ends.
func benchFds(b *testing.B, n int) []int {
	b.Helper()
	fds := make([]int, 0, n+1)
	for len(fds) < n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			b.Fatal(err)
		}
		fds = append(fds, p[0], p[1])
	}
	b.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	return fds[:n]
}

func benchHandover(b *testing.B, n int, withMeta bool) {
	fds := benchFds(b, min(n, benchBase))
	var metas []Meta
	if withMeta {
		for i := range fds {
			metas = append(metas, benchMeta(i))
		}
	}
	oobs := floorRights(fds, n)
	addr := sockPath(b)
	b.ReportAllocs()
	var lib, floor, maps, floorCPU time.Duration
	var mallocs, bytes uint64
	var recv recvStats
	for range b.N {
		var fl recvStats
		floor += runHandover(b, addr, "floor", n, withMeta, func(conn net.Conn) (func() error, error) {
			return floorSender(conn, oobs, n, nil)
		}, &fl)
		floorCPU += time.Duration(fl.cpu + fl.sendCPU)

		var rs recvStats
		lib += runHandover(b, addr, "lib", n, withMeta, func(conn net.Conn) (func() error, error) {
			return func() error {
				return transfer(b.Context(), conn, nil, DefaultTimeout, func(s *ResponseWriter) error {
					for i := range n {
						j := i % len(fds)
						var meta io.WriterTo
						if metas != nil {
							meta = metas[j]
						}
						if err := s.Write(fds[j], meta); err != nil {
							return err
						}
					}
					return nil
				})
			}, nil
		}, &rs)
		mallocs += rs.sendMallocs
		bytes += rs.sendBytes
		recv.add(rs)

		if withMeta {
			maps += buildMaps(b, n)
		}
	}
	perFd := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N*n) }
	b.ReportMetric(float64(lib.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(mallocs)/float64(b.N), "allocs/op")
	b.ReportMetric(float64(bytes)/float64(b.N), "B/op")
	b.ReportMetric(perFd(lib), "ns/fd")
	b.ReportMetric(perFd(floor), "floor-ns/fd")
	b.ReportMetric(perFd(lib)/perFd(floor), "x-floor")
	cpu := time.Duration(recv.cpu + recv.sendCPU)
	b.ReportMetric(perFd(cpu), "cpu-ns/fd")
	b.ReportMetric(perFd(time.Duration(recv.cpu)), "recv-cpu-ns/fd")
	b.ReportMetric(perFd(floorCPU), "floor-cpu-ns/fd")
	b.ReportMetric(perFd(cpu)/perFd(floorCPU), "x-floor-cpu")
	b.ReportMetric(float64(recv.mallocs)/float64(b.N*n), "recv-allocs/fd")
	b.ReportMetric(float64(recv.bytes)/float64(b.N*n), "recv-B/fd")
	b.ReportMetric(float64(recv.maxRSS)/1024, "recv-rss-MB")
	if withMeta {
		b.ReportMetric(perFd(maps), "maps-ns/fd")
		b.ReportMetric(perFd(lib)/(perFd(floor)+perFd(maps)), "x-floor+maps")
	}
}

// recvStats is what a receiving child reports.
type recvStats struct {
	fds, mallocs, bytes uint64
	maxRSS              uint64 // KiB, the largest seen
	ns, cpu             uint64 // wall and CPU (user and system) time

	// Added by runHandover: the sender's CPU time and allocations over the
	// transfer.
	sendCPU, sendMallocs, sendBytes uint64
}

func (s *recvStats) add(o recvStats) {
	s.fds += o.fds
	s.mallocs += o.mallocs
	s.bytes += o.bytes
	s.maxRSS = max(s.maxRSS, o.maxRSS)
	s.ns += o.ns
	s.cpu += o.cpu
	s.sendCPU += o.sendCPU
}

func (s *recvStats) String() string {
	return fmt.Sprintf("%d %d %d %d %d %d", s.fds, s.mallocs, s.bytes, s.maxRSS, s.ns, s.cpu)
}

func parseRecvStats(line string) (recvStats, error) {
	var s recvStats
	_, err := fmt.Sscanf(line, "%d %d %d %d %d %d", &s.fds, &s.mallocs, &s.bytes, &s.maxRSS, &s.ns, &s.cpu)
	return s, err
}

// runHandover starts a child of the given kind that dials addr, and times
// the send that prepare returns for the accepted connection. The child's
// report goes to stats, with the sender's CPU time and allocations over the
// transfer.
func runHandover(b *testing.B, addr, kind string, n int, withMeta bool, prepare func(net.Conn) (send func() error, err error), stats *recvStats) time.Duration {
	b.Helper()
	ln, err := net.Listen("unix", addr)
	if err != nil {
		b.Fatal(err)
	}
	c := startChild(b, "bench-recv", kind, addr, strconv.Itoa(n), strconv.FormatBool(withMeta))
	conn, err := ln.Accept()
	ln.Close()
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	send, err := prepare(conn)
	if err != nil {
		b.Fatal(err)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := processCPU()
	t0 := time.Now()
	err = send()
	d := time.Since(t0)
	cpu := processCPU() - cpu0
	runtime.ReadMemStats(&m1)
	conn.Close()
	if err != nil {
		b.Fatalf("%s: %v; child's stderr:\n%s", kind, err, c.stderr.String())
	}
	line := c.line()
	c.wait()
	if *stats, err = parseRecvStats(line); err != nil || stats.fds != uint64(n) {
		b.Fatalf("%s: child reported %q (%v), want %d descriptors", kind, line, err, n)
	}
	stats.sendCPU = uint64(cpu)
	stats.sendMallocs, stats.sendBytes = m1.Mallocs-m0.Mallocs, m1.TotalAlloc-m0.TotalAlloc
	return d
}

// floorRights returns the control messages that send n descriptors from fds
// (again from the start when they run out) in batches of 253.
func floorRights(fds []int, n int) [][]byte {
	var oobs [][]byte
	batch := make([]int, 0, maxBatch)
	for i := range n {
		batch = append(batch, fds[i%len(fds)])
		if len(batch) == maxBatch || i == n-1 {
			oobs = append(oobs, unix.UnixRights(batch...))
			batch = batch[:0]
		}
	}
	return oobs
}

// floorSender returns the floor's send on conn of the n descriptors in
// oobs: bare sendmsg of each of oobs with one byte, on a blocking
// descriptor, then a wait for a one-byte acknowledgement. If build is not
// nil, it is called for each descriptor's index before the sendmsg that
// carries it. The descriptor is conn's own, which stays open.
func floorSender(conn net.Conn, oobs [][]byte, n int, build func(i int)) (func() error, error) {
	rc, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var serr error
	if err := rc.Control(func(s uintptr) {
		fd, serr = int(s), unix.SetNonblock(int(s), false)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	return func() error {
		one := []byte{0}
		for k, oob := range oobs {
			if build != nil {
				for i := k * maxBatch; i < min(n, (k+1)*maxBatch); i++ {
					build(i)
				}
			}
			if err := unix.Sendmsg(fd, one, oob, nil, unix.MSG_NOSIGNAL); err != nil {
				return err
			}
		}
		_, err := unix.Read(fd, one)
		return err
	}, nil
}

// benchProfileEnv, when set to a directory, has each receiving child of
// the hand-over benchmarks write its CPU profile there, in a file of its
// own (recv-KIND-*.pprof): go tool pprof merges them. The sender's profile
// is go test's -cpuprofile.
const benchProfileEnv = "GRACEFUL_BENCH_CPUPROFILE"

// startCPUProfile profiles this process into a new file in dir, until the
// function it returns is called.
func startCPUProfile(dir, name string) (stop func(), err error) {
	f, err := os.CreateTemp(dir, name+"-*.pprof")
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// floorReceive dials addr with a blocking socket and receives n
// descriptors with bare recvmsg, closing each, then acknowledges. If batch
// is not nil, it is called after each recvmsg, instead of the closes, with
// the index of the first descriptor received and the descriptors, which it
// closes.
func floorReceive(addr string, n int, batch func(at int, fds []int32)) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		return 0, err
	}
	p := make([]byte, 1)
	oob := make([]byte, oobSpace)
	fds := make([]int32, 0, maxBatch)
	got := 0
	for got < n {
		m, oobn, flags, _, err := unix.Recvmsg(fd, p, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			return got, err
		}
		if m == 0 {
			return got, io.ErrUnexpectedEOF
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return got, errTruncated
		}
		fds = appendRights(fds[:0], oob[:oobn])
		if batch != nil {
			batch(got, fds)
		} else {
			closeFds(fds)
		}
		got += len(fds)
	}
	_, err = unix.Write(fd, p)
	return got, err
}

// buildMaps times, in a fresh process, building n two-key maps as a decoder
// of the benchmark's meta must: one string for the bytes and one map each.
func buildMaps(b *testing.B, n int) time.Duration {
	b.Helper()
	c := startChild(b, "bench-maps", strconv.Itoa(n))
	s, err := parseRecvStats(c.line())
	c.wait()
	if err != nil {
		b.Fatal(err)
	}
	return time.Duration(s.ns)
}

var mapSink Meta

// benchEncodings lays out the encodings of benchMeta(i) for i < base, then
// the first maxBatch again, so that the bytes of any frame of the
// benchmark, wrapping around, are contiguous. All have the same size. It
// writes them in place, allocating only the result: a receiver that
// builds its maps from them starts with the young heap of any fresh
// process, as the library's does.
func benchEncodings(base int) (all []byte, size int, err error) {
	size = len(appendBenchEncoding(nil, 0))
	all = make([]byte, 0, (base+maxBatch)*size)
	for i := range base + maxBatch {
		all = appendBenchEncoding(all, i%base)
	}
	for _, i := range []int{0, base - 1} {
		want := benchMeta(i)
		e := want.appendBinary(nil)
		if got := all[i*size : (i+1)*size]; !bytes.Equal(got, e) {
			return nil, 0, fmt.Errorf("benchMeta(%d) encodes as %q, not %q", i, e, got)
		}
		if !maps.Equal(benchSplit(string(e)), want) || !maps.Equal(sendMeta(i), want) {
			return nil, 0, fmt.Errorf("benchSplit or sendMeta does not give %v", want)
		}
	}
	return all, size, nil
}

// appendBenchEncoding appends the encoding of benchMeta(i), written by hand.
func appendBenchEncoding(b []byte, i int) []byte {
	id, peer := benchStrings(i)
	b = append(b, metaVersion, 2, 2, 'i', 'd', byte(len(id)))
	b = append(b, id[:]...)
	b = append(b, 4, 'p', 'e', 'e', 'r', byte(len(peer)))
	return append(b, peer[:]...)
}

// splitFrame builds the Metas of a frame's encodings, each of size bytes,
// from frame, a copy of their bytes that all share (the receive buffer is
// reused), as a decoder of the benchmark's meta must at least.
func splitFrame(frame string, size int) {
	for ; frame != ""; frame = frame[size:] {
		mapSink = benchSplit(frame[:size])
	}
}

// benchSplit builds the Meta of benchMeta's encoding e with the split
// points known: the map's allocation and insertions alone, not a decoder.
func benchSplit(e string) Meta {
	m := make(Meta, 2)
	m[e[3:5]] = e[6:13]
	m[e[14:18]] = e[19:]
	return m
}

// BenchmarkStartup measures the start-up path of a restarting process: a
// fresh process receives one TCP listener from a running Server, timed by
// the child from before Receive dials to the return of its callback, which
// wraps the descriptor with FdListener. ns/op is that time, B/op and
// allocs/op the child's allocations over it.
func BenchmarkStartup(b *testing.B) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer tcp.Close()
	addr := sockPath(b)
	srv := &Server{Handler: ListenerHandler(tcp, nil)}
	ln, err := net.Listen("unix", addr)
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	b.ReportAllocs()
	var total recvStats
	b.ResetTimer()
	for range b.N {
		c := startChild(b, "bench-startup", addr)
		line := c.line()
		c.wait()
		s, err := parseRecvStats(line)
		if err != nil {
			b.Fatalf("child reported %q: %v", line, err)
		}
		total.add(s)
	}
	b.ReportMetric(float64(total.ns)/float64(b.N), "ns/op")
	b.ReportMetric(float64(total.mallocs)/float64(b.N), "allocs/op")
	b.ReportMetric(float64(total.bytes)/float64(b.N), "B/op")
}

// BenchmarkMeta compares Meta's encoding with encoding/gob and
// encoding/json on the benchmark's two-key map. Gob and JSON get a fresh
// encoder and decoder per map, since each descriptor's meta stands alone.
// Meta decodes with MetaFrom from the reader a Receive callback gets.
func BenchmarkMeta(b *testing.B) {
	m := benchMeta(12345)
	enc := m.appendBinary(nil)
	var gobEnc bytes.Buffer
	if err := gob.NewEncoder(&gobEnc).Encode(map[string]string(m)); err != nil {
		b.Fatal(err)
	}
	jsonEnc, _ := json.Marshal(m)

	b.Run("op=encode/codec=meta", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 256)
		for b.Loop() {
			buf = m.appendBinary(buf[:0])
		}
	})
	b.Run("op=encode/codec=gob", func(b *testing.B) {
		b.ReportAllocs()
		var buf bytes.Buffer
		for b.Loop() {
			buf.Reset()
			if err := gob.NewEncoder(&buf).Encode(map[string]string(m)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("op=encode/codec=json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("op=decode/codec=meta", func(b *testing.B) {
		b.ReportAllocs()
		// As a callback's reader gives it: one of a frame of 253 metas.
		var body []byte
		for range maxBatch {
			body = binary.BigEndian.AppendUint32(body, uint32(len(enc)))
			body = append(body, enc...)
		}
		var strs metaStrings
		var r metaReader
		i := 0
		for b.Loop() {
			if i%maxBatch == 0 {
				strs = metaStrings{body: body}
			}
			at := i%maxBatch*(4+len(enc)) + 4
			r = metaReader{b: body[at : at+len(enc)], strs: &strs, at: at}
			i++
			if d, err := MetaFrom(&r); err != nil || len(d) != 2 {
				b.Fatal(d, err)
			}
		}
	})
	b.Run("op=decode/codec=gob", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var d map[string]string
			if err := gob.NewDecoder(bytes.NewReader(gobEnc.Bytes())).Decode(&d); err != nil || len(d) != 2 {
				b.Fatal(d, err)
			}
		}
	})
	b.Run("op=decode/codec=json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var d map[string]string
			if err := json.Unmarshal(jsonEnc, &d); err != nil || len(d) != 2 {
				b.Fatal(d, err)
			}
		}
	})
}

// processCPU returns the CPU time, user and system, that this process has
// used so far.
func processCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakRSS returns this process's peak resident memory in KiB. Unlike
// getrusage's, it starts afresh at exec, without the parent's.
func peakRSS() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	_, v, ok := strings.Cut(string(b), "\nVmHWM:")
	if !ok {
		return 0, fmt.Errorf("no VmHWM in /proc/self/status")
	}
	v, _, _ = strings.Cut(v, "kB")
	return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
}

// BenchmarkObjectHandlers measures what a Server pays to send objects
// through their handlers: 500 FileHandlers in one SequenceHandler, against
// the same 500 descriptors written through one ResponseWriter. Each
// iteration runs both transfers, one after the other, to one receiving
// process that stays up for the whole benchmark (receiving all), so the
// two share the machine's state. Reported:
//
//	ns/op        the handlers' transfer, from its start (the peer check)
//	             to the receiver's final acknowledgement
//	write-ns/op  the writes' transfer, timed the same way
//	x-write      ns/op / write-ns/op
func BenchmarkObjectHandlers(b *testing.B) {
	const n = 500
	files := make([]*os.File, 0, n)
	for len(files) < n {
		r, w, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		files = append(files, r, w)
	}
	fds := make([]int, n)
	hs := make([]Handler, n)
	for i, f := range files {
		b.Cleanup(func() { f.Close() })
		hs[i] = FileHandler(f, nil)
		// The descriptor's number, without Fd (which would make f blocking).
		rc, err := f.SyscallConn()
		if err != nil {
			b.Fatal(err)
		}
		if err := rc.Control(func(fd uintptr) { fds[i] = int(fd) }); err != nil {
			b.Fatal(err)
		}
	}
	handlers := SequenceHandler(hs...)
	writes := Handler(func(_ net.Conn, w *ResponseWriter) error {
		for _, fd := range fds {
			if err := w.Write(fd, nil); err != nil {
				return err
			}
		}
		return nil
	})

	addr := sockPath(b)
	ln, err := net.Listen("unix", addr)
	if err != nil {
		b.Fatal(err)
	}
	c := startChild(b, "bench-recv-all", addr)
	conn, err := ln.Accept()
	ln.Close()
	if err != nil {
		b.Fatal(err)
	}
	run := func(h Handler) time.Duration {
		t0 := time.Now()
		err := transfer(b.Context(), conn, nil, DefaultTimeout, func(s *ResponseWriter) error {
			return h(conn, s)
		})
		d := time.Since(t0)
		if err != nil {
			b.Fatalf("transfer: %v; receiver's stderr:\n%s", err, c.stderr.String())
		}
		return d
	}
	var hd, wd time.Duration
	for range b.N {
		hd += run(handlers)
		wd += run(writes)
	}
	conn.Close()
	c.expect(strconv.Itoa(2 * b.N * n))
	c.wait()
	b.ReportMetric(float64(hd.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(wd.Nanoseconds())/float64(b.N), "write-ns/op")
	b.ReportMetric(float64(hd)/float64(wd), "x-write")
}
