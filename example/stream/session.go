package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/graceful-go/graceful"
)

// Bounds of a session's state, which travels as meta (64 KiB at most).
const (
	maxLine  = 4 << 10  // a longer line ends the connection
	maxOut   = 16 << 10 // answers waiting to be written before more are made
	readSize = 4 << 10
)

var pid = os.Getpid()

// A session is one client connection and its state: the lines answered so
// far, the bytes read and not yet answered, and the answers not yet
// written. A goroutine serves it until the client goes or stop stops it;
// then the state is the hand-over's.
type session struct {
	conn net.Conn
	n    uint64 // lines answered
	in   []byte // read, not answered: at most one partial line, or more
	out  []byte // answers not yet written

	stopping atomic.Bool
	done     chan struct{} // closed when the goroutine returns
	ended    bool          // the connection is closed: nothing to hand over
}

// Meta keys of a passed session.
const (
	metaN   = "n"
	metaIn  = "in"
	metaOut = "out"
)

// passedSession makes the session of a connection passed by the
// predecessor from its meta.
func passedSession(c net.Conn, m graceful.Meta) (*session, error) {
	n, err := strconv.ParseUint(m[metaN], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("a passed connection's meta %s=%q: %w", metaN, m[metaN], err)
	}
	return &session{conn: c, n: n, in: []byte(m[metaIn]), out: []byte(m[metaOut])}, nil
}

// meta is the session's state for the successor.
func (s *session) meta() graceful.Meta {
	m := graceful.Meta{metaN: strconv.FormatUint(s.n, 10)}
	if len(s.in) > 0 {
		m[metaIn] = string(s.in)
	}
	if len(s.out) > 0 {
		m[metaOut] = string(s.out)
	}
	return m
}

// start starts the goroutine that serves the session; onEnd runs in it
// once the connection is closed.
func (s *session) start(onEnd func(...*session)) {
	s.stopping.Store(false)
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		err := s.serve()
		if s.stopping.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
			return // stopped: the state is whole, the connection open
		}
		s.conn.Close()
		s.ended = true
		onEnd(s)
	}()
}

// interrupt makes the session's goroutine return at once, whether it
// reads or writes; wait then waits for it.
func (s *session) interrupt() {
	s.stopping.Store(true)
	past := time.Unix(1, 0)
	s.conn.SetReadDeadline(past)
	s.conn.SetWriteDeadline(past)
}

// wait waits for the goroutine that interrupt stopped. It returns false if
// the connection was closed meanwhile. The deadlines are cleared again: the
// connection is ready for a successor, or for start.
func (s *session) wait() bool {
	<-s.done
	if s.ended {
		return false
	}
	s.conn.SetDeadline(time.Time{})
	return true
}

var errLineTooLong = errors.New("line too long")

// serve answers the lines of the connection until it ends, or a deadline
// stops it. Whatever it read or answered and did not write stays in the
// session.
func (s *session) serve() error {
	eof := false
	for {
		s.answer()
		if len(s.out) > 0 {
			n, err := s.conn.Write(s.out)
			s.out = s.out[n:]
			if err != nil {
				return err
			}
			continue
		}
		if eof {
			// The client sends no more, and has all its answers.
			return io.EOF
		}
		if len(s.in) >= maxLine {
			io.WriteString(s.conn, "error: line too long\n")
			return errLineTooLong
		}
		if cap(s.in)-len(s.in) < readSize/4 {
			// Room to read into, keeping what is left of a line.
			s.in = append(make([]byte, 0, len(s.in)+readSize), s.in...)
		}
		n, err := s.conn.Read(s.in[len(s.in):cap(s.in)])
		s.in = s.in[:len(s.in)+n]
		if err == io.EOF {
			eof = true
		} else if err != nil {
			return err
		}
	}
}

// answer turns complete lines read into answers, as many as maxOut allows.
func (s *session) answer() {
	for len(s.out) < maxOut {
		i := bytes.IndexByte(s.in, '\n')
		if i < 0 {
			return
		}
		line := bytes.TrimSuffix(s.in[:i], []byte("\r"))
		s.n++
		s.out = fmt.Appendf(s.out, "pid=%d n=%d %s\n", pid, s.n, line)
		s.in = s.in[i+1:]
	}
}
