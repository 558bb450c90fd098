package uffdtest

import (
	"strings"
	"testing"

	"github.com/dsmrt/dsm/uffd"
)

// TestHelperProcess is not a test: it is the agent's child process.
func TestHelperProcess(t *testing.T) { AgentMain() }

func TestAgentServesAFault(t *testing.T) {
	Require(t)
	a := StartAgent(t, AgentOptions{Pages: 2})
	if a.PID <= 0 || a.UFFD == nil || a.Pages != 2 || a.Base != DefaultBase {
		t.Fatalf("agent %+v", a)
	}
	a.Read(uffd.PageSize + 8)
	m := a.NextMsg()
	if !m.IsMissing() || m.Address != uint64(a.PageAddr(1)) {
		t.Fatalf("message %v", m)
	}
	page := make([]byte, uffd.PageSize)
	page[8] = 42
	if err := a.UFFD.Copy(a.PageAddr(1), page, false); err != nil {
		t.Fatal(err)
	}
	if v := a.MustResult(); v != 42 {
		t.Errorf("read %d, want 42", v)
	}
	if got := a.Page(1); got[8] != 42 {
		t.Errorf("memfd holds %d", got[8])
	}
	// Bad commands get an error reply, not a crash.
	a.Read(3)
	if r := a.Result(); r.Err == "" {
		t.Errorf("unaligned offset accepted: %+v", r)
	}
	a.Write(0, 1)
	expect := a.NextMsg()
	if !expect.IsWrite() || expect.Address != uint64(a.PageAddr(0)) {
		t.Fatalf("message %v", expect)
	}
	if err := a.UFFD.ZeroPage(a.PageAddr(0), uintptr(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	a.MustResult()
	a.Kill()
	a.Kill() // idempotent
}

// TestAgentSetupError: a setup failure in the child (here, a region address
// the child cannot map) is reported to the parent with the child's reason.
func TestAgentSetupError(t *testing.T) {
	Require(t)
	// An address in the kernel half can never be mapped.
	r := record(t, func(tb testing.TB) { StartAgent(tb, AgentOptions{Base: 0xffff800000000000}) })
	if !strings.Contains(r.failed, "agent failed to set up") || !strings.Contains(r.failed, "0xffff800000000000") {
		t.Fatalf("StartAgent failure %q does not carry the child's reason", r.failed)
	}
}
