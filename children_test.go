//go:build linux

package graceful

// The test binary and the processes it runs: TestMain, the harness that
// starts a copy of the test binary as a peer process (a child), and every
// child program, each with what it does and the tests that run it.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary re-executes itself as the peer process: a child runs the
// function registered under the name in childEnv and exits.
const childEnv = "GRACEFUL_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(inheritEnv) != "" && os.Getenv(childEnv) == "" {
		// A successor started without saying what to run (a Restart of
		// a test that set no child): it must not run the tests again.
		fmt.Fprintln(os.Stderr, "a successor of the tests with no child to run")
		os.Exit(2)
	}
	if name := os.Getenv(childEnv); name != "" {
		f, ok := children[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown child %q\n", name)
			os.Exit(2)
		}
		if err := f(os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "child %s: %v\n", name, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// long reports whether the tests run in their long forms: with
// GRACEFUL_LONG set in the environment, as CI does. By default they run
// short. The tests with a long form, and their sizes, short and long:
//
//   - TestListenRace: 100 and 400 rounds of 4 servers at once
//   - TestListenRaceProcesses: 50 and 300 rounds of 3 processes
//   - TestListenWhileOthersComeAndGo: 150 and 500 tries of 3 listeners
//   - TestModeThroughSymlink: 250 and 1000 rounds
//   - TestExitInCallback: 20 and 100 hand-overs
//   - TestStopDuringRestart: 30 and 200 rounds
//   - TestStopDuringRestartThroughWrapper: 20 and 150 rounds
//   - TestNegativeTimeoutPredecessorDies: 10 and 60 rounds
//   - TestPredecessorKilledWhileConnecting: 5 and 50 trials
//   - TestInstanceRestarts: 6 and 12 restarts under load
//   - TestCrossVersionTakeOver: only in its long form (it builds two
//     programs)
//
// The examples have the same switch (example/internal/exampletest).
func long() bool {
	return os.Getenv("GRACEFUL_LONG") != ""
}

// sweep is n, or nLong in the long form.
func sweep(n, nLong int) int {
	if long() {
		return nLong
	}
	return n
}

// child is a peer process running children[name] with args.
type child struct {
	cmd    *exec.Cmd
	out    *bufio.Reader
	in     io.WriteCloser
	stderr logBuf // written by the child while the test may read it
	t      testing.TB
}

// startChild starts the child name with args.
func startChild(t testing.TB, name string, args ...string) *child {
	t.Helper()
	return startChildCmd(t, exec.Command(os.Args[0], args...), name)
}

// childEnvFor is the environment of a copy of the test binary that runs
// the child name.
func childEnvFor(name string) []string {
	// Under -race a process sleeps a second at exit unless told not to.
	return append(os.Environ(), childEnv+"="+name, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
}

// startChildCmd starts cmd, which runs a copy of the test binary, as the
// child name; the caller may have set its credentials or directory.
func startChildCmd(t testing.TB, cmd *exec.Cmd, name string) *child {
	t.Helper()
	cmd.Env = childEnvFor(name)
	c := &child{cmd: cmd, t: t}
	cmd.Stderr = &c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if c.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	c.out = bufio.NewReader(out)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.in.Close()
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return c
}

// line reads the child's next line of output.
func (c *child) line() string {
	c.t.Helper()
	s, err := c.out.ReadString('\n')
	if err != nil {
		c.cmd.Wait()
		c.t.Fatalf("child output: %v; stderr:\n%s", err, c.stderr.String())
	}
	return strings.TrimSuffix(s, "\n")
}

// expect reads a line and checks it.
func (c *child) expect(want string) {
	c.t.Helper()
	if got := c.line(); got != want {
		c.t.Fatalf("child said %q, want %q; stderr:\n%s", got, want, c.stderr.String())
	}
}

// wait waits for the child to exit and fails the test if it failed.
func (c *child) wait() {
	c.t.Helper()
	c.in.Close()
	if err := c.cmd.Wait(); err != nil {
		c.t.Fatalf("child: %v; stderr:\n%s", err, c.stderr.String())
	}
}

// instanceEnv is the environment that makes the test binary an instance
// (instanceMain), added to the test's own.
func instanceEnv() []string {
	// Under -race a process sleeps a second at exit unless told not to.
	return []string{childEnv + "=instance", "GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0"}
}

// children are the programs a child runs, by the name childEnv gives:
// each runs with the child's arguments, and its error fails the child.
// They are defined below, in this order.
var children = map[string]func(args []string) error{
	// The mechanism: transfers between two processes.
	"kinds":          childKinds,
	"advanced":       childAdvanced,
	"once":           childOnce,
	"exitincallback": childExitInCallback,
	"stall":          childStall,
	"fdlinks":        childFdLinks,
	"framecount":     childFrameCount,
	"contend":        childContend,
	"send-many":      childSendMany,
	"stalled":        childStalled,
	"pidprepare":     childPIDPrepare,
	// Hostile peers and faults.
	"receive":       childReceive,
	"serve":         childServe,
	"fulltable":     childFullTable,
	"server10k":     childServer10k,
	"stuckreceiver": childStuckReceiver,
	"flock":         childFlock,
	"openlock":      childOpenLock,
	// The restart layer: instances.
	"instance":      instanceMain,
	"successor":     childSuccessor,
	"app":           childApp,
	"takeconns-env": childTakeConnsEnv,
	"takeconns":     childTakeConns,
	"idle":          childIdle,
	"restarter":     childRestarter,
	"late":          childLate,
	"passee":        childPassee,
	"sdsucc":        childActivatedSuccessor,
	"wrapstop":      childWrapStop,
	"lockwaiter":    childLockWaiter,
	"negpred":       childNegPred,
	"negsucc":       childNegSucc,
	"argv0":         childArgv0,
	"slowready":     childSlowReady,
	// The keeper.
	"keptenv":    childKeptEnv,
	"keeperreap": childKeeperReap,
	"notifier":   childNotifier,
	// The benchmarks' receivers.
	"bench-recv":     childBenchRecv,
	"bench-maps":     childBenchMaps,
	"bench-startup":  childBenchStartup,
	"bench-recv-all": childBenchRecvAll,
}

// The mechanism: transfers between two processes.

// childKinds receives from args[0] a TCP listener, a UDP socket, a Unix
// listener, a file, a pipe and a live TCP connection, says "received" and
// their kinds, then uses each (accepting, answering a datagram, reading
// the file and the pipe, going on with the connection) and says so.
// Run by TestHandOverKinds.
func childKinds(args []string) error {
	objs := map[string]int{}
	var kinds []string
	var fileName string
	err := Receive(args[0], func(fd int, meta io.Reader) error {
		m, err := MetaFrom(meta)
		if err != nil {
			return err
		}
		objs[m["kind"]] = fd
		kinds = append(kinds, m["kind"])
		if m["kind"] == "file" {
			fileName = m["name"]
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Println("received", strings.Join(kinds, " "))

	for _, kind := range []string{"tcp", "unix"} {
		ln, err := FdListener(objs[kind])
		if err != nil {
			return err
		}
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "ping\n" {
			return fmt.Errorf("%s: read %q, %v", kind, line, err)
		}
		fmt.Fprintf(c, "%s child\n", kind)
		c.Close()
		ln.Close()
		fmt.Println(kind, "done")
		if kind == "tcp" {
			if err := udpChild(objs["udp"]); err != nil {
				return err
			}
		}
	}

	f := os.NewFile(uintptr(objs["file"]), fileName)
	b := make([]byte, 13)
	if _, err := f.ReadAt(b, 0); err != nil {
		return err
	}
	f.Close()
	fmt.Println("file", string(b))

	p := os.NewFile(uintptr(objs["pipe"]), "pipe")
	line, err := bufio.NewReader(p).ReadString('\n')
	if err != nil {
		return err
	}
	p.Close()
	fmt.Println("pipe", strings.TrimSpace(line))

	conn, err := FdConn(objs["conn"])
	if err != nil {
		return err
	}
	line, err = bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	fmt.Fprintf(conn, "conn child got %s", line)
	conn.Close()
	fmt.Println("conn done")
	return nil
}

// childAdvanced dials args[0], reads args[1] bytes of application data
// and says their hash, then receives a listener, a file and a descriptor
// with custom meta bytes, one transfer each, and says what came; the
// README's lower-level path. Run by TestAdvancedUsage.
func childAdvanced(args []string) error {
	conn, err := net.Dial("unix", args[0])
	if err != nil {
		return err
	}
	defer conn.Close()
	var size int
	fmt.Sscan(args[1], &size)
	data := make([]byte, size)
	if _, err := io.ReadFull(conn, data); err != nil {
		return err
	}
	fmt.Printf("data %x\n", sha256.Sum256(data))
	err = ReceiveFrom(conn, func(fd int, meta io.Reader) error {
		ln, err := FdListener(fd)
		if err != nil {
			return err
		}
		ln.Close()
		fmt.Println("listener", meta)
		return nil
	})
	if err != nil {
		return err
	}
	err = ReceiveFrom(conn, func(fd int, meta io.Reader) error {
		f := os.NewFile(uintptr(fd), "")
		defer f.Close()
		m, err := MetaFrom(meta)
		if err != nil {
			return err
		}
		fmt.Println("file", m["name"])
		return nil
	})
	if err != nil {
		return err
	}
	err = ReceiveFrom(conn, func(fd int, meta io.Reader) error {
		defer unix.Close(fd)
		b, err := io.ReadAll(meta)
		fmt.Println("custom", string(b))
		return err
	})
	if err != nil {
		return err
	}
	if err := ReceiveFrom(conn, nil); err != io.EOF {
		return fmt.Errorf("after the last transfer: %v, want io.EOF", err)
	}
	return nil
}

// childOnce is a successor that receives from args[0], says "received"
// and how many, then serves at once on the same address and says
// "listening". Run by TestServeOnce.
func childOnce(args []string) error {
	n := 0
	err := Receive(args[0], func(fd int, meta io.Reader) error {
		n++
		return unix.Close(fd)
	})
	if err != nil {
		return err
	}
	fmt.Println("received", n)
	srv := &Server{Handler: SequenceHandler()}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe(args[0]) }()
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", args[0]); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-errc:
			return err
		case <-time.After(time.Millisecond):
		}
	}
	fmt.Println("listening")
	srv.Close()
	<-errc
	return nil
}

// childExitInCallback serves a TCP listener once at args[0], saying
// "listening" once its socket listens, and exits as soon as the callback
// placed after the listener runs: a drain that takes no time. Run by
// TestExitInCallback.
func childExitInCallback(args []string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &Server{Handler: SequenceHandler(
		ListenerHandler(ln, Meta{"addr": ln.Addr().String()}),
		CallbackHandler(func() { os.Exit(0) }),
	)}
	hln, err := listenUnix(args[0], 0o600, -1)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	return srv.Serve(hln)
}

// childStall receives from args[0]; the callback says "got <kind>" and
// stalls, the transfer unacknowledged, until a line comes on stdin. Then
// it uses the descriptor, answering "child <kind>" through it. Run by
// TestCloseWhileReceiverStalls.
func childStall(args []string) error {
	in := bufio.NewReader(os.Stdin)
	return Receive(args[0], func(fd int, meta io.Reader) error {
		m, err := MetaFrom(meta)
		if err != nil {
			unix.Close(fd)
			return err
		}
		fmt.Println("got", m["kind"])
		if _, err := in.ReadString('\n'); err != nil {
			unix.Close(fd)
			return err
		}
		return answerThrough(m["kind"], fd)
	})
}

// childFdLinks prints how many of its descriptors refer to args[0], a
// name as /proc/self/fd shows it. Run by TestDuplicatesCloseOnExec.
func childFdLinks(args []string) error {
	n, err := fdLinks("/proc/self/fd", args[0])
	fmt.Println(n)
	return err
}

// childFrameCount receives from args[0] and prints, for each
// descriptor, how many descriptors of the same file it holds when its
// callback runs. It closes each before the next, so within a frame of k
// the counts are k, k-1, ... 1: the receiver took the whole frame first.
// Run by TestObjectHandlersShareFrame.
func childFrameCount(args []string) error {
	var counts []string
	err := Receive(args[0], func(fd int, _ io.Reader) error {
		defer unix.Close(fd)
		link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		if err != nil {
			return err
		}
		n, err := fdLinks("/proc/self/fd", link)
		counts = append(counts, fmt.Sprint(n))
		return err
	})
	fmt.Println(strings.Join(counts, " "))
	return err
}

// childContend, on each line "go" on stdin, runs ListenAndServe at
// args[0] and says "won", or "lost" and why; on "close", it closes a
// server that won and says "closed". Run by TestListenRaceProcesses.
func childContend(args []string) error {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer f.Close()
	var srv *Server
	var errc <-chan error
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "go":
			srv = &Server{Handler: FileHandler(f, Meta{"id": strconv.Itoa(os.Getpid())})}
			errc, err = listen(srv, args[0])
			switch {
			case err == nil:
				fmt.Println("won")
			case errors.Is(err, syscall.EADDRINUSE):
				fmt.Println("lost EADDRINUSE")
			default:
				fmt.Println("lost", strings.ReplaceAll(err.Error(), "\n", " "))
			}
		case "close":
			if errc != nil {
				srv.Close()
				if err := <-errc; !errors.Is(err, ErrServerClosed) {
					return err
				}
				errc = nil
			}
			fmt.Println("closed")
		}
	}
	return in.Err()
}

// childSendMany sends args[0] descriptors (one pipe end again and again)
// as one transfer on descriptor 3, with a soft RLIMIT_NOFILE far below
// that, and says "sent". Run by TestInFlightLimit.
func childSendMany(args []string) error {
	n, err := strconv.Atoi(args[0])
	if err != nil {
		return err
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	lim.Cur = 64
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	f := os.NewFile(3, "conn")
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	defer conn.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	err = transfer(context.Background(), conn, nil, DefaultTimeout, func(s *ResponseWriter) error {
		for range n {
			if err := s.Write(p[0], nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Println("sent")
	return nil
}

// childStalled, over the connection on descriptor 3, sends a request and
// reads the answer, watched by a watchdog with the idle timeout args[0] (a
// duration) armed before the request, and says how it went: the
// milliseconds taken, then "nil", "deadline" or the error. Run by
// TestWatchdogStalledSelf.
func childStalled(args []string) error {
	idle, err := time.ParseDuration(args[0])
	if err != nil {
		return err
	}
	f := os.NewFile(3, "conn")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	defer c.Close()
	w := newWatchdog(context.Background(), c, idle)
	start := time.Now()
	// Armed before the request: once the test has read it, the idle
	// timer runs, and is due while the test stops this process.
	w.arm()
	_, err = c.Write([]byte("q"))
	if err == nil {
		_, err = io.ReadFull(c, make([]byte, 1))
	}
	err = w.disarm(err)
	w.stop()
	kind := "nil"
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		kind = "deadline"
	case err != nil:
		kind = strconv.Quote(err.Error())
	}
	fmt.Println(time.Since(start).Milliseconds(), kind)
	return nil
}

// childPIDPrepare prepares the pid file args[0], says "prepared" and
// waits to be killed. Run by TestPIDFileStaleTemps.
func childPIDPrepare(args []string) error {
	if _, err := preparePIDFile(args[0]); err != nil {
		return err
	}
	fmt.Println("prepared")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

// Hostile peers and faults.

// childReceive receives from args[0], closing what it gets, and says
// how many and how it ended; args[1] "allow" admits a server run by
// nobody. Run (as nobody) by TestStrangerClient.
func childReceive(args []string) error {
	c := &Client{Timeout: 10 * time.Second}
	if len(args) > 1 && args[1] == "allow" {
		c.Allow = allowNobody
	}
	var got closer
	err := c.Receive(context.Background(), args[0], got.cb)
	fmt.Println("received", got.count(), errKind(err))
	return nil
}

// childServe serves its stdin at args[0] until stdin ends, with its uid
// as meta, and says "listening". Run (as nobody) by TestStrangerServer.
func childServe(args []string) error {
	ln, err := listenUnix(args[0], 0o600, -1)
	if err != nil {
		return err
	}
	srv := &Server{Handler: fdHandler(0, Meta{"uid": strconv.Itoa(os.Getuid())})}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	fmt.Println("listening")
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
	<-errc
	return nil
}

// childFullTable receives from args[0] with a descriptor table that is
// nearly full, and says what it got and how many descriptors it leaked.
// Run by TestTruncated.
func childFullTable(args []string) error {
	before, err := ownFdsInUse()
	if err != nil {
		return err
	}
	lim := unix.Rlimit{Cur: uint64(before + 20), Max: uint64(before + 20)}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	var got closer
	err = Receive(args[0], got.cb)
	fmt.Println("received", got.count(), errKind(err), "leaked", countOwnFds()-before)
	return nil
}

// childServer10k serves 10,000 copies of /dev/null at args[0], in one
// transfer each, until killed; it says "listening". Run by
// TestSenderKilled.
func childServer10k(args []string) error {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	ln, err := listenUnix(args[0], 0o600, -1)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	return (&Server{Handler: manyFds(int(f.Fd()), 10000)}).Serve(ln)
}

// childStuckReceiver receives from args[0], and stops for good after
// 2000 descriptors, saying "got 2000", until killed. Run by
// TestReceiverKilled.
func childStuckReceiver(args []string) error {
	n := 0
	return Receive(args[0], func(fd int, meta io.Reader) error {
		if n++; n == 2000 {
			fmt.Println("got", n)
			time.Sleep(time.Hour) // the scenario: stuck until killed
		}
		return unix.Close(fd)
	})
}

// childFlock holds a flock on args[0], says "locked", and holds it until
// stdin ends. Run (as another user) by TestLockSquatted.
func childFlock(args []string) error {
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	fmt.Println("locked")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

// childOpenLock opens args[0] with openLock, and says what happened.
// Run (as another user) by TestLockOpenToOthers.
func childOpenLock(args []string) error {
	f, err := openLock(args[0])
	if err == nil {
		f.Close()
		fmt.Println("opened")
		return nil
	}
	if errors.Is(err, fs.ErrPermission) {
		err = fmt.Errorf("%w (permission)", err)
	}
	fmt.Println(err)
	return nil
}

// The restart layer: instances.

// faultFile, in the directory of the test, tells the next instance to fail
// while it takes over: "crash" exits after Start, "hang" sleeps, "refuse"
// stops, each before Ready; "gated" serves, and waits before its Ready
// until the test opens the FIFO "gate" in the directory; "orphan" starts a
// subprocess that outlives it. The instance empties it, so only one fails.
const faultFile = "fault"

// instanceMain serves HTTP at args[1] through an Instance at the socket
// args[0], with the pid file args[2]; SIGHUP restarts it, SIGTERM stops it.
// It answers each request with its pid, and prints its events, each line
// starting with its pid. It is each instance of a chain (newChain), run by
// TestInstanceRestarts, TestInstanceRollback, TestInstancePredecessorDies,
// TestRestartRunsInstalledBinary, TestRestartInherits,
// TestRestartPredecessorDiesEarly, TestRestartThroughWrapper,
// TestRestartThroughDaemonizingWrapper, TestRestartFollowsSymlink,
// TestSuccessorsOfDeadPredecessor, TestPredecessorKilledWhileConnecting,
// TestNotify, TestSocketActivation and TestKeeperLeavesOrphans.
func instanceMain(args []string) error {
	sock, addr, pidFile := args[0], args[1], args[2]
	rt, _ := time.ParseDuration(os.Getenv("GRACEFUL_TEST_READY_TIMEOUT"))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM)
	pid := os.Getpid()
	say := func(format string, a ...any) {
		fmt.Printf("%d "+format+"\n", append([]any{pid}, a...)...)
	}
	activated := activatedInodes()
	inst, err := Start(Config{Socket: sock, PIDFile: pidFile, ReadyTimeout: rt, ErrorLog: log.New(os.Stdout, strconv.Itoa(pid)+" log ", 0),
		KeepPID: os.Getenv("GRACEFUL_TEST_KEEP") != ""})
	if err != nil {
		say("start failed: %v", err)
		return err
	}
	faultPath := filepath.Join(filepath.Dir(sock), faultFile)
	fault, _ := os.ReadFile(faultPath)
	if len(fault) > 0 {
		os.WriteFile(faultPath, nil, 0o600)
		say("fault %s", fault)
		switch string(fault) {
		case "crash":
			os.Exit(3)
		case "hang":
			time.Sleep(time.Hour) // the scenario: hung until killed
		case "refuse":
			inst.Stop()
			return errors.New("refused")
		case "orphan":
			// A subprocess of the application, which outlives it.
			orphan := exec.Command("sleep", "60")
			if err := orphan.Start(); err != nil {
				return err
			}
			say("orphan %d", orphan.Process.Pid)
		}
	}
	ln, err := inst.Listen("tcp", addr)
	if err != nil {
		say("listen failed: %v", err)
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "pid=%d\n", pid)
	})}
	var d Drainer
	go d.Serve(srv, ln)
	if string(fault) == "gated" {
		// Until the test opens the gate (openFIFO).
		f, err := os.Open(filepath.Join(filepath.Dir(sock), "gate"))
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := inst.Ready(); err != nil {
		say("ready failed: %v", err)
		d.Drain(context.Background())
		return err
	}
	say("ready %s inherited=%v", ln.Addr(), inst.Inherited())
	if len(activated) > 0 {
		say("activated kept %d of %d", countOpen(activated), len(activated))
	}
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGTERM {
				inst.Stop()
				continue
			}
			say("restart %v", inst.Restart())
		case <-inst.Done():
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := d.Drain(ctx)
			cancel()
			say("exit successor=%d %v", inst.SuccessorPID(), err)
			return err
		}
	}
}

// childSuccessor takes over at args[0], says "started" and the state it
// got, claims the predecessor's TCP listener by the address in args[1],
// its Unix listener at args[2] and its file "log", gets ready, checks that
// it holds no descriptor it did not claim ("ready" and how many more it
// holds), answers one connection on each listener with its pid, stops,
// and says how many descriptors it leaked. Run by TestInstanceInProcess.
func childSuccessor(args []string) error {
	before, err := ownFdsInUse()
	if err != nil {
		return err
	}
	inst, err := Start(Config{Socket: args[0]})
	if err != nil {
		return err
	}
	fmt.Println("started", string(inst.State()))
	ln, err := inst.Listen("tcp", args[1])
	if err != nil {
		return err
	}
	uln, err := inst.Listen("unix", args[2])
	if err != nil {
		return err
	}
	f := inst.File("log")
	if f == nil {
		return errors.New("no file log")
	}
	if _, err := f.WriteString("successor was here\n"); err != nil {
		return err
	}
	if err := inst.Ready(); err != nil {
		return err
	}
	// Two listeners, file, hand-over socket, and the connection to
	// the predecessor, for passed connections: the other listener and
	// the packet socket it did not claim are closed.
	fmt.Println("ready", countOwnFds()-before)
	for _, l := range []net.Listener{ln, uln} {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		fmt.Fprintf(c, "successor %d\n", os.Getpid())
		c.Close()
		l.Close()
	}
	f.Close()
	inst.Stop()
	fmt.Println("leaked", countOwnFds()-before)
	return nil
}

// childApp is an instance that Restart starts: GRACEFUL_TEST_APP says
// what it does ("hang" after Start, else it serves until a successor takes
// over). Run by TestStopCallsOffHungRestart and TestRestartSupersedes.
func childApp(args []string) error {
	inst, err := Start(Config{Socket: os.Getenv("GRACEFUL_TEST_SOCK")})
	if err != nil {
		return err
	}
	if os.Getenv("GRACEFUL_TEST_APP") == "hang" {
		select {}
	}
	if _, err := inst.Listen("tcp", "127.0.0.1:0"); err != nil {
		return err
	}
	if err := inst.Ready(); err != nil {
		return err
	}
	<-inst.Done()
	inst.Stop()
	return nil
}

// childTakeConnsEnv is childTakeConns for a replacement that the library
// starts: its arguments are those of the test binary, so they come in the
// environment. Run by TestPassConnsToReplacement.
func childTakeConnsEnv([]string) error {
	return childTakeConns([]string{os.Getenv("GRACEFUL_TEST_SOCK"), os.Getenv("GRACEFUL_TEST_ADDR"), "serve"})
}

// childTakeConns takes over at args[0], listening at args[1], says
// "ready", then answers each passed connection's next line, prefixed with
// the bytes its meta says were pending: "pid=<pid> id=<id> line=<line>".
// It says "accepted" and how many once no more come, and how many
// descriptors it leaked once stdin has a line. With args[2] "die", it
// exits instead once stdin has a line after Ready. Run by
// TestPassConnsToReplacement.
func childTakeConns(args []string) error {
	before, err := ownFdsInUse()
	if err != nil {
		return err
	}
	inst, err := Start(Config{Socket: args[0]})
	if err != nil {
		return err
	}
	ln, err := inst.Listen("tcp", args[1])
	if err != nil {
		return err
	}
	if err := inst.Ready(); err != nil {
		return err
	}
	fmt.Println("ready")
	if args[2] == "die" {
		bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(0)
	}
	n := 0
	var replies sync.WaitGroup
	defer replies.Wait()
	for {
		c, m, err := inst.AcceptConn()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		n++
		replies.Add(1)
		go func() {
			defer replies.Done()
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "pid=%d id=%s line=%s", os.Getpid(), m["id"], m["pending"]+line)
		}()
	}
	fmt.Println("accepted", n)
	bufio.NewReader(os.Stdin).ReadString('\n')
	replies.Wait()
	ln.Close()
	inst.Stop()
	fmt.Println("leaked", countOwnFds()-before)
	return nil
}

// childIdle is a successor that never gets ready: it sleeps, or with
// GRACEFUL_TEST_EXIT0 set exits at once with status 0. Restart starts it
// in TestStopDuringRestart and TestRestartSuccessorExitsZero.
func childIdle([]string) error {
	if os.Getenv("GRACEFUL_TEST_EXIT0") != "" {
		return nil
	}
	time.Sleep(time.Hour)
	return nil
}

// childRestarter takes over at args[0] (or is the first instance), with
// the pid file in the directory args[1], says "started", serves its pid on
// a TCP listener, and, if it took over, waits for the test to open its
// gate (the FIFO gate.<pid> in args[1]) before its Ready; it says how
// Ready went. Then, on "restart" on stdin, it restarts; on "exit" it
// exits; it says when Done closes. Each line starts with its pid. Run by
// TestRestartLosesToSuccessorBeside and TestPredecessorPIDThirdGeneration.
func childRestarter(args []string) error {
	sock, dir := args[0], args[1]
	pid := os.Getpid()
	say := func(format string, a ...any) { fmt.Printf("%d "+format+"\n", append([]any{pid}, a...)...) }
	inst, err := Start(Config{Socket: sock, PIDFile: filepath.Join(dir, "pid"), ErrorLog: log.New(os.Stdout, fmt.Sprintf("%d log ", pid), 0)})
	if err != nil {
		say("start failed: %v", err)
		return err
	}
	// The gate of a successor: a FIFO, whose opening for reading returns
	// once the test opens it for writing (openGate).
	gate := filepath.Join(dir, "gate."+strconv.Itoa(pid))
	if inst.Inherited() {
		if err := unix.Mkfifo(gate, 0o600); err != nil {
			return err
		}
	}
	say("started inherited=%v predPID=%d", inst.Inherited(), inst.predPID())
	ln, err := inst.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		say("listen failed: %v", err)
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%d\n", pid)
			c.Close()
		}
	}()
	if inst.Inherited() {
		f, err := os.Open(gate)
		if err != nil {
			return err
		}
		f.Close()
	}
	err = inst.Ready()
	say("ready %v %s", err, ln.Addr())
	if err != nil {
		return nil
	}
	go func() {
		s := bufio.NewScanner(os.Stdin)
		for s.Scan() {
			switch s.Text() {
			case "restart":
				go func() { say("restart %v", inst.Restart()) }()
			case "exit":
				os.Exit(0)
			}
		}
	}()
	<-inst.Done()
	say("done successor=%d", inst.SuccessorPID())
	select {}
}

// childLate takes over at args[0] with a Config.Timeout of 250 ms, says
// "started", and on a line on stdin gets ready and says how it went. Run
// by TestReadyWaitsForSlowCommit, which stops it meanwhile.
func childLate(args []string) error {
	inst, err := Start(Config{Socket: args[0], Timeout: 250 * time.Millisecond})
	if err != nil {
		return err
	}
	fmt.Println("started")
	bufio.NewReader(os.Stdin).ReadString('\n')
	err = inst.Ready()
	fmt.Println("ready", err)
	inst.Stop()
	return nil
}

// childPassee takes over at args[0], gets ready, says "ready", then
// answers each connection passed to it with its pid, saying "accepted"
// and its meta's k, until AcceptConn fails ("acceptconn" and why). Run by
// TestPassConnsFailureKeepsConns, which stops it meanwhile.
func childPassee(args []string) error {
	inst, err := Start(Config{Socket: args[0]})
	if err != nil {
		return err
	}
	if err := inst.Ready(); err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, m, err := inst.AcceptConn()
		if err != nil {
			fmt.Println("acceptconn", err)
			return nil
		}
		fmt.Println("accepted", m["k"])
		fmt.Fprintf(c, "successor %d\n", os.Getpid())
		c.Close()
	}
}

// childActivatedSuccessor is a process that systemd's socket activation
// started (LISTEN_FDS set, a socket at descriptor 3) and that takes over
// from the instance at args[0]: it gets ready, and says how, what
// descriptor 3 is then and what LISTEN_* hold. Run by
// TestActivatedTakeOverClosesSystemdSockets.
func childActivatedSuccessor(args []string) error {
	inst, err := Start(Config{Socket: args[0]})
	if err != nil {
		return err
	}
	err = inst.Ready()
	l, lerr := os.Readlink("/proc/self/fd/3")
	if lerr != nil {
		l = "closed"
	}
	fmt.Printf("ready %v inherited=%v fd3=%s LISTEN_PID=%q LISTEN_FDS=%q\n", err, inst.Inherited(), l, os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"))
	inst.Stop()
	return nil
}

// childWrapStop is an application modelled on example/main.go: a first
// instance at args[0] that, while its Restart starts a successor, is told
// to stop (SIGTERM): it calls Stop after GRACEFUL_TEST_DELAY_US, waits for
// Restart, and exits. A successor (its grandchild, through a wrapper that
// runs the program without exec) reports whether its Ready succeeded. Each
// line starts with its pid. Run by TestStopDuringRestartThroughWrapper.
func childWrapStop(args []string) error {
	sock := args[0]
	pid := os.Getpid()
	say := func(format string, a ...any) { fmt.Printf("%d "+format+"\n", append([]any{pid}, a...)...) }
	inst, err := Start(Config{Socket: sock, Timeout: 3 * time.Second, ErrorLog: log.New(os.Stdout, strconv.Itoa(pid)+" log ", 0)})
	if err != nil {
		say("start failed: %v", err)
		return nil
	}
	inherited := inst.Inherited()
	ln, err := inst.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		say("listen failed: %v", err)
		return nil
	}
	defer ln.Close()
	err = inst.Ready()
	say("ready %v inherited=%v", err, inherited)
	if err != nil || inherited {
		inst.Stop()
		return nil
	}
	// The test installs the wrapper now.
	bufio.NewReader(os.Stdin).ReadString('\n')
	d, _ := strconv.Atoi(os.Getenv("GRACEFUL_TEST_DELAY_US"))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); say("restart %v", inst.Restart()) }()
	time.Sleep(time.Duration(d) * time.Microsecond) // the scenario: Stop d µs into Restart
	inst.Stop()
	say("stopped")
	wg.Wait()
	return nil
}

// childLockWaiter is a successor that Restart started (without its kill,
// as through a wrapper), at GRACEFUL_TEST_SOCK, which waits in Start for
// the start lock. It writes to the FIFO GRACEFUL_TEST_OUT how its Start
// and Ready went, then "stopped" once it stopped as an application whose
// Ready failed does, and lives on (draining, say) until SIGTERM. Run by
// TestRefusedWhileWaitingForLock.
func childLockWaiter([]string) error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	out, err := os.OpenFile(os.Getenv("GRACEFUL_TEST_OUT"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	say := func(format string, a ...any) { fmt.Fprintf(out, format+"\n", a...) }
	inst, err := Start(Config{Socket: os.Getenv("GRACEFUL_TEST_SOCK"), ReadyTimeout: 20 * time.Second, ErrorLog: log.New(out, "log ", 0)})
	say("start %v", err)
	if err != nil {
		return nil
	}
	say("ready %v", inst.Ready())
	inst.Stop() // as an application whose Ready failed does
	say("stopped")
	// Draining what it accepted, say, while the test checks the lock.
	select {
	case <-term:
	case <-time.After(time.Minute):
	}
	return nil
}

// childNegPred is a first instance at args[0] with Config.Timeout -1: it
// listens, gets ready, says so, and serves until killed. Run by
// TestNegativeTimeoutPredecessorDies.
func childNegPred(args []string) error {
	inst, err := Start(Config{Socket: args[0], Timeout: -1})
	if err != nil {
		return err
	}
	if _, err := inst.Listen("tcp", "127.0.0.1:0"); err != nil {
		return err
	}
	fmt.Println("ready", inst.Ready())
	time.Sleep(time.Hour) // serving until killed
	return nil
}

// childNegSucc takes over at args[0] with Config.Timeout -1, says
// "started", and on a line on stdin gets ready and says how it went. Run
// by TestNegativeTimeoutPredecessorDies.
func childNegSucc(args []string) error {
	inst, err := Start(Config{Socket: args[0], Timeout: -1})
	if err != nil {
		fmt.Println("start", err)
		return nil
	}
	fmt.Println("started")
	bufio.NewReader(os.Stdin).ReadString('\n')
	fmt.Println("ready", inst.Ready())
	inst.Stop()
	return nil
}

// childArgv0 is a first instance at args[0] that restarts once and says
// how it went; its successor says "successor ready". Run, with an argv[0]
// that names another program, by TestRestartArgv0NamesAnother.
func childArgv0(args []string) error {
	inst, err := Start(Config{Socket: args[0]})
	if err != nil {
		return err
	}
	defer inst.Stop()
	if err := inst.Ready(); err != nil {
		fmt.Println("ready", err)
		return nil
	}
	if inst.Inherited() {
		fmt.Println("successor ready")
		return nil
	}
	fmt.Println("restart", inst.Restart())
	return nil
}

// childSlowReady takes over at args[0], listens at args[1], says
// "started", and holds the start lock until a line comes on stdin; then it
// gets ready and serves until killed. Each line starts with its pid. Run
// by TestSuccessorsOfDeadPredecessor.
func childSlowReady(args []string) error {
	sock, addr := args[0], args[1]
	pid := os.Getpid()
	inst, err := Start(Config{Socket: sock})
	if err != nil {
		fmt.Printf("%d start failed: %v\n", pid, err)
		return err
	}
	defer inst.Stop()
	ln, err := inst.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Printf("%d started\n", pid)
	bufio.NewReader(os.Stdin).ReadString('\n') // holds the start lock
	if err := inst.Ready(); err != nil {
		fmt.Printf("%d ready failed: %v\n", pid, err)
		return err
	}
	fmt.Printf("%d ready %s\n", pid, ln.Addr())
	time.Sleep(time.Hour) // serving until killed
	return nil
}

// The benchmarks' receivers.

// childBenchRecv receives args[2] descriptors from args[1], by the
// receiver args[0] names ("lib" for this library, or a floor), closing
// each and with args[3] "true" decoding its meta, and prints its
// recvStats. Run by BenchmarkHandover and BenchmarkHandoverMeta.
func childBenchRecv(args []string) error {
	kind, addr := args[0], args[1]
	n, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	withMeta := args[3] == "true"
	if dir := os.Getenv(benchProfileEnv); dir != "" {
		stop, err := startCPUProfile(dir, "recv-"+kind)
		if err != nil {
			return err
		}
		defer stop()
	}
	// The encodings that floor-maps builds its maps from, laid out
	// before the clocks start.
	var all []byte
	var size int
	if kind == "floor-maps" {
		if all, size, err = benchEncodings(min(n, benchBase)); err != nil {
			return err
		}
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := processCPU()
	t0 := time.Now()
	var got int
	switch kind {
	case "lib":
		err = Receive(addr, func(fd int, meta io.Reader) error {
			got++
			if err := unix.Close(fd); err != nil {
				return err
			}
			if !withMeta {
				if meta != nil {
					return fmt.Errorf("meta where none was sent")
				}
				return nil
			}
			m, err := MetaFrom(meta)
			if err != nil {
				return err
			}
			// A look-up would be the callback's work, which the
			// reference does not do: the fuzz and unit tests check
			// what decodes.
			if len(m) != 2 {
				return fmt.Errorf("meta %v", m)
			}
			return nil
		})
	case "floor":
		got, err = floorReceive(addr, n, nil)
	case "floor-maps":
		// The maps of the descriptors that arrive with each recvmsg,
		// built from a copy of their encodings' bytes. Each
		// descriptor is closed and its map built in turn, as the
		// library's callback does.
		base := min(n, benchBase)
		got, err = floorReceive(addr, n, func(at int, fds []int32) {
			j := at % base
			frame := string(all[j*size : (j+len(fds))*size])
			for i, fd := range fds {
				unix.Close(int(fd))
				mapSink = benchSplit(frame[i*size : (i+1)*size])
			}
		})
	default:
		err = fmt.Errorf("unknown kind %q", kind)
	}
	ns := time.Since(t0)
	cpu := processCPU() - cpu0
	runtime.ReadMemStats(&m1)
	if err != nil {
		return err
	}
	hwm, err := peakRSS()
	if err != nil {
		return err
	}
	s := recvStats{
		fds:     uint64(got),
		mallocs: m1.Mallocs - m0.Mallocs,
		bytes:   m1.TotalAlloc - m0.TotalAlloc,
		maxRSS:  hwm,
		ns:      uint64(ns),
		cpu:     uint64(cpu),
	}
	fmt.Println(s.String())
	return nil
}

// childBenchMaps times building args[0] two-key maps from the
// benchmark's encodings, as a decoder of its meta must, and prints the
// time as recvStats. Run by BenchmarkHandoverMeta (buildMaps).
func childBenchMaps(args []string) error {
	n, err := strconv.Atoi(args[0])
	if err != nil {
		return err
	}
	base := min(n, benchBase)
	all, size, err := benchEncodings(base)
	if err != nil {
		return err
	}
	runtime.GC()
	t0 := time.Now()
	for i := 0; i < n; i += maxBatch {
		j, k := i%base, min(maxBatch, n-i)
		splitFrame(string(all[j*size:(j+k)*size]), size)
	}
	ns := time.Since(t0)
	fmt.Println((&recvStats{fds: uint64(n), ns: uint64(ns)}).String())
	return nil
}

// childBenchStartup receives one TCP listener from args[0] and prints
// the time and allocations from before Receive to the return of its
// callback, as recvStats. Run by BenchmarkStartup.
func childBenchStartup(args []string) error {
	var m0, m1 runtime.MemStats
	var s recvStats
	runtime.ReadMemStats(&m0)
	t0 := time.Now()
	var ln net.Listener
	err := Receive(args[0], func(fd int, meta io.Reader) error {
		defer func() { s.ns = uint64(time.Since(t0)) }()
		var err error
		ln, err = FdListener(fd)
		return err
	})
	if err != nil {
		return err
	}
	runtime.ReadMemStats(&m1)
	ln.Close()
	s.fds, s.mallocs, s.bytes = 1, m1.Mallocs-m0.Mallocs, m1.TotalAlloc-m0.TotalAlloc
	fmt.Println(s.String())
	return nil
}

// childBenchRecvAll receives transfers from args[0] until the sender
// closes the connection, closing each descriptor, then prints how many it
// got. Run by BenchmarkObjectHandlers.
func childBenchRecvAll(args []string) error {
	conn, err := net.Dial("unix", args[0])
	if err != nil {
		return err
	}
	defer conn.Close()
	got := 0
	_, err = defaultClient.receive(context.Background(), conn, func(fd int, _ io.Reader) error {
		got++
		return unix.Close(fd)
	}, true)
	if err != nil {
		return err
	}
	fmt.Println(got)
	return nil
}

// The keeper.

// childKeptEnv is a kept instance's start: the keeper's variables leave
// its environment, for the application's children, and come back in its
// successors'. Run by TestKeptEnvironment.
func childKeptEnv([]string) error {
	addr := os.Getenv(keeperEnv)
	if got := keeperAddr(); got != addr {
		return fmt.Errorf("keeperAddr() = %q, want %q", got, addr)
	}
	for _, v := range []string{keeperEnv, "NOTIFY_SOCKET"} {
		if _, ok := os.LookupEnv(v); ok {
			return fmt.Errorf("%s is still in the environment", v)
		}
	}
	env := successorEnv()
	for _, want := range []string{keeperEnv + "=" + addr, "NOTIFY_SOCKET=" + addr} {
		if !slices.Contains(env, want) {
			return fmt.Errorf("%s is not in a successor's environment", want)
		}
	}
	return nil
}

// childKeeperReap is a keeper whose serving instance, a notifier, names
// its successor and exits: reaping it, the keeper reads the queue first,
// so the successor serves and the service goes on. Run by
// TestKeeperReadsBeforeSettling.
func childKeeperReap([]string) error {
	k := &keeper{instances: make(map[int]bool), handedBy: make(map[int]int), buf: make([]byte, 64<<10), oob: make([]byte, 1024)}
	if err := k.listen(); err != nil {
		return err
	}
	succ := exec.Command("sleep", "60")
	if err := succ.Start(); err != nil {
		return err
	}
	defer succ.Process.Kill()
	// Neither is waited for: the keeper reaps.
	pred := exec.Command(os.Args[0], "MAINPID="+strconv.Itoa(succ.Process.Pid))
	pred.Env = append(childEnvFor("notifier"), "NOTIFY_SOCKET="+k.addr) // the last of a name counts
	pred.Stderr = os.Stderr
	if err := pred.Start(); err != nil {
		return err
	}
	k.instances[pred.Process.Pid], k.serving = true, pred.Process.Pid
	// Until it can be reaped, reaping nothing.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pred.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		return os.NewSyscallError("waitid", err)
	}
	k.reap()
	if k.serving != succ.Process.Pid || k.over {
		return fmt.Errorf("after the reap: serving %d, over %v; want %d serving", k.serving, k.over, succ.Process.Pid)
	}
	return nil
}

// childNotifier sends args[0] to NOTIFY_SOCKET and exits.
func childNotifier(args []string) error {
	return notify(args[0])
}
