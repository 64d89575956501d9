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
// [Instance.AcceptConn], and closes this instance's descriptors once the
// successor has acknowledged them all. It may be called once Done is closed
// for a successor that is ready, as often as needed; each call is one
// transfer, 253 descriptors per system call. Stop tells the successor that
// no more come.
//
// The application stops using each connection before the call: no read or
// write in progress or to come (set a past read deadline to interrupt a
// read, then clear it), and whatever it read and did not process goes into
// the meta. PassConns never shuts a connection down: the successor's
// descriptor keeps it open, and the peer sees nothing. The connections are
// PassConns's during the call; after a failure they are all still the
// caller's, open, and the successor holds none (it closes any it got), so
// the application may serve them on: the successor keeps a transfer only
// once this instance, which has read its acknowledgement, tells it so. A
// failure ends the passing: the connection to the successor is closed, and
// a later PassConns fails too. PassConns blocks until the successor has
// acknowledged, at most Config.Timeout for each step; Stop calls it off.
func (in *Instance) PassConns(conns []PassedConn) error {
	in.mu.Lock()
	succ := in.succ
	in.mu.Unlock()
	if succ == nil {
		return fmt.Errorf("graceful: PassConns without a successor: %w", ErrInstanceState)
	}
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
	in.passing.send.Lock()
	defer in.passing.send.Unlock()
	// Stop calls it off (the context), but not once the successor has
	// acknowledged: the commit follows at once.
	err := transfer(in.passing.ctx, succ.conn, nil, in.timeout, func(s *sender) error {
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
		if err = sendAnswer(succ.conn, in.deadline(), statusOK, ""); err != nil {
			err = ioError("committing", err)
		}
	}
	if err != nil {
		// The successor closes what it got, told so in words where the
		// connection still carries them: a silent close, once this
		// process has ended, would read as its death, which leaves the
		// connections to the successor.
		refuse(succ.conn, "the predecessor keeps them")
		succ.conn.Close()
		return fmt.Errorf("graceful: passing %d connections: %w", len(conns), err)
	}
	for _, c := range conns {
		c.Conn.Close()
	}
	return nil
}

// AcceptConn waits for the next live connection that the predecessor passes
// with PassConns, and returns it with its meta; the connection is the
// caller's. It returns io.EOF once the predecessor will pass no more (it
// stopped, or exited), as soon as Ready has run for a first instance, and
// net.ErrClosed
// after Stop. Connections arrive only after Ready, in the order they were
// passed, each transfer once it is complete; those not taken when this
// instance stops are closed.
func (in *Instance) AcceptConn() (net.Conn, Meta, error) {
	for {
		p, err := in.passing.next()
		if err != nil {
			return nil, nil, err
		}
		// The descriptor becomes a net.Conn here, on the caller's
		// goroutine: no switch to another for each connection.
		c, err := in.passing.maker.conn(p.fd)
		if err != nil {
			in.logf("a passed connection: %v", err)
			continue
		}
		return c, p.meta, nil
	}
}

// passing is the state of an instance's passed connections.
type passing struct {
	send     sync.Mutex // one PassConns at a time
	mu       sync.Mutex
	queue    []passedFd    // delivered, not taken yet, in order
	avail    chan struct{} // a token while the queue may hold some
	taken    chan struct{} // a token once the queue has emptied
	maker    connMaker
	done     chan struct{} // closed when no more connections come
	doneOnce sync.Once
	ctx      context.Context // canceled by Stop
	cancel   context.CancelFunc
	wg       sync.WaitGroup // the goroutine that receives them
}

func (p *passing) init() {
	p.avail = make(chan struct{}, 1)
	p.taken = make(chan struct{}, 1)
	p.done = make(chan struct{})
	p.ctx, p.cancel = context.WithCancel(context.Background())
}

func (p *passing) finish() {
	p.doneOnce.Do(func() { close(p.done) })
}

// token puts a token in ch unless it holds one.
func token(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// next takes the first descriptor of the queue, waiting for one: io.EOF
// once none will come, net.ErrClosed after Stop.
func (p *passing) next() (passedFd, error) {
	for {
		p.mu.Lock()
		if len(p.queue) > 0 {
			fd := p.queue[0]
			p.queue[0] = passedFd{}
			p.queue = p.queue[1:]
			more := len(p.queue) > 0
			if !more {
				p.queue = nil
			}
			p.mu.Unlock()
			if more {
				token(p.avail) // for another caller
			} else {
				token(p.taken)
			}
			return fd, nil
		}
		p.mu.Unlock()
		select {
		case <-p.avail:
		case <-p.done:
			// What was delivered before is in the queue.
			p.mu.Lock()
			empty := len(p.queue) == 0
			p.mu.Unlock()
			if !empty {
				continue
			}
			p.maker.close()
			if p.ctx.Err() != nil {
				return passedFd{}, net.ErrClosed
			}
			return passedFd{}, io.EOF
		}
	}
}

// stopPassed ends the reception of passed connections, closing what came
// and was not accepted: Stop calls it.
func (in *Instance) stopPassed() {
	in.passing.cancel()
	in.passing.finish()
	in.passing.wg.Wait()
	in.passing.mu.Lock()
	for _, p := range in.passing.queue {
		closeFd(p.fd)
	}
	in.passing.queue = nil
	in.passing.mu.Unlock()
	in.passing.maker.close()
}

// afterPredecessor receives, once the predecessor has committed, the
// connections it passes, until it closes the connection.
func (in *Instance) afterPredecessor(pred *net.UnixConn) {
	if pred == nil {
		in.passing.finish()
		return
	}
	in.passing.wg.Add(1)
	go func() {
		defer in.passing.wg.Done()
		defer in.passing.finish()
		defer pred.Close()
		client := &Client{Timeout: -1}
		for {
			batch, err := in.receiveConns(client, pred)
			if err == nil {
				err = in.deliver(batch)
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					in.logf("taking passed connections: %v", err)
				}
				return
			}
		}
	}()
}

// receiveConns receives one transfer of passed connections. Its descriptors
// are delivered only once the transfer is complete: before that, the
// predecessor keeps serving them if the transfer fails.
func (in *Instance) receiveConns(client *Client, pred *net.UnixConn) (batch []passedFd, err error) {
	defer func() {
		if err != nil {
			for _, p := range batch {
				closeFd(p.fd)
			}
		}
	}()
	_, err = client.receive(in.passing.ctx, pred, func(fd int, meta io.Reader) error {
		m, err := MetaFrom(meta)
		batch = append(batch, passedFd{fd, m})
		return err
	}, false)
	if err != nil {
		return batch, err
	}
	// The predecessor commits the batch, or keeps it: a predecessor that
	// went away without a word has died, and its copies with it.
	stop := context.AfterFunc(in.passing.ctx, func() { pred.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	status, _, err := in.readAnswer(pred, "waiting for the commit of passed connections")
	switch {
	case errors.Is(err, errPredDied):
		err = nil
	case err == nil && status == statusRefused:
		err = errPassKept
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

// deliver queues the descriptors of a committed transfer for AcceptConn,
// in order, and waits until they are all taken; after Stop, stopPassed
// closes those left.
func (in *Instance) deliver(batch []passedFd) error {
	p := &in.passing
	p.mu.Lock()
	if len(p.queue) == 0 {
		p.queue = batch
	} else {
		p.queue = append(p.queue, batch...)
	}
	p.mu.Unlock()
	token(p.avail)
	for {
		p.mu.Lock()
		empty := len(p.queue) == 0
		p.mu.Unlock()
		if empty {
			return nil
		}
		select {
		case <-p.taken:
		case <-p.ctx.Done():
			return net.ErrClosed
		}
	}
}
