package graceful

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// Peer is the process at the other end of a connection, as the kernel
// recorded it when the connection was made: its effective user and group.
// The kernel tells it by SO_PEERCRED on Linux and OpenBSD, LOCAL_PEERCRED
// on macOS and FreeBSD, and LOCAL_PEEREID on NetBSD. PID is 0 where the
// system did not record it (FreeBSD before 13). On macOS it is the last
// process that used the other end (LOCAL_PEERPID). An Allow function of a
// [Server] or [Client] gets it. A nil Allow admits a Peer of this
// process's user, or root, and refuses any other.
type Peer struct {
	PID, UID, GID int
}

// sameUser is the policy of a nil Allow: it admits a peer of this
// process's user, or root, and refuses any other.
func sameUser(p Peer) error {
	if p.UID == 0 || p.UID == os.Geteuid() {
		return nil
	}
	return fmt.Errorf("%w: uid %d (pid %d) is not uid %d", ErrPeerNotAllowed, p.UID, p.PID, os.Geteuid())
}

// checkPeer applies allow, or sameUser if nil, to the peer of conn.
func checkPeer(conn net.Conn, allow func(Peer) error) error {
	if err := supported(); err != nil {
		return err
	}
	if allow == nil {
		allow = sameUser
	}
	rc, err := rawConn(conn)
	if err != nil {
		return err
	}
	var p Peer
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		p, cerr = peerCred(int(fd))
	}); err != nil {
		return fmt.Errorf("graceful: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("graceful: peer credentials: %w", cerr)
	}
	if err := allow(p); err != nil {
		if !errors.Is(err, ErrPeerNotAllowed) {
			err = fmt.Errorf("%w: %w", ErrPeerNotAllowed, err)
		}
		return err
	}
	return nil
}

// peerPIDOf returns the pid of the process at the other end of conn, 0 if
// unknown.
func peerPIDOf(conn net.Conn) int {
	pid := 0
	checkPeer(conn, func(p Peer) error {
		pid = p.PID
		return nil
	})
	return pid
}
