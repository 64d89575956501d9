// Package graceful restarts servers without refusing a connection or
// failing a request. A new instance takes over the old one's listening
// sockets, and its live connections too, while the binary is replaced.
//
// An instance's life:
//
//   - [Start] takes over from the instance that serves at Config.Socket, if
//     one does. It receives that instance's sockets. Otherwise this is the
//     first instance.
//   - [Instance.Listen] returns the predecessor's listener for an address,
//     or systemd's, or a new one. Both instances now accept on it.
//   - [Instance.Ready] commits: the predecessor stops serving, this
//     instance serves. If Ready fails, the predecessor serves on.
//   - [Instance.Restart] starts a successor of this program, on SIGHUP say.
//     A successor started any other way (a deploy) takes over the same way.
//   - [Instance.Done] closes when a successor has taken over. The instance
//     then drains: [Drainer.Drain] finishes the requests under way, and
//     [Instance.PassConns] hands live connections on.
//   - [Instance.Stop] ends the instance without a successor.
//
// A successor that crashes, hangs or refuses before its Ready changes
// nothing: the old instance serves on, accepting all along.
//
// In a container, the program is pid 1: there Start keeps that process
// for as long as the service runs. It forwards signals, reaps every
// child, and replaces an instance that crashes, with its sockets
// (Config.KeepPID turns this on elsewhere).
//
// # The mechanism
//
// Underneath, descriptors travel over a Unix socket (SCM_RIGHTS). A
// [Server] sends what its [Handler] writes to each process that connects;
// [Receive] dials it and calls a callback once per descriptor, with the
// bytes the sender attached ([Meta] encodes key-value pairs). [FdListener],
// [FdConn] and [FdPacketConn] turn a descriptor back into a net object.
// [SendTo] and [ReceiveFrom] do the same on a connection of one's own.
//
// A sender keeps its descriptors; the receiver owns the ones it gets from
// the moment its callback is called. The library closes every descriptor
// it received and did not hand on, on every path. Both ends check the
// peer's credentials: by default only the same user, or root, is trusted.
//
// docs/PROTOCOL.md specifies what two instances exchange;
// docs/GUARANTEES.md, docs/PERFORMANCE.md and docs/PLATFORMS.md say what
// holds, how fast, and where. Descriptors are handed over on Linux, macOS
// and the BSDs. Elsewhere the package compiles, and its entry points fail
// with an error matching [errors.ErrUnsupported].
package graceful
