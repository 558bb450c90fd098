// Package uffdtest helps tests that need userfaultfd: Require skips (or, in
// CI, fails) a test that cannot get one, and Agent runs the faulting side of
// a two-process userfaultfd test in a child process, so that the test's own
// process only ever serves faults, as the node daemon does.
package uffdtest

import (
	"fmt"
	"os"
	"testing"

	"github.com/dsmrt/dsm/uffd"
)

// RequireEnv is the environment variable that turns Require's skips into
// failures when set to "1" (CI sets it).
const RequireEnv = "DSM_REQUIRE_UFFD"

// Require skips t, with the reason, unless this process can create a
// userfaultfd whose kernel offers uffd.RequiredFeatures. When DSM_REQUIRE_UFFD=1
// it fails t instead of skipping.
func Require(t testing.TB) {
	t.Helper()
	require(t, probe, os.Getenv(RequireEnv) == "1")
}

func probe() error {
	f, err := uffd.KernelFeatures()
	if err != nil {
		return err
	}
	if missing := uffd.RequiredFeatures &^ f; missing != 0 {
		return fmt.Errorf("the kernel's userfaultfd lacks features %v (it offers %v)", missing, f)
	}
	return nil
}

func require(t testing.TB, probe func() error, mandatory bool) {
	t.Helper()
	err := probe()
	if err == nil {
		return
	}
	if mandatory {
		t.Fatalf("userfaultfd is required (%s=1) but unavailable: %v", RequireEnv, err)
		return
	}
	t.Skipf("userfaultfd unavailable, skipping (set %s=1 to fail instead): %v", RequireEnv, err)
}
