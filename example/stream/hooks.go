package main

import (
	"log"

	"github.com/graceful-go/graceful"
)

// faultBeforeReady is the tests' hook into an instance, called after Listen
// and before Ready; it returns what to call once the predecessor has passed
// every connection, or nil. faults.go, built only with -tags gracefulfaults
// as the tests build the program, sets it; the program as shipped has only
// this default and reads no fault variable.
var faultBeforeReady = func(*graceful.Instance, *log.Logger) func() { return nil }

// faultEnv makes a successor fail, for the tests only: "crash" exits right
// after it took over the sockets, before Ready; "fds" lowers its limit of
// open files before Ready so that the connections its predecessor passes
// cannot arrive (PassConns fails), and restores it afterwards. A first
// instance keeps the fault dormant for its successors.
const faultEnv = "GRACEFUL_STREAM_FAULT"
