package uffd_test

import (
	"os"
	"testing"

	"github.com/dsmrt/dsm/internal/uffdtest"
	"github.com/dsmrt/dsm/uffd"
)

func TestMain(m *testing.M) {
	// The local-fault benchmark re-executes this binary as its faulting
	// child.
	uffd.RunChildIfRequested()
	os.Exit(m.Run())
}

// TestHelperProcess is not a test: it is the child process of
// uffdtest.StartAgent, which runs this binary with -test.run set to it.
func TestHelperProcess(t *testing.T) {
	uffdtest.AgentMain()
}
