//go:build linux

package graceful

import (
	"io"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

var allocSink Meta

// TestAllocsPerDescriptor checks that a hand-over allocates nothing per
// descriptor in steady state: on the send path (ResponseWriter.Write with a
// Meta, which encodes with appendBinary) and on the receive path, beyond the
// map of each Meta that the callback decodes with MetaFrom.
func TestAllocsPerDescriptor(t *testing.T) {
	checkFds(t)
	a, b := socketPair(t)
	defer a.Close()
	defer b.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])

	meta := Meta{"id": "c123456", "peer": "203.0.113.7:10001"}
	// What a decoder cannot avoid: a map holding two pairs.
	k1, v1, k2, v2 := "id", "c123456", "peer", "203.0.113.7:10001"
	mapAllocs := testing.AllocsPerRun(100, func() {
		m := make(Meta, 2)
		m[k1], m[k2] = v1, v2
		allocSink = m // a decoded Meta outlives the call
	})

	var decode atomic.Bool
	received := 0
	done := make(chan error, 1)
	go func() {
		done <- ReceiveFrom(b, func(fd int, r io.Reader) error {
			received++
			unix.Close(fd)
			if decode.Load() {
				m, err := MetaFrom(r)
				if err != nil {
					return err
				}
				if len(m) != 2 {
					t.Errorf("decoded %v", m)
				}
			}
			return nil
		})
	}()

	const n = 40 * maxBatch
	// perFd writes n descriptors and flushes, which returns once the
	// receiver has taken them all, and counts the process's allocations.
	perFd := func(s *ResponseWriter, meta io.WriterTo) float64 {
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		for range n {
			if err := s.Write(p[0], meta); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.flush(); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&m1)
		return float64(m1.Mallocs-m0.Mallocs) / n
	}
	err := transfer(t.Context(), a, nil, DefaultTimeout, func(s *ResponseWriter) error {
		perFd(s, meta) // warm-up: buffers reach their size
		if got := perFd(s, meta); got >= 0.01 {
			t.Errorf("sending with Meta, receiving without decoding: %.3f allocations per descriptor, want 0", got)
		}
		if got := perFd(s, nil); got >= 0.01 {
			t.Errorf("without meta: %.3f allocations per descriptor, want 0", got)
		}
		decode.Store(true) // the receiver is waiting for the next frame
		if got := perFd(s, meta); got < mapAllocs || got >= mapAllocs+0.1 {
			t.Errorf("with MetaFrom in the callback: %.3f allocations per descriptor, want %v (the map's) and a share of a string", got, mapAllocs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if received != 4*n {
		t.Fatalf("received %d descriptors, want %d", received, 4*n)
	}
}
