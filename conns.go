package graceful

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// This file moves live connections from an instance to its successor, on
// the connection of their hand-over, once the successor is ready.

// A PassedConn is a live connection handed to the successor with its
// state.
type PassedConn struct {
	Conn net.Conn
	// Meta is the connection's state: whatever the successor needs to go
	// on where this instance stopped, such as bytes read but not yet
	// processed. It travels with the descriptor.
	Meta Meta
}

// PassConns hands conns to the successor, which takes them with
// [Instance.AcceptConn]. It closes this instance's descriptors once the
// successor has them all. Call it once Done is closed for a successor that
// is ready, as often as needed; without one (Done closed by Stop) it fails
// with ErrInstanceState. Each call is one transfer, 253 descriptors
// per system call. Stop tells the successor that no more come.
//
// Stop using each connection before the call: no read or write in progress
// or to come. To interrupt a read, set a past deadline, then clear it. Put
// what was read and not processed into the meta. PassConns never shuts a
// connection down: the peer sees nothing.
//
// It is all or nothing. After a failure, every connection is still the
// caller's, open, and the successor holds none; a failure ends the
// passing. If the successor dies meanwhile, PassConns starts another with
// a copy of the sockets, as Restart would, and passes to it. PassConns
// blocks until the successor has acknowledged, Config.Timeout at most for
// each step; Stop calls it off.
func (in *Instance) PassConns(conns []PassedConn) error {
	// The descriptors are borrowed, not duplicated: the connections are
	// this call's, so nothing closes them meanwhile.
	fds := make([]int, len(conns))
	for i, c := range conns {
		rc, err := rawConn(c.Conn)
		if err != nil {
			return fmt.Errorf("graceful: PassConns: %w", err)
		}
		fds[i] = -1
		if err := rc.Control(func(fd uintptr) { fds[i] = int(fd) }); err != nil {
			return fmt.Errorf("graceful: PassConns: %w", err)
		}
	}
	for {
		err, retry := in.passConns(conns, fds)
		if retry {
			continue // the successor died: again, to its replacement
		}
		if err != nil {
			return fmt.Errorf("graceful: passing %d connections: %w", len(conns), err)
		}
		for _, c := range conns {
			c.Conn.Close()
		}
		return nil
	}
}

// passConns passes conns, whose descriptors are fds, to the successor. It
// reports whether to try again, with a replacement of a successor that
// died.
func (in *Instance) passConns(conns []PassedConn, fds []int) (err error, retry bool) {
	grant := make(chan passGrant, 1)
	in.call(func(m *machine) { m.passRequest(grant) })
	g := <-grant
	if g.err != nil {
		return g.err, false
	}
	// Stop calls it off (the context), but not once the successor has
	// acknowledged: the commit follows at once.
	err = transfer(in.ctx, g.conn, nil, in.timeout, func(s *ResponseWriter) error {
		for i, c := range conns {
			if err := s.Write(fds[i], c.Meta); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		// The successor keeps them only once told so: until then a
		// failure here leaves them this instance's alone.
		if err = writeReply(g.conn, in.deadline(), statusOK, ""); err != nil {
			err = ioError("committing", err)
		}
	}
	died := err != nil && in.ctx.Err() == nil && in.successorDied(g.pid, err)
	in.call(func(m *machine) { retry = m.passEnded(err, died) })
	return err, retry
}

// passGrant is the loop's answer to PassConns: the connection to the
// successor to pass on, or why not.
type passGrant struct {
	conn *net.UnixConn
	pid  int
	err  error
}

// passRequest lets one PassConns at a time pass connections.
func (m *machine) passRequest(grant chan passGrant) {
	switch {
	case m.phase >= stopping:
		grant <- passGrant{err: fmt.Errorf("graceful: PassConns: %w: stopped", net.ErrClosed)}
	case m.reviving != nil:
		m.passes = append(m.passes, grant) // until the replacement is ready
	case m.passErr != nil:
		grant <- passGrant{err: fmt.Errorf("graceful: PassConns: an earlier one failed: %w", m.passErr)}
	case m.succ == nil:
		grant <- passGrant{err: fmt.Errorf("graceful: PassConns without a successor: %w", ErrInstanceState)}
	case m.passing:
		m.passes = append(m.passes, grant)
	default:
		m.passing = true
		grant <- passGrant{conn: m.succ.conn, pid: m.succ.pid}
	}
}

// passEnded ends a PassConns, and reports whether it is to try again. A
// successor that died is replaced, if it can be. Another failure ends the
// passing: the successor closes what it got, told so in words where the
// connection still carries them (a silent close, once this process has
// ended, would read as its death, which leaves the connections to the
// successor).
func (m *machine) passEnded(err error, died bool) bool {
	m.passing = false
	retry := false
	switch {
	case err == nil:
	case died && m.revive():
		retry = true
	case m.passErr == nil:
		m.passErr = err
		if m.succ != nil {
			refuse(m.succ.conn, "the predecessor keeps them")
			m.succ.conn.Close()
		}
	}
	if len(m.passes) > 0 && m.phase < stopping && m.reviving == nil {
		grant := m.passes[0]
		m.passes = m.passes[1:]
		m.passRequest(grant)
	}
	m.settleStop()
	return retry
}

// AcceptConn waits for the next live connection that the predecessor
// passes with PassConns, and returns it with its meta; the connection is
// the caller's. Connections come after Ready (AcceptConn waits until
// then), in the order they were passed, each transfer once complete. AcceptConn returns io.EOF once the
// predecessor passes no more (at once for a first instance), and
// net.ErrClosed after Stop, which closes those not taken.
func (in *Instance) AcceptConn() (net.Conn, Meta, error) {
	for {
		p, err := in.incoming.next(in.ctx)
		if err != nil {
			return nil, nil, err
		}
		// The descriptor becomes a net.Conn here, on the caller's
		// goroutine: no switch to another for each connection.
		c, err := in.incoming.maker.conn(p.fd)
		if err != nil {
			in.logf("a passed connection: %v", err)
			continue
		}
		return c, p.meta, nil
	}
}

// incoming hands the connections passed to this instance to AcceptConn. A
// complete transfer's descriptors wait in the queue, which the receiving
// goroutine fills once it is empty and AcceptConn's callers empty.
type incoming struct {
	mu    sync.Mutex
	queue []passedFd    // delivered, not taken yet, in order
	avail chan struct{} // a token while the queue may hold some
	taken chan struct{} // a token once the queue has emptied
	maker connMaker
	done  chan struct{} // closed when no more connections come
	once  sync.Once
}

func (p *incoming) init() {
	p.avail = make(chan struct{}, 1)
	p.taken = make(chan struct{}, 1)
	p.done = make(chan struct{})
}

func (p *incoming) finish() {
	p.once.Do(func() { close(p.done) })
}

// token puts a token in ch unless it holds one.
func token(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// next takes the first descriptor of the queue, waiting for one: io.EOF
// once none will come, net.ErrClosed after Stop (ctx).
func (p *incoming) next(ctx context.Context) (passedFd, error) {
	for {
		if fd, ok := p.pop(); ok {
			return fd, nil
		}
		select {
		case <-p.avail:
		case <-p.done:
			// What was delivered before is in the queue.
			if fd, ok := p.pop(); ok {
				return fd, nil
			}
			p.maker.close()
			if ctx.Err() != nil {
				return passedFd{}, net.ErrClosed
			}
			return passedFd{}, io.EOF
		}
	}
}

// pop takes the first descriptor of the queue, if any.
func (p *incoming) pop() (passedFd, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) == 0 {
		return passedFd{}, false
	}
	fd := p.queue[0]
	p.queue[0] = passedFd{}
	p.queue = p.queue[1:]
	if len(p.queue) > 0 {
		token(p.avail) // for another caller
	} else {
		p.queue = nil
		token(p.taken)
	}
	return fd, true
}

// deliver queues a transfer's descriptors for AcceptConn, and waits until
// they are all taken: the next transfer is received only then. After Stop
// (ctx) it fails with net.ErrClosed.
func (p *incoming) deliver(ctx context.Context, batch []passedFd) error {
	if len(batch) == 0 {
		return nil
	}
	p.mu.Lock()
	p.queue = append(p.queue, batch...)
	p.mu.Unlock()
	token(p.avail)
	for {
		select {
		case <-p.taken:
		case <-ctx.Done():
			return net.ErrClosed
		}
		p.mu.Lock()
		empty := len(p.queue) == 0
		p.mu.Unlock()
		if empty {
			return nil
		}
	}
}

// drop closes what was delivered and not taken, once no more come.
func (p *incoming) drop() {
	p.mu.Lock()
	for _, fd := range p.queue {
		closeFd(fd.fd)
	}
	p.queue = nil
	p.mu.Unlock()
	p.maker.close()
}

// receivePassed receives, once the predecessor has committed, the
// connections it passes, until it closes the connection or this instance
// stops.
func (in *Instance) receivePassed(p *predecessor) {
	client := &Client{Timeout: -1}
	for {
		batch, err := in.receiveConns(client, p)
		if err == nil {
			err = in.incoming.deliver(in.ctx, batch)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && in.ctx.Err() == nil {
				in.logf("taking passed connections: %v", err)
			}
			return
		}
	}
}

// receiveConns receives one transfer of passed connections. Its descriptors
// are delivered only once the transfer is complete: before that, the
// predecessor keeps serving them if the transfer fails.
func (in *Instance) receiveConns(client *Client, p *predecessor) (batch []passedFd, err error) {
	defer func() {
		if err != nil {
			for _, p := range batch {
				closeFd(p.fd)
			}
		}
	}()
	_, err = client.receive(in.ctx, p.conn, func(fd int, meta io.Reader) error {
		m, err := MetaFrom(meta)
		batch = append(batch, passedFd{fd, m})
		return err
	}, false)
	if errors.Is(err, errSenderRefused) {
		return batch, errPassKept
	}
	if err != nil {
		return batch, err
	}
	// The predecessor commits the batch, or keeps it: a predecessor that
	// went away without a word has died, and its copies with it.
	stop := context.AfterFunc(in.ctx, func() { p.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	status, _, err := in.readAnswer(p, "waiting for the commit of passed connections")
	switch {
	case errors.Is(err, errPredDied):
		err = nil
	case err == nil && status == statusRefused:
		err = errPassKept
	case err == nil && status != statusOK:
		err = fmt.Errorf("%w: status %d for passed connections", ErrProtocol, status)
	}
	return batch, err
}

// errPassKept is a PassConns that failed: the predecessor keeps the
// connections.
var errPassKept = errors.New("graceful: the predecessor failed to pass connections, and keeps them")

type passedFd struct {
	fd   int
	meta Meta
}
