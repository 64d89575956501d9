//go:build linux

package graceful

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkPassConns measures what a restart pays to move live TCP
// connections to its successor, from the first system call that sends
// them to the moment the successor's application holds the last of them
// as a net.Conn. Each iteration, between fresh processes, runs:
//
//   - the library: an Instance in this process with a successor (a fresh
//     child) that has committed; PassConns of n live TCP connections, each
//     with the meta {"lines": "41"}; the successor takes each with
//     AcceptConn until it holds the last one;
//   - the floor: the same descriptors sent to a fresh child with bare
//     sendmsg, 253 per call with one byte, which receives them with bare
//     recvmsg and wraps each with os.NewFile and net.FileConn.
//
// The connections' clients live in a third process, so that n = 10,000
// fits in the hard RLIMIT_NOFILE of 20,000. The floor runs first: the
// library's transfer takes the connections away. Both windows end in the
// receiving child, read on CLOCK_MONOTONIC, which the processes share.
// Reported, as medians over the iterations:
//
//	ns/conn, floor-ns/conn  the library's and the floor's windows per connection
//	x-floor                 ns/conn / floor-ns/conn, median of the ratios
//	pass-ns/conn            until PassConns returned (its closes included)
//	recv-cpu-ns/conn        the receiving child's CPU time, user and system,
//	floor-recv-cpu-ns/conn  from before the first descriptor to the last conn
//	x-floor-recv-cpu        their ratio, median of the iterations': less
//	                        sensitive to other load on the machine
//	recv-allocs/conn        the receiving child's allocations over that span,
//	floor-recv-allocs/conn  the successor's and the floor's
//	recv-csw/conn           their context switches (voluntary and
//	floor-recv-csw/conn     involuntary) over it
//
// Run it with
//
//	go test -run '^$' -bench PassConns -benchtime 5x -count 1
//
// GRACEFUL_BENCH_CPUPROFILE (see benchProfileEnv) has the receiving
// children write CPU profiles (recv-succ-*, recv-floorconn-*), and
// GRACEFUL_BENCH_WRAP, a command and its arguments separated by spaces,
// runs them under that command: under valgrind --tool=callgrind, for
// instance, to count their instructions (the windows then mean nothing);
// GRACEFUL_BENCH_CALLGRIND then has them zero the counts before their window
// and dump them after it, with callgrind_control.
func BenchmarkPassConns(b *testing.B) {
	for _, n := range []int{5_000, 10_000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			benchPassConns(b, n)
		})
	}
}

func benchPassConns(b *testing.B, n int) {
	if err := raiseNofile(); err != nil {
		b.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer tcp.Close()
	var lib, floor, pass, ratios, libCPU, floorCPU, cpuRatios, allocs, floorAllocs, csw, floorCsw []float64
	for range b.N {
		conns, closeConns := passClients(b, tcp, n)

		// The floor.
		addr := sockPath(b)
		ul, err := net.Listen("unix", addr)
		if err != nil {
			b.Fatal(err)
		}
		fc := startBenchChild(b, "bench-floorconn", addr, strconv.Itoa(n))
		uc, err := ul.Accept()
		ul.Close()
		if err != nil {
			b.Fatal(err)
		}
		fc.expect("ready")
		fds := make([]int, n)
		for i, c := range conns {
			rc, _ := c.(*net.TCPConn).SyscallConn()
			rc.Control(func(fd uintptr) { fds[i] = int(fd) })
		}
		send, err := floorSender(uc, floorRights(fds, n), n, nil)
		if err != nil {
			b.Fatal(err)
		}
		t0 := monoNow()
		if err := send(); err != nil {
			b.Fatalf("floor: %v; child's stderr:\n%s", err, fc.stderr.String())
		}
		fs := parseConnStats(b, fc.line())
		fc.wait()
		uc.Close()

		// The library.
		sock := filepath.Join(sockPath(b), "s")
		os.Mkdir(filepath.Dir(sock), 0o700)
		inst, err := Start(Config{Socket: sock})
		if err != nil {
			b.Fatal(err)
		}
		if err := inst.Ready(); err != nil {
			b.Fatal(err)
		}
		sc := startBenchChild(b, "bench-succ", sock, strconv.Itoa(n))
		sc.expect("ready")
		<-inst.Done()
		passed := make([]PassedConn, n)
		for i, c := range conns {
			passed[i] = PassedConn{Conn: c, Meta: Meta{"lines": "41"}}
		}
		t1 := monoNow()
		if err := inst.PassConns(passed); err != nil {
			b.Fatalf("PassConns: %v; successor's stderr:\n%s", err, sc.stderr.String())
		}
		t2 := monoNow()
		ls := parseConnStats(b, sc.line())
		inst.Stop()
		sc.wait()
		closeConns()

		per := func(d int64) float64 { return float64(d) / float64(n) }
		l, f := per(ls.end-t1), per(fs.end-t0)
		lib = append(lib, l)
		floor = append(floor, f)
		ratios = append(ratios, l/f)
		pass = append(pass, per(t2-t1))
		libCPU = append(libCPU, per(ls.cpu))
		floorCPU = append(floorCPU, per(fs.cpu))
		cpuRatios = append(cpuRatios, float64(ls.cpu)/float64(fs.cpu))
		allocs = append(allocs, per(ls.mallocs))
		floorAllocs = append(floorAllocs, per(fs.mallocs))
		csw = append(csw, per(ls.csw))
		floorCsw = append(floorCsw, per(fs.csw))
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(lib), "ns/conn")
	b.ReportMetric(median(floor), "floor-ns/conn")
	b.ReportMetric(median(ratios), "x-floor")
	b.ReportMetric(median(pass), "pass-ns/conn")
	b.ReportMetric(median(libCPU), "recv-cpu-ns/conn")
	b.ReportMetric(median(floorCPU), "floor-recv-cpu-ns/conn")
	b.ReportMetric(median(cpuRatios), "x-floor-recv-cpu")
	b.ReportMetric(median(allocs), "recv-allocs/conn")
	b.ReportMetric(median(floorAllocs), "floor-recv-allocs/conn")
	b.ReportMetric(median(csw), "recv-csw/conn")
	b.ReportMetric(median(floorCsw), "floor-recv-csw/conn")
	b.Logf("n=%d: ratios %.3f", n, ratios)
}

// startBenchChild starts the receiving child name, under the command of
// GRACEFUL_BENCH_WRAP if set.
func startBenchChild(b *testing.B, name string, args ...string) *child {
	b.Helper()
	wrap := strings.Fields(os.Getenv("GRACEFUL_BENCH_WRAP"))
	if len(wrap) == 0 {
		return startChild(b, name, args...)
	}
	args = append(append(wrap[1:], os.Args[0]), args...)
	return startChildCmd(b, exec.Command(wrap[0], args...), name)
}

// benchTraceEnv, when set to a directory, has BenchmarkPassConns's successor
// write an execution trace there (recv-succ-*.trace), from before its window
// to its end: go tool trace reads it.
const benchTraceEnv = "GRACEFUL_BENCH_TRACE"

// startTrace traces this process into a new file in dir, until the function
// it returns is called.
func startTrace(dir, name string) (stop func(), err error) {
	f, err := os.CreateTemp(dir, name+"-*.trace")
	if err != nil {
		return nil, err
	}
	if err := trace.Start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		trace.Stop()
		f.Close()
	}, nil
}

// callgrindControl runs callgrind_control with flag for this process, when
// GRACEFUL_BENCH_CALLGRIND is set: -z zeroes the counts before the window, -d
// dumps them after it.
func callgrindControl(flag string) {
	if os.Getenv("GRACEFUL_BENCH_CALLGRIND") == "" {
		return
	}
	// Callgrind 3.19 aborts on a signal it does not expect, SIGCHLD too:
	// the child is reaped by the kernel, and its end read from its output.
	signal.Ignore(syscall.SIGCHLD)
	cmd := exec.Command("callgrind_control", flag, strconv.Itoa(os.Getpid()))
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "callgrind_control %s: %v\n", flag, err)
		return
	}
	io.Copy(io.Discard, out)
	cmd.Wait()
}

// raiseNofile raises the soft RLIMIT_NOFILE to the hard one (Go's runtime
// does too at start, but says nothing if it cannot).
func raiseNofile() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		return unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	return nil
}

// passClients has a fresh child dial n connections to ln, and returns this
// side's ends and a function that closes them all, the child's ends with a
// reset: a run's ports are free again for the next.
func passClients(b *testing.B, ln net.Listener, n int) (conns []net.Conn, closeAll func()) {
	b.Helper()
	conns = make([]net.Conn, 0, n)
	errc := make(chan error, 1)
	go func() {
		for len(conns) < n {
			c, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			conns = append(conns, c)
		}
		errc <- nil
	}()
	c := startChild(b, "bench-clients", ln.Addr().String(), strconv.Itoa(n))
	c.expect("dialled") // fails b if the child does
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return conns, func() {
		c.wait()
		for _, c := range conns {
			c.Close()
		}
	}
}

// connStats is what a receiving child of BenchmarkPassConns reports: when
// it held the last connection (CLOCK_MONOTONIC), and its CPU time,
// allocations and context switches from its start of waiting until then.
type connStats struct {
	end, cpu, mallocs, csw int64
}

func parseConnStats(b *testing.B, line string) connStats {
	b.Helper()
	var s connStats
	if _, err := fmt.Sscanf(line, "%d %d %d %d", &s.end, &s.cpu, &s.mallocs, &s.csw); err != nil {
		b.Fatalf("child reported %q: %v", line, err)
	}
	return s
}

// monoNow reads CLOCK_MONOTONIC, which every process shares (Go's
// monotonic readings count from the process's start).
func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// connMeter measures a receiving child from its start of waiting.
type connMeter struct {
	m0  runtime.MemStats
	ru0 unix.Rusage
}

func startConnMeter() *connMeter {
	m := &connMeter{}
	runtime.ReadMemStats(&m.m0)
	unix.Getrusage(unix.RUSAGE_SELF, &m.ru0)
	return m
}

// report prints the stats up to end.
func (m *connMeter) report(end int64) {
	var m1 runtime.MemStats
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	runtime.ReadMemStats(&m1)
	cpu := ru.Utime.Nano() + ru.Stime.Nano() - m.ru0.Utime.Nano() - m.ru0.Stime.Nano()
	csw := ru.Nvcsw + ru.Nivcsw - m.ru0.Nvcsw - m.ru0.Nivcsw
	fmt.Printf("%d %d %d %d\n", end, cpu, m1.Mallocs-m.m0.Mallocs, csw)
}

func init() {
	// bench-clients addr n: dials n TCP connections to addr, says
	// "dialled", and closes them with a reset (no TIME_WAIT to use up
	// ports) once its standard input closes.
	children["bench-clients"] = func(args []string) error {
		if err := raiseNofile(); err != nil {
			return err
		}
		n, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		conns := make([]*net.TCPConn, n)
		var wg sync.WaitGroup
		var next atomic.Int64
		errs := make(chan error, 16)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
					c, err := net.Dial("tcp", args[0])
					if err != nil {
						errs <- err
						return
					}
					conns[i] = c.(*net.TCPConn)
				}
			}()
		}
		wg.Wait()
		select {
		case err := <-errs:
			return err
		default:
		}
		fmt.Println("dialled")
		io.Copy(io.Discard, os.Stdin)
		for _, c := range conns {
			c.SetLinger(0)
			c.Close()
		}
		return nil
	}

	// bench-floorconn addr n: the floor's receiver. It dials addr with a
	// blocking socket, receives n descriptors with bare recvmsg, wraps
	// each with net.FileConn as it comes, reports its connStats once it
	// holds the last, and acknowledges.
	children["bench-floorconn"] = func(args []string) error {
		if err := raiseNofile(); err != nil {
			return err
		}
		n, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		if dir := os.Getenv(benchProfileEnv); dir != "" {
			stop, err := startCPUProfile(dir, "recv-floorconn")
			if err != nil {
				return err
			}
			defer stop()
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: args[0]}); err != nil {
			return err
		}
		conns := make([]net.Conn, 0, n)
		p := make([]byte, 1)
		oob := make([]byte, oobSpace)
		fds := make([]int32, 0, maxBatch)
		callgrindControl("-z")
		fmt.Println("ready")
		meter := startConnMeter()
		for len(conns) < n {
			m, oobn, flags, _, err := unix.Recvmsg(fd, p, oob, unix.MSG_CMSG_CLOEXEC)
			if err != nil {
				return err
			}
			if m == 0 {
				return io.ErrUnexpectedEOF
			}
			if flags&unix.MSG_CTRUNC != 0 {
				return ErrLimit
			}
			for _, fd := range appendRights(fds[:0], oob[:oobn]) {
				f := os.NewFile(uintptr(fd), "")
				c, err := net.FileConn(f)
				f.Close()
				if err != nil {
					return err
				}
				conns = append(conns, c)
			}
		}
		end := monoNow()
		callgrindControl("-d")
		meter.report(end)
		if _, err := unix.Write(fd, p); err != nil {
			return err
		}
		for _, c := range conns {
			c.Close()
		}
		return nil
	}

	// bench-succ socket n: the library's receiver, a successor. It takes
	// over at socket, says "ready" once its Ready returned, takes n
	// connections with AcceptConn, and reports its connStats once it
	// holds the last. Its standard input closing ends it.
	children["bench-succ"] = func(args []string) error {
		if err := raiseNofile(); err != nil {
			return err
		}
		n, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		inst, err := Start(Config{Socket: args[0]})
		if err != nil {
			return err
		}
		defer inst.Stop()
		if err := inst.Ready(); err != nil {
			return err
		}
		if dir := os.Getenv(benchProfileEnv); dir != "" {
			stop, err := startCPUProfile(dir, "recv-succ")
			if err != nil {
				return err
			}
			defer stop()
		}
		conns := make([]net.Conn, 0, n)
		metas := make([]Meta, 0, n)
		callgrindControl("-z")
		if dir := os.Getenv(benchTraceEnv); dir != "" {
			stop, err := startTrace(dir, "recv-succ")
			if err != nil {
				return err
			}
			defer stop()
		}
		meter := startConnMeter()
		fmt.Println("ready")
		for len(conns) < n {
			c, m, err := inst.AcceptConn()
			if err != nil {
				return fmt.Errorf("after %d connections: %w", len(conns), err)
			}
			conns = append(conns, c)
			metas = append(metas, m)
		}
		end := monoNow()
		callgrindControl("-d")
		meter.report(end)
		for i, m := range metas {
			if _, ok := conns[i].(*net.TCPConn); !ok || len(m) != 1 || m["lines"] != "41" {
				return fmt.Errorf("connection %d: %T with meta %v", i, conns[i], m)
			}
		}
		io.Copy(io.Discard, os.Stdin)
		for _, c := range conns {
			c.Close()
		}
		if _, _, err := inst.AcceptConn(); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("AcceptConn after the last: %v", err)
		}
		return nil
	}
}
