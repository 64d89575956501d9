//go:build linux

package graceful

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listen runs srv.ListenAndServe(addr) and waits until srv serves, or until
// ListenAndServe returns; then err is its error. errc receives what it
// returns after Close.
func listen(srv *Server, addr string) (errc <-chan error, err error) {
	c := make(chan error, 1)
	go func() { c <- srv.ListenAndServe(addr) }()
	for {
		select {
		case err := <-c:
			return nil, err
		default:
		}
		srv.mu.Lock()
		serving := srv.ln != nil
		srv.mu.Unlock()
		if serving {
			return c, nil
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// serveAt is listen for a test: the server's error fails it.
func serveAt(t testing.TB, srv *Server, addr string) <-chan error {
	t.Helper()
	errc, err := listen(srv, addr)
	if err != nil {
		t.Fatalf("ListenAndServe(%s): %v", addr, err)
	}
	return errc
}

// closeServer closes srv, which must have been serving.
func closeServer(t testing.TB, srv *Server, errc <-chan error) {
	t.Helper()
	srv.Close()
	if err := <-errc; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
}

// staleSocket leaves at path the socket file of a server that crashed.
func staleSocket(t testing.TB, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

// receiveID receives from addr the one descriptor of a server that sends
// its id as meta, and returns the id.
func receiveID(addr string) (string, error) {
	var id string
	err := Receive(addr, func(fd int, meta io.Reader) error {
		unix.Close(fd)
		m, err := MetaFrom(meta)
		id = m["id"]
		return err
	})
	return id, err
}

// TestListenRace starts several ListenAndServe at one address at the same
// moment, again and again, on no file and on a stale one. Exactly one must
// serve each time, the others failing with EADDRINUSE, and Receive must reach
// it. Before the socket file appeared only once it listened, of 3,000 such
// rounds 32 without a file and 110 on a stale one ended with two servers or
// more (one on a socket without a file), and in 174 others a contender
// failed with ENOENT; the first failure came within 33 rounds. It runs 100
// rounds, 400 in its long form.
func TestListenRace(t *testing.T) {
	noLeaks(t)
	const contenders = 4
	rounds := sweep(100, 400)
	addr := sockPath(t)
	f := devNull(t)
	type result struct {
		srv  *Server
		id   string
		errc <-chan error
		err  error
	}
	for round := range rounds {
		stale := round%2 == 1
		if stale {
			staleSocket(t, addr)
		}
		start := make(chan struct{})
		results := make(chan result, contenders)
		for i := range contenders {
			go func() {
				id := strconv.Itoa(i)
				srv := &Server{Handler: FileHandler(f, Meta{"id": id})}
				<-start
				errc, err := listen(srv, addr)
				results <- result{srv, id, errc, err}
			}()
		}
		close(start)
		var winners []result
		var failures []string
		for range contenders {
			r := <-results
			if r.err == nil {
				winners = append(winners, r)
				t.Cleanup(func() { r.srv.Close() })
			} else if !errors.Is(r.err, syscall.EADDRINUSE) {
				failures = append(failures, r.err.Error())
			}
		}
		if len(winners) != 1 || len(failures) > 0 {
			t.Fatalf("round %d (stale file: %v): %d servers serve; failures other than EADDRINUSE: %q", round, stale, len(winners), failures)
		}
		w := winners[0]
		if id, err := receiveID(addr); err != nil || id != w.id {
			t.Fatalf("round %d: Receive reached server %q (%v), want %s", round, id, err, w.id)
		}
		closeServer(t, w.srv, w.errc)
		if _, err := os.Lstat(addr); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: socket file after Close: %v", round, err)
		}
	}
	if got := dirNames(t, filepath.Dir(addr)); len(got) != 0 {
		t.Errorf("left in the socket's directory: %q", got)
	}
}

// TestListenRaceProcesses is TestListenRace for separate processes that
// find a stale socket file: one serves, the others fail with EADDRINUSE.
// Before the fix 49 and 139 rounds of 300 (its long form; 50 by default)
// failed in two runs, 40 of them (in the second) with two servers or more.
func TestListenRaceProcesses(t *testing.T) {
	checkFds(t)
	const contenders = 3
	rounds := sweep(50, 300)
	addr := sockPath(t)
	cs := make([]*child, contenders)
	for i := range cs {
		cs[i] = startChild(t, "contend", addr)
	}
	for round := range rounds {
		staleSocket(t, addr)
		for _, c := range cs {
			fmt.Fprintln(c.in, "go")
		}
		var winner *child
		var bad []string
		for _, c := range cs {
			switch got := c.line(); got {
			case "won":
				if winner != nil {
					bad = append(bad, "a second winner")
				}
				winner = c
			case "lost EADDRINUSE":
			default:
				bad = append(bad, got)
			}
		}
		if winner == nil || len(bad) > 0 {
			t.Fatalf("round %d: winner %v, other outcomes %q", round, winner != nil, bad)
		}
		if id, err := receiveID(addr); err != nil || id != strconv.Itoa(winner.cmd.Process.Pid) {
			t.Fatalf("round %d: Receive reached server %q (%v), want pid %d", round, id, err, winner.cmd.Process.Pid)
		}
		for _, c := range cs {
			fmt.Fprintln(c.in, "close")
			c.expect("closed")
		}
		if _, err := os.Lstat(addr); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: socket file after the winner closed: %v", round, err)
		}
	}
	for _, c := range cs {
		c.wait()
	}
	if got := dirNames(t, filepath.Dir(addr)); len(got) != 0 {
		t.Errorf("left in the socket's directory: %q", got)
	}
}

// TestListenLongPath listens at a path as long as a socket address allows,
// though the socket is first bound at a longer one beside it, and checks
// that the directory holds only the socket file while it serves and nothing
// after.
func TestListenLongPath(t *testing.T) {
	noLeaks(t)
	dir := filepath.Dir(sockPath(t))
	// Dial takes one byte less than bind, for the terminating zero.
	long := filepath.Join(dir, strings.Repeat("d", maxSockPath-1-len(dir)-1-len("/s")))
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	addr := filepath.Join(long, "s")
	srv := &Server{Handler: FileHandler(devNull(t), Meta{"id": "long"})}
	errc := serveAt(t, srv, addr)
	if got := dirNames(t, long); len(got) != 1 || got[0] != "s" {
		t.Errorf("the directory holds %q, want only the socket file", got)
	}
	if id, err := receiveID(addr); err != nil || id != "long" {
		t.Fatalf("Receive at a path of %d bytes: %q, %v", len(addr), id, err)
	}
	closeServer(t, srv, errc)
	if got := dirNames(t, long); len(got) != 0 {
		t.Errorf("the directory holds %q after Close, want nothing", got)
	}
	if ln, err := listenUnix(addr+"xx", 0o600, -1); err == nil {
		ln.Close()
		t.Error("listening at a path too long for a socket address succeeded")
	}
}

// dirNames lists the names in dir.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestCloseKeepsOthersFile checks that a listener's Close removes the file
// at its path only while that file is its own socket: not another
// server's, nor a symlink to its own socket file moved elsewhere.
func TestCloseKeepsOthersFile(t *testing.T) {
	noLeaks(t)
	addr := sockPath(t)
	moved := addr + ".moved"
	for _, replace := range []func(){
		func() { os.Remove(addr); staleSocket(t, addr) },
		func() { os.Rename(addr, moved); os.Symlink(moved, addr) },
	} {
		ln, err := listenUnix(addr, 0o600, -1)
		if err != nil {
			t.Fatal(err)
		}
		replace()
		var before unix.Stat_t
		if err := unix.Lstat(addr, &before); err != nil {
			t.Fatal(err)
		}
		ln.Close()
		var after unix.Stat_t
		if err := unix.Lstat(addr, &after); err != nil || after.Ino != before.Ino {
			t.Errorf("Close removed a file that was not its socket: %v", err)
		}
		os.Remove(addr)
		os.Remove(moved)
	}
}

// TestBusyServerKept checks that a live server whose backlog is full, so
// that a connection attempt fails with EAGAIN, counts as live: EADDRINUSE.
func TestBusyServerKept(t *testing.T) {
	checkFds(t)
	addr := sockPath(t)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	// Connections that are never accepted fill the backlog.
	for {
		c, err := net.Dial("unix", addr)
		if err != nil {
			if !errors.Is(err, syscall.EAGAIN) {
				t.Fatal(err)
			}
			break
		}
		defer c.Close()
	}
	if ln, err := listenUnix(addr, 0o600, -1); !errors.Is(err, syscall.EADDRINUSE) {
		if err == nil {
			ln.Close()
		}
		t.Fatalf("listening at a busy server's address: %v, want EADDRINUSE", err)
	}
}

// TestListenWhileOthersComeAndGo has listeners come and go at one address
// as fast as they can, so that the file one of them finds in its way is
// often gone by the time it looks at it. Whenever one succeeds, the path
// must name its socket file.
func TestListenWhileOthersComeAndGo(t *testing.T) {
	noLeaks(t)
	addr := sockPath(t)
	const workers = 3
	tries := sweep(150, 500)
	errs := make(chan error, workers)
	for range workers {
		go func() {
			for range tries {
				ln, err := listenUnix(addr, 0o600, -1)
				if errors.Is(err, syscall.EADDRINUSE) {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				fl := ln.(*fileListener)
				var st unix.Stat_t
				err = unix.Lstat(addr, &st)
				ln.Close()
				if err != nil || uint64(st.Ino) != fl.ino {
					errs <- fmt.Errorf("listening, but the path names another file or none (%v)", err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
