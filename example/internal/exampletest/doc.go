// Package exampletest is the harness of the examples' tests
// (example/main_test.go, example/stream/main_test.go): it builds the
// program with its test hooks, runs a cluster of its instances (the
// succession that shares one set of flags) with their common log, and
// sizes the tests short or long. Only those tests import it.
package exampletest
