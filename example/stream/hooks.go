package main

import (
	"log"

	"github.com/graceful-go/graceful"
)

// faultBeforeReady is the tests' hook into an instance, called after Listen
// and before Ready; it returns what to call once the predecessor has passed
// every connection, or nil. faults.go, built only with -tags gracefulfaults
// as the tests build the program, sets it from the variable in
// hooks_linux.go (the tests run on Linux); the program as shipped has only
// this default and reads no fault variable.
var faultBeforeReady = func(*graceful.Instance, *log.Logger) func() { return nil }
