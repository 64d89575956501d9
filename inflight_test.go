//go:build linux

package graceful

import (
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestInFlightLimit hands a receiver that lags more descriptors than the
// sender's RLIMIT_NOFILE. The kernel refuses (ETOOMANYREFS) to let a user
// other than root have more descriptors in flight than that limit; the
// sender must wait for the receiver to catch up instead of failing.
func TestInFlightLimit(t *testing.T) {
	const n = 4 * maxBatch
	// Root is exempt from the limit: its sender runs as nobody.
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = nobodyCmd(t, strconv.Itoa(n))
	} else {
		cmd = exec.Command(os.Args[0], strconv.Itoa(n))
	}
	checkFds(t)
	a, b := socketPair(t)
	defer a.Close()
	f, err := b.File()
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{f} // descriptor 3
	c := startChildCmd(t, cmd, "send-many")
	f.Close()

	// The receiver lags: it takes the first descriptor only once the
	// sender has more in flight than its limit allows and waits, its
	// request to catch up queued behind the first frame. A sender that
	// fails instead exits.
	got := 0
	client := &Client{Allow: allowNobody}
	err = client.ReceiveFrom(t.Context(), a, func(fd int, _ io.Reader) error {
		for i := 0; got == 0 && i < 1000 && queued(t, a) < hdrLen; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		got++
		return unix.Close(fd)
	})
	if err != nil {
		t.Fatalf("receive: %v; sender's stderr:\n%s", err, c.stderr.String())
	}
	if got != n {
		t.Fatalf("received %d descriptors, want %d", got, n)
	}
	c.expect("sent")
	c.wait()
}

// queued returns the bytes waiting to be read on conn.
func queued(t *testing.T, conn *net.UnixConn) int {
	t.Helper()
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	}); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return n
}
