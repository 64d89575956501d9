package graceful

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEExamples keeps the README's Go snippets identical to the
// runnable examples, so the README's code compiles and runs.
func TestREADMEExamples(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	examples, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	code := "\n" + normalize(string(examples))
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) < 3 {
		t.Fatalf("README has %d Go snippets, want at least 3", len(blocks))
	}
	for _, b := range blocks {
		if !strings.Contains(code, "\n"+normalize(b[1])) {
			t.Errorf("README snippet not found in example_test.go:\n%s", b[1])
		}
	}
}

// normalize drops indentation and blank lines.
func normalize(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n") + "\n"
}
