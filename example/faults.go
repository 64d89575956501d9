//go:build gracefulfaults && linux

package main

import (
	"context"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/graceful-go/graceful"
)

// The faults and the naive drain that hooks.go describes; the tests build
// the example with this file.
func init() {
	takingOver = func(inst *graceful.Instance, logger *log.Logger) {
		path := os.Getenv(faultEnv)
		fault, _ := os.ReadFile(path)
		if len(fault) == 0 || !inst.Inherited() {
			return
		}
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			logger.Fatal(err)
		}
		logger.Printf("fault: %s", fault)
		switch string(fault) {
		case "crash":
			os.Exit(3)
		case "hang":
			time.Sleep(time.Hour)
		case "refuse":
			inst.Stop()
			logger.Fatal("exited: refused to take over")
		}
	}
	if os.Getenv(drainEnv) == "shutdown" {
		drain = func(_ *graceful.Drainer, hs *http.Server, ctx context.Context) error {
			return hs.Shutdown(ctx)
		}
	}
}
