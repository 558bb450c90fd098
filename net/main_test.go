package net

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The cross-process round-trip measurements re-execute this binary as
	// their echo server.
	RunEchoIfRequested()
	os.Exit(m.Run())
}
