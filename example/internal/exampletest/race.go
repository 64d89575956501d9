//go:build race

package exampletest

// Race reports whether the tests run with the race detector: the program
// is then built with it too.
const Race = true
