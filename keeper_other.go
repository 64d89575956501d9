//go:build !linux

package graceful

import (
	"errors"
	"fmt"
	"os"
)

// keeping reports whether Start runs the keeper in this process: only
// Linux has one (its child subreaper).
func keeping(cfg Config) bool { return cfg.KeepPID }

func keep(Config) error {
	return fmt.Errorf("graceful: Config.KeepPID: %w", errors.ErrUnsupported)
}

func tellKeeper(*snapshot) error { return nil }

func tellKeeperExit(int, *os.ProcessState) bool { return false }
