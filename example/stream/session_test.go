package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/graceful-go/graceful"
)

// TestSessionStopMidWrite stops a session in the middle of writing an
// answer that its client does not read, sends its state through the Meta
// encoding as PassConns does, and lets a new session go on with it, as a
// successor would: the client gets every answer once, in order, with n
// counting on, and the partial line read before the stop is completed.
func TestSessionStopMidWrite(t *testing.T) {
	// net.Pipe has no buffer: a write waits for the reader.
	cl, sv := net.Pipe()
	defer cl.Close()
	s := &session{conn: sv}
	s.start(func(...*session) { t.Error("the session ended") })
	go io.WriteString(cl, "one\ntwo\nthr")
	var got bytes.Buffer
	if _, err := io.CopyN(&got, cl, 5); err != nil {
		t.Fatal(err)
	}
	s.interrupt()
	if !s.wait() {
		t.Fatal("the session ended")
	}
	if len(s.out) == 0 || string(s.in) != "thr" {
		t.Fatalf("state after the stop: in %q, out %q", s.in, s.out)
	}
	var b bytes.Buffer
	if _, err := s.meta().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	m, err := graceful.MetaFrom(&b)
	if err != nil {
		t.Fatal(err)
	}
	next, err := passedSession(sv, m)
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	next.start(func(...*session) { close(ended) })
	go io.WriteString(cl, "ee\n")
	r := bufio.NewReader(cl)
	for range 3 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got.WriteString(line)
	}
	want := fmt.Sprintf("pid=%d n=1 one\npid=%[1]d n=2 two\npid=%[1]d n=3 three\n", pid)
	if got.String() != want {
		t.Errorf("answers %q, want %q", got.String(), want)
	}
	cl.Close()
	<-ended
}

// TestSessionLines checks the protocol's edges: CRLF ends a line as LF
// does, and a line longer than maxLine ends the connection with an error.
func TestSessionLines(t *testing.T) {
	cl, sv := net.Pipe()
	defer cl.Close()
	s := &session{conn: sv}
	ended := make(chan struct{})
	s.start(func(...*session) { close(ended) })
	go func() {
		io.WriteString(cl, "a\r\n")
		io.WriteString(cl, strings.Repeat("x", maxLine+1))
	}()
	r := bufio.NewReader(cl)
	for _, want := range []string{fmt.Sprintf("pid=%d n=1 a\n", pid), "error: line too long\n"} {
		if line, err := r.ReadString('\n'); line != want || err != nil {
			t.Fatalf("answer %q, %v; want %q", line, err, want)
		}
	}
	<-ended
	if _, err := r.ReadString('\n'); err != io.EOF {
		t.Errorf("after a line too long: %v, want EOF", err)
	}
}
