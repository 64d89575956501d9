//go:build !darwin && !freebsd && !linux && !netbsd && !openbsd

package graceful

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"
)

// This file stands in for the Unix files where descriptors cannot be handed
// over: Windows, which has Unix sockets but no SCM_RIGHTS, the systems
// without Unix sockets (js/wasm, wasip1), and those whose own calls this
// library does not speak yet. Every entry point fails with errUnsupported
// before it needs a descriptor, so what follows only makes the package
// compile: nothing here is reached with a descriptor, and no descriptor
// is ever opened or closed.

var errUnsupported = fmt.Errorf("graceful: descriptors cannot be handed over on %s: %w", runtime.GOOS, errors.ErrUnsupported)

func supported() error { return errUnsupported }

const (
	maxBatch  = 253
	oobSpace  = 0
	msgCtrunc = 0
	selfExe   = ""
)

type msgConn struct{}

func (*msgConn) init(net.Conn) error                        { return errUnsupported }
func (*msgConn) recvmsg(_, _ []byte) (int, int, int, error) { return 0, 0, 0, errUnsupported }
func (*msgConn) sendmsg(_, _ []byte) error                  { return errUnsupported }

func putRights([]byte, []int32) int              { return 0 }
func appendRights(fds []int32, _ []byte) []int32 { return fds }
func closeFds([]int32)                           {}
func closeFd(int)                                {}
func inFlightLimit(error) bool                   { return false }

func dupObject(any) (int, error) { return -1, errUnsupported }
func closeOnExec(int)            {}
func socketID(int) string        { return "" }
func writable(string) error      { return errUnsupported }

const inheritEnv = "GRACEFUL_INHERIT"

func (*machine) startChild(string) (*os.Process, *net.UnixConn, error) {
	return nil, nil, errUnsupported
}

func fdSocket(int, string, func(int, bool) bool) (*os.File, error) {
	return nil, errUnsupported
}

func fdFile(int) (*os.File, error)       { return nil, errUnsupported }
func checkConn(int, int, net.Conn) error { return errUnsupported }

type connMaker struct{}

func (*connMaker) conn(fd int) (net.Conn, error) { return FdConn(fd) }
func (*connMaker) close()                        {}

func peerCred(int) (Peer, error) { return Peer{}, errUnsupported }
func processGone(int) bool       { return false }

type fileListener struct{ *net.UnixListener }

func listenUnix(string, fs.FileMode, int) (net.Listener, error) { return nil, errUnsupported }
func removeStaleSocket(string)                                  {}

type fileLock struct{}

func lockFile(string, time.Duration) (*fileLock, error) { return nil, errUnsupported }
func (*fileLock) unlock()                               {}
func (*fileLock) record(int) error                      { return errUnsupported }
func (*fileLock) recorded() int                         { return 0 }

type activation struct{}

func activated() (*activation, error)                { return nil, nil }
func (*activation) take(_, _, _ string) int          { return -1 }
func (*activation) close()                           {}
func (*activation) unclaimed() int                   { return 0 }
func socketMatches(int, string, string, string) bool { return false }
func notify(string) error                            { return nil }
func successorEnv() []string                         { return os.Environ() }

func dupHandedOn(*snapshot, *[]int) ([]string, error) { return nil, errUnsupported }

func execSuccessor(string, []string, int, []string, []int, *syscall.SysProcAttr) (int, *net.UnixConn, error) {
	return 0, nil, errUnsupported
}
