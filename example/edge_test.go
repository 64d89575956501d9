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
	c.StartFirst()
	pid := c.ServingPid(0)
	l := startLoad(t, c.Addr, testLoad)
	l.waitPid(t, pid, answersPerInstance)
	if err := os.Remove(c.Sock); err != nil {
		t.Fatal(err)
	}
	c.WaitContains(0, pid, "bound it again")
	c.Start()
	next := c.ServingPid(pid)
	l.waitPid(t, next, answersPerInstance)
	l.check(t)
	c.Stop(next)
}
