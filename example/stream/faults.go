//go:build gracefulfaults && linux

package main

import (
	"errors"
	"log"
	"os"
	"syscall"

	"github.com/graceful-go/graceful"
)

func init() {
	faultBeforeReady = func(inst *graceful.Instance, logger *log.Logger) func() {
		if !inst.Inherited() {
			return nil
		}
		switch os.Getenv(faultEnv) {
		case "crash":
			logger.Print("fault: crashing before Ready")
			os.Exit(3)
		case "fds":
			return limitFds(logger)
		}
		return nil
	}
}

// limitFds lowers the soft limit of open files to a few more than are open,
// for the fault "fds", and returns what restores it.
func limitFds(logger *log.Logger) func() {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		logger.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		logger.Fatal(err)
	}
	// Room for the pid file that Ready writes, not for passed connections.
	low := old
	low.Cur = uint64(len(fds) + 2)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		logger.Fatal(err)
	}
	logger.Printf("fault: at most %d open files until the predecessor is done", low.Cur)
	return func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			logger.Print(errors.Join(errors.New("restoring the limit of open files"), err))
		}
	}
}
