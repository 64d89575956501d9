package main

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
