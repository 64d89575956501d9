package graceful

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// lockHolder returns the pid of the process that holds a flock on f, from
// /proc/locks, or 0.
func lockHolder(f *os.File) int {
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0
	}
	locks, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer locks.Close()
	// "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF": the pid, then
	// the device and inode of the file.
	ino := ":" + strconv.FormatUint(st.Ino, 10)
	s := bufio.NewScanner(locks)
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) >= 6 && f[1] == "FLOCK" && strings.HasSuffix(f[5], ino) {
			pid, _ := strconv.Atoi(f[4])
			return pid
		}
	}
	return 0
}
