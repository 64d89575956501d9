package main

import (
	"context"
	"log"
	"net/http"

	"github.com/graceful-go/graceful"
)

// The tests' hooks into the example. faults.go, built only with -tags
// gracefulfaults as the tests build the example, sets them from the
// variables in hooks_linux.go (the tests run on Linux); the example as
// shipped has only these defaults and reads neither variable.
var (
	// takingOver is called after Start, before Listen.
	takingOver = func(*graceful.Instance, *log.Logger) {}
	// drain drains the HTTP server once the instance is done.
	drain = func(d *graceful.Drainer, _ *http.Server, ctx context.Context) error { return d.Drain(ctx) }
)
