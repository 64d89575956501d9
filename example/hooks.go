package main

import (
	"context"
	"log"
	"net/http"

	"github.com/graceful-go/graceful"
)

// The tests' hooks into the example. faults.go, built only with -tags
// gracefulfaults as the tests build the example, sets them from the
// variables below; the example as shipped has only these defaults and
// reads neither variable.
var (
	// takingOver is called after Start, before Listen.
	takingOver = func(*graceful.Instance, *log.Logger) {}
	// drain drains the HTTP server once the instance is done.
	drain = func(d *graceful.Drainer, _ *http.Server, ctx context.Context) error { return d.Drain(ctx) }
)

// faultEnv names a file whose content makes the next instance that takes
// over fail before it listens: "crash" exits with status 3, "hang" sleeps
// until it is killed, "refuse" stops its instance (the predecessor serves
// on) and exits with status 1. That instance empties the file, so that one
// instance fails, whether a test starts it or an instance does on SIGHUP.
const faultEnv = "GRACEFUL_EXAMPLE_FAULT"

// drainEnv set to "shutdown" drains with http.Server.Shutdown right after the
// hand-over, the common pattern that fails requests, for the benchmark that
// compares it with graceful.Drainer.
const drainEnv = "GRACEFUL_EXAMPLE_DRAIN"
