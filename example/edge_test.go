//go:build linux

package main

import (
	"os"
	"testing"
)

// TestSocketRemoved removes the hand-over socket file while the example
// serves under load (rm, as a careless cleanup does): the instance binds
// it again, and an instance started beside then takes over without a
// failed request.
func TestSocketRemoved(t *testing.T) {
	c := newCluster(t)
	c.startFirst()
	pid := c.servingPid(0)
	l := startLoad(t, c.addr, testLoad)
	l.waitPid(t, pid, answersPerInstance)
	if err := os.Remove(c.sock); err != nil {
		t.Fatal(err)
	}
	c.waitLog(pid, "bound it again")
	c.start()
	next := c.servingPid(pid)
	l.waitPid(t, next, answersPerInstance)
	l.check(t)
	c.stop(next)
}
