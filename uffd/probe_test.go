package uffd_test

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/internal/uffdtest"
	"github.com/dsmrt/dsm/uffd"
)

func TestProbe(t *testing.T) {
	uffdtest.Require(t)
	before := openFDs(t)
	r := uffd.Probe()
	report := r.String()
	if !r.OK() {
		t.Fatalf("probe failed on a machine with userfaultfd:\n%s", report)
	}
	for _, c := range r.Checks() {
		if !c.OK || c.Name == "" || c.Detail == "" {
			t.Errorf("check %+v", c)
		}
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	if r.KernelRelease == "" || r.KernelRelease != unix.ByteSliceToString(uts.Release[:]) {
		t.Errorf("kernel release %q", r.KernelRelease)
	}
	if !r.Features.Has(uffd.RequiredFeatures) {
		t.Errorf("features %v", r.Features)
	}
	// The report says how release-consistent writes are tracked, and
	// whether the kernel could do it asynchronously.
	wantAsync := "lacks asynchronous write protection"
	if r.Features.Has(uffd.FeatureWPAsync) {
		wantAsync = "offers asynchronous write protection (WP_ASYNC), not used"
	}
	if !strings.Contains(report, "release-consistent memory: written pages found by write-protect faults") || !strings.Contains(report, wantAsync) {
		t.Errorf("the report does not say how release-consistent writes are tracked (want %q):\n%s", wantAsync, report)
	}
	if len(r.Methods) != len(uffd.Methods) || r.Best == 0 {
		t.Errorf("methods %v, best %v", r.Methods, r.Best)
	}
	if os.Getuid() == 0 {
		// Root may use every method; Open prefers the full-mode syscall.
		for _, c := range r.Methods {
			if !c.OK {
				t.Errorf("method %s failed as root: %s", c.Name, c.Detail)
			}
		}
		if r.Best != uffd.MethodSyscall || !strings.Contains(r.Userfaultfd.Detail, "full mode") {
			t.Errorf("best method %v: %s", r.Best, r.Userfaultfd.Detail)
		}
	}
	for _, want := range []string{"kernel " + r.KernelRelease, "vm.unprivileged_userfaultfd=", "MAP_FIXED_NOREPLACE", "PUNCH_HOLE", "result: OK"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if after := openFDs(t); after != before {
		t.Errorf("Probe leaked descriptors: %d open, %d before", after, before)
	}
	t.Logf("\n%s", report)
}

func TestProbeResultFailureReport(t *testing.T) {
	r := uffd.ProbeResult{
		KernelRelease:           "4.4.0",
		UnprivilegedUserfaultfd: -1,
		Userfaultfd:             uffd.Check{Name: "userfaultfd", Detail: "no", Fix: "upgrade"},
	}
	if r.OK() {
		t.Fatal("a failed check reported OK")
	}
	s := r.String()
	for _, want := range []string{"[FAIL] userfaultfd: no", "fix: upgrade", "unreadable", "/dev/userfaultfd: absent", "result: FAILED"} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
}
