package main

// faultEnv makes a successor fail, for the tests only: "crash" exits right
// after it took over the sockets, before Ready; "fds" lowers its limit of
// open files before Ready so that the connections its predecessor passes
// cannot arrive (PassConns fails), and restores it afterwards. A first
// instance keeps the fault dormant for its successors.
const faultEnv = "GRACEFUL_STREAM_FAULT"
