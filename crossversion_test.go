//go:build linux

package graceful

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// olderVersion is a commit of this repository whose restart layer speaks the
// protocol before the successor's ready message could state its pid: an
// instance built from it and one built from the working tree take over from
// each other, both ways and by both paths.
const olderVersion = "8c2b5e364af4df5bcd4e42711d493448c013791c"

// versionMain is the program built against each version: it serves, restarts
// on SIGHUP, and ends when a successor took over.
const versionMain = `package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/graceful-go/graceful"
)

func main() {
	pid := os.Getpid()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	in, err := graceful.Start(graceful.Config{Socket: os.Args[1], ReadyTimeout: 20 * time.Second})
	if err != nil {
		fmt.Println(pid, "start failed:", err)
		os.Exit(1)
	}
	if _, err := in.Listen("tcp", "127.0.0.1:0"); err != nil {
		fmt.Println(pid, "listen failed:", err)
		os.Exit(1)
	}
	if err := in.Ready(); err != nil {
		fmt.Println(pid, "ready failed:", err)
		os.Exit(1)
	}
	fmt.Println(pid, "ready")
	for {
		select {
		case <-hup:
			fmt.Println(pid, "restart", in.Restart())
		case <-in.Done():
			fmt.Println(pid, "successor", successorPID(in))
			in.Stop()
			return
		}
	}
}

// successorPID is the successor's pid by the name each version gives it.
func successorPID(in any) int {
	switch in := in.(type) {
	case interface{ SuccessorPID() int }:
		return in.SuccessorPID()
	case interface{ Successor() int }:
		return in.Successor()
	}
	return 0
}
`

// buildVersion builds versionMain against the library at rev, "" for the
// working tree, into out.
func buildVersion(t *testing.T, rev, out string) {
	t.Helper()
	dir := t.TempDir()
	var cmd *exec.Cmd
	if rev != "" {
		cmd = exec.Command("sh", "-c", `git archive "$0" | tar -x -C "$1"`, rev, dir)
	} else {
		cmd = exec.Command("sh", "-c", `cp *.go go.mod go.sum "$0" && rm -f "$0"/*_test.go`, dir)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the sources of %q: %v\n%s", rev, err, b)
	}
	os.MkdirAll(filepath.Join(dir, "cmd", "v"), 0o755)
	os.WriteFile(filepath.Join(dir, "cmd", "v", "main.go"), []byte(versionMain), 0o644)
	cmd = exec.Command("go", "build", "-o", out, "./cmd/v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %q: %v\n%s", rev, err, b)
	}
}

// TestCrossVersionTakeOver runs only in its long form (GRACEFUL_LONG): it
// builds two programs.
func TestCrossVersionTakeOver(t *testing.T) {
	if !long() {
		t.Skip("skipped: it builds two programs; GRACEFUL_LONG=1 runs it")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	if err := exec.Command("git", "cat-file", "-e", olderVersion+"^{commit}").Run(); err != nil {
		t.Skipf("commit %s is not in this checkout's history", olderVersion)
	}
	bins := t.TempDir()
	older, newer := filepath.Join(bins, "older"), filepath.Join(bins, "newer")
	buildVersion(t, olderVersion, older)
	buildVersion(t, "", newer)
	for _, tc := range []struct {
		name       string
		pred, succ string
		restart    bool
	}{
		{"upgrade beside", older, newer, false},
		{"rollback beside", newer, older, false},
		{"upgrade by Restart", older, newer, true},
		{"rollback by Restart", newer, older, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "s")
			app := filepath.Join(dir, "app")
			install := func(bin string) {
				data, err := os.ReadFile(bin)
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(app+".new", data, 0o700)
				if err := os.Rename(app+".new", app); err != nil {
					t.Fatal(err)
				}
			}
			r, w, _ := os.Pipe()
			defer r.Close()
			start := func() *exec.Cmd {
				cmd := exec.Command(app, sock)
				cmd.Stdout, cmd.Stderr = w, w
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				return cmd
			}
			lines := make(chan string, 20)
			go func() {
				for s := bufio.NewScanner(r); s.Scan(); {
					lines <- s.Text()
				}
			}()
			var pids []int       // every process to end
			var cmds []*exec.Cmd // and those to reap
			defer func() {
				for _, pid := range pids {
					syscall.Kill(pid, syscall.SIGKILL)
				}
				for _, cmd := range cmds {
					cmd.Wait()
				}
			}()
			expect := func(format string, a ...any) string {
				t.Helper()
				want := fmt.Sprintf(format, a...)
				timeout := time.After(30 * time.Second)
				for {
					select {
					case l := <-lines:
						t.Logf("| %s", l)
						if strings.HasPrefix(l, want) {
							return l
						}
					case <-timeout:
						t.Fatalf("no line %q", want)
					}
				}
			}
			install(tc.pred)
			pred := start()
			cmds = append(cmds, pred)
			pids = append(pids, pred.Process.Pid)
			expect("%d ready", pred.Process.Pid)
			install(tc.succ)
			var succ int
			if tc.restart {
				pred.Process.Signal(syscall.SIGHUP)
				if l := expect("%d restart ", pred.Process.Pid); l != fmt.Sprintf("%d restart <nil>", pred.Process.Pid) {
					t.Fatalf("Restart: %s", l)
				}
			} else {
				cmd := start()
				cmds = append(cmds, cmd)
				succ = cmd.Process.Pid
				pids = append(pids, succ)
			}
			l := expect("%d successor ", pred.Process.Pid)
			fmt.Sscanf(l, "%d successor %d", new(int), &succ)
			pids = append(pids, succ)
			if !alive(succ) {
				t.Errorf("the successor %d is not running", succ)
			}
			w.Close()
		})
	}
}
