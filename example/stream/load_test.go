//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A load is a set of clients, each on a connection of its own, sending a
// line every min to max and checking every answer: the pid that answers, n
// counting from 1 without a gap or a repeat, and the line itself, in the
// order sent. Every line is written in two parts, a few milliseconds apart,
// so that restarts find lines half read.
type load struct {
	t        testing.TB
	min, max time.Duration
	epoch    time.Time
	stop     chan struct{}
	closing  atomic.Bool
	writers  sync.WaitGroup
	readers  sync.WaitGroup
	clients  []*client
	failures atomic.Int64

	// hold, while not nil, holds every holder client (one in 10) between
	// the two parts of its next line, until it is closed; holding counts
	// those that are.
	hold    atomic.Pointer[chan struct{}]
	holding atomic.Int64

	// news is closed and replaced at each answer, failure and line
	// held, for the waits.
	newsMu sync.Mutex
	news   chan struct{}
}

// notify wakes the waits up: something changed.
func (l *load) notify() {
	l.newsMu.Lock()
	defer l.newsMu.Unlock()
	close(l.news)
	l.news = make(chan struct{})
}

// next returns what the next change closes; a wait takes it before it
// looks.
func (l *load) next() <-chan struct{} {
	l.newsMu.Lock()
	defer l.newsMu.Unlock()
	return l.news
}

type client struct {
	id     int
	holder bool
	conn   net.Conn

	mu       sync.Mutex
	pending  []sentLine // sent, not answered yet, in order
	sent     int
	answered int
	pids     []int // the pids that answered, each once, in order
	lines    []lineTimes
	err      error
}

type sentLine struct {
	text string
	at   time.Duration // since the epoch, when its last part was written
	held bool
}

type lineTimes struct {
	sent, answered time.Duration
	held           bool // held across a restart by the test: not a latency
}

// startLoad connects n clients to addr and starts them; times are
// measured from epoch.
func startLoad(t testing.TB, epoch time.Time, addr string, n int, min, max time.Duration) *load {
	t.Helper()
	l := &load{t: t, min: min, max: max, epoch: epoch, stop: make(chan struct{}), news: make(chan struct{})}
	l.clients = make([]*client, n)
	var dials sync.WaitGroup
	errs := make(chan error, n)
	next := atomic.Int64{}
	for range 32 {
		dials.Add(1)
		go func() {
			defer dials.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					errs <- err
					return
				}
				l.clients[i] = &client{id: i, holder: i%10 == 0, conn: c}
			}
		}()
	}
	dials.Wait()
	t.Cleanup(l.finish)
	select {
	case err := <-errs:
		for _, c := range l.clients {
			if c != nil {
				c.conn.Close()
			}
		}
		t.Fatalf("connecting %d clients: %v", n, err)
	default:
	}
	for _, c := range l.clients {
		l.writers.Add(1)
		l.readers.Add(1)
		go c.write(l)
		go c.read(l)
	}
	return l
}

func (l *load) since() time.Duration { return time.Since(l.epoch) }

func (c *client) fail(l *load, format string, a ...any) {
	l.failures.Add(1)
	defer l.notify()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = fmt.Errorf("client %d: "+format, append([]any{c.id}, a...)...)
	}
}

// write sends lines until the load stops.
func (c *client) write(l *load) {
	defer l.writers.Done()
	rng := rand.New(rand.NewPCG(uint64(c.id), uint64(l.epoch.UnixNano())))
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for seq := 1; ; seq++ {
		timer.Reset(l.min + rand.N(l.max-l.min+1))
		select {
		case <-l.stop:
			return
		case <-timer.C:
		}
		text := fmt.Sprintf("client %d line %d", c.id, seq)
		k := 1 + rng.IntN(len(text)-1)
		if _, err := c.conn.Write([]byte(text[:k])); err != nil {
			c.fail(l, "writing: %v", err)
			return
		}
		held := false
		if h := l.hold.Load(); c.holder && h != nil {
			held = true
			l.holding.Add(1)
			l.notify()
			select {
			case <-*h:
			case <-l.stop:
			}
		} else {
			time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond) // a line in two parts
		}
		c.mu.Lock()
		c.pending = append(c.pending, sentLine{text: text, at: l.since(), held: held})
		c.sent++
		c.mu.Unlock()
		if _, err := c.conn.Write([]byte(text[k:] + "\n")); err != nil {
			c.fail(l, "writing: %v", err)
			return
		}
	}
}

// read checks the answers until the connection closes.
func (c *client) read(l *load) {
	defer l.readers.Done()
	r := bufio.NewReader(c.conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if !l.closing.Load() {
				c.fail(l, "connection closed: %v (after %d answers)", err, c.answered)
			}
			return
		}
		at := l.since()
		if err := c.check(line, at); err != nil {
			c.fail(l, "%v", err)
			return
		}
		l.notify()
	}
}

// check checks an answer against the oldest line not answered.
func (c *client) check(line string, at time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return fmt.Errorf("answer %q to no line", line)
	}
	p := c.pending[0]
	c.pending = c.pending[1:]
	c.answered++
	rest, ok := strings.CutPrefix(line, "pid=")
	i := strings.IndexByte(rest, ' ')
	if !ok || i < 0 {
		return fmt.Errorf("answer %q", line)
	}
	pid, err := strconv.Atoi(rest[:i])
	if want := fmt.Sprintf(" n=%d %s\n", c.answered, p.text); err != nil || rest[i:] != want {
		return fmt.Errorf("answer %q, want pid=<pid>%q", line, want)
	}
	if len(c.pids) == 0 || c.pids[len(c.pids)-1] != pid {
		c.pids = append(c.pids, pid)
	}
	c.lines = append(c.lines, lineTimes{sent: p.at, answered: at, held: p.held})
	return nil
}

// holdLines holds the holder clients in mid-line until release is called,
// and returns once each of them holds a line.
func (l *load) holdLines() (release func()) {
	l.t.Helper()
	h := make(chan struct{})
	l.holding.Store(0)
	l.hold.Store(&h)
	holders := int64(0)
	for _, c := range l.clients {
		if c.holder {
			holders++
		}
	}
	timeout := time.After(30 * time.Second)
	for {
		news := l.next()
		if l.holding.Load() >= holders {
			break
		}
		if l.failures.Load() > 0 {
			l.t.Fatalf("%d of %d clients hold a line: %v", l.holding.Load(), holders, l.firstErrors())
		}
		select {
		case <-news:
		case <-timeout:
			l.t.Fatalf("%d of %d clients hold a line", l.holding.Load(), holders)
		}
	}
	return func() {
		l.hold.Store(nil)
		close(h)
	}
}

// waitAnswered waits until every client has had an answer from pid, and
// from its last after the counts in since, if not nil.
func (l *load) waitAnswered(pid int, since []int) {
	l.t.Helper()
	timeout := time.After(60 * time.Second)
	for _, c := range l.clients {
		for {
			news := l.next()
			c.mu.Lock()
			ok := len(c.pids) > 0 && c.pids[len(c.pids)-1] == pid && (since == nil || c.answered > since[c.id])
			c.mu.Unlock()
			if ok {
				break
			}
			if l.failures.Load() > 0 {
				l.t.Fatalf("waiting for answers from pid %d: %v", pid, l.firstErrors())
			}
			select {
			case <-news:
			case <-timeout:
				l.t.Fatalf("client %d has no answer from pid %d", c.id, pid)
			}
		}
	}
}

// answeredCounts returns how many answers each client has had.
func (l *load) answeredCounts() []int {
	n := make([]int, len(l.clients))
	for i, c := range l.clients {
		c.mu.Lock()
		n[i] = c.answered
		c.mu.Unlock()
	}
	return n
}

func (l *load) firstErrors() []error {
	var errs []error
	for _, c := range l.clients {
		c.mu.Lock()
		if c.err != nil && len(errs) < 10 {
			errs = append(errs, c.err)
		}
		c.mu.Unlock()
	}
	return errs
}

// drain stops sending, waits until every line sent is answered, and closes
// the connections.
func (l *load) drain() {
	l.t.Helper()
	l.stopWriting()
	// Once over, the time is over for every client after.
	timeout, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, c := range l.clients {
	wait:
		for {
			news := l.next()
			c.mu.Lock()
			left, err := len(c.pending), c.err
			c.mu.Unlock()
			if left == 0 || err != nil {
				break
			}
			select {
			case <-news:
			case <-timeout.Done():
				c.fail(l, "%d lines never answered", left)
				break wait
			}
		}
	}
	l.finish()
}

// stopWriting stops the writers once they have written the line they are
// at.
func (l *load) stopWriting() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.writers.Wait()
}

// finish closes the connections and waits for the clients.
func (l *load) finish() {
	l.stopWriting()
	l.closing.Store(true)
	for _, c := range l.clients {
		c.conn.Close()
	}
	l.readers.Wait()
}

// loadResult sums up a load that has drained.
type loadResult struct {
	conns, failed, sent, answered, mismatched int
}

// check fails the test for every client that failed, lost a line, or was
// answered by other pids than want (nil: any), in order.
func (l *load) check(want []int) loadResult {
	l.t.Helper()
	var r loadResult
	r.conns = len(l.clients)
	for _, c := range l.clients {
		r.sent += c.sent
		r.answered += c.answered
		if c.err != nil || c.sent != c.answered {
			r.failed++
		}
		if want != nil && !slices.Equal(c.pids, want) {
			r.mismatched++
			if r.mismatched <= 5 {
				l.t.Errorf("client %d answered by %v, want %v", c.id, c.pids, want)
			}
		}
	}
	for _, err := range l.firstErrors() {
		l.t.Error(err)
	}
	if r.failed > 0 {
		l.t.Errorf("%d of %d connections failed or lost lines", r.failed, r.conns)
	}
	return r
}

// A window is a span of time since the load's epoch: a hand-over.
type window struct{ from, to time.Duration }

// latencies are the figures of the answers' delays: per connection and
// restart, the longest wait for an answer to a line in flight during the
// hand-over (gaps); and per line outside hand-overs (others).
type latencies struct {
	gaps, others []time.Duration
}

func (l *load) latencies(hand []window) latencies {
	var lat latencies
	for _, c := range l.clients {
		worst := make([]time.Duration, len(hand))
		for _, ln := range c.lines {
			if ln.held {
				continue
			}
			d := ln.answered - ln.sent
			during := false
			for i, w := range hand {
				if ln.sent <= w.to && ln.answered >= w.from {
					during = true
					worst[i] = max(worst[i], d)
				}
			}
			if !during {
				lat.others = append(lat.others, d)
			}
		}
		for _, d := range worst {
			if d > 0 {
				lat.gaps = append(lat.gaps, d)
			}
		}
	}
	slices.Sort(lat.gaps)
	slices.Sort(lat.others)
	return lat
}

// quantile returns the q-quantile of sorted ds, 0 if there is none.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}
