package uffd_test

// These tests play the node daemon: a child process (uffdtest.Agent) maps a
// memfd at a fixed address, registers it with its own userfaultfd and sends
// the descriptor here; this process resolves the child's faults. No fault is
// ever taken by this process.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/internal/uffdtest"
	"github.com/dsmrt/dsm/uffd"
)

// pageWith returns a page whose 8-byte words hold seed, seed+1, ...
func pageWith(seed uint64) []byte {
	p := make([]byte, uffd.PageSize)
	for i := 0; i < len(p); i += 8 {
		binary.NativeEndian.PutUint64(p[i:], seed+uint64(i/8))
	}
	return p
}

func word(p []byte, off int) uint64 { return binary.NativeEndian.Uint64(p[off:]) }

func startAgent(t *testing.T, opts uffdtest.AgentOptions) *uffdtest.Agent {
	t.Helper()
	uffdtest.Require(t)
	return uffdtest.StartAgent(t, opts)
}

// expectFault waits for the next message and checks it is a page fault of
// the given kind on page of the agent's region.
func expectFault(t *testing.T, a *uffdtest.Agent, page int, kind string, write bool) uffd.Msg {
	t.Helper()
	m := a.NextMsg()
	if !m.IsPagefault() {
		t.Fatalf("got %v, want a page fault", m)
	}
	var ok bool
	switch kind {
	case "missing":
		ok = m.IsMissing()
	case "wp":
		ok = m.IsWP() && !m.IsMinor()
	case "minor":
		ok = m.IsMinor() && !m.IsWP()
	}
	if !ok || m.IsWrite() != write {
		t.Fatalf("got %v, want a %s fault (write=%v)", m, kind, write)
	}
	if m.Address != uint64(a.PageAddr(page)) {
		t.Fatalf("fault at %#x, want page %d at %#x", m.Address, page, a.PageAddr(page))
	}
	return m
}

func TestMissingFaultResolvedByCopy(t *testing.T) {
	a := startAgent(t, uffdtest.AgentOptions{})
	if !a.Features.Has(uffd.RequiredFeatures) {
		t.Fatalf("kernel features %v", a.Features)
	}
	if want := uffd.IoctlCopy | uffd.IoctlZeroPage | uffd.IoctlWriteProtect | uffd.IoctlWake; a.Ioctls&want != want {
		t.Fatalf("range ioctls %#x lack %#x", a.Ioctls, want)
	}
	data := pageWith(1000)
	a.Read(1*uffd.PageSize + 16)
	m := expectFault(t, a, 1, "missing", false)
	// FeatureThreadID: the message names a thread of the child.
	if m.PTID == 0 {
		t.Error("fault message without a thread id")
	} else if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", a.PID, m.PTID)); err != nil {
		t.Errorf("thread %d is not a thread of the child %d: %v", m.PTID, a.PID, err)
	}
	if err := a.UFFD.Copy(a.PageAddr(1), data, false); err != nil {
		t.Fatal(err)
	}
	if got := a.MustResult(); got != word(data, 16) {
		t.Errorf("child read %d, want %d", got, word(data, 16))
	}
	if got := a.Page(1); !bytes.Equal(got, data) {
		t.Error("the memfd does not hold the copied page")
	}
	// The page is present now: another read does not fault.
	a.Read(1*uffd.PageSize + 800)
	if got := a.MustResult(); got != word(data, 800) {
		t.Errorf("second read %d, want %d", got, word(data, 800))
	}
	a.NoMsg()
	// Nothing else was populated.
	if ok, _ := uffd.PageAllocated(a.Memfd, 0); ok {
		t.Error("page 0 allocated")
	}
}

// TestPageLifecycle is the sequence of DESIGN.md: install read-only, upgrade
// on a write fault, downgrade and read through the memfd, invalidate by
// punching the hole, and fault again. It runs with a full-mode and with a
// user-mode-only userfaultfd.
func TestPageLifecycle(t *testing.T) {
	for _, method := range []uffd.Method{0, uffd.MethodUserModeOnly} {
		name := "Open"
		if method != 0 {
			name = method.String()
		}
		t.Run(name, func(t *testing.T) {
			a := startAgent(t, uffdtest.AgentOptions{Method: method})
			if a.UserModeOnly != (method == uffd.MethodUserModeOnly) {
				t.Fatalf("child descriptor user-mode-only = %v", a.UserModeOnly)
			}
			const page = 2
			off := page*uffd.PageSize + 64
			v1 := pageWith(1 << 20)

			// Invalid -> Shared: a read faults MISSING; install read-only.
			a.Read(off)
			expectFault(t, a, page, "missing", false)
			if err := a.UFFD.Copy(a.PageAddr(page), v1, true); err != nil {
				t.Fatal(err)
			}
			if got := a.MustResult(); got != word(v1, 64) {
				t.Fatalf("read %d, want %d", got, word(v1, 64))
			}

			// Shared -> Exclusive: a write faults WP; clear protection.
			a.Write(off, 4242)
			expectFault(t, a, page, "wp", true)
			if got := a.Page(page); word(got, 64) != word(v1, 64) {
				t.Fatal("the write went through before protection was cleared")
			}
			if err := a.UFFD.WriteProtect(a.PageAddr(page), uintptr(uffd.PageSize), false, true); err != nil {
				t.Fatal(err)
			}
			a.MustResult()
			// Exclusive: writes run at memory speed.
			a.Write(off+8, 4343)
			a.MustResult()
			a.NoMsg()

			// Exclusive -> Shared: protect, then read the data with pread.
			if err := a.UFFD.WriteProtect(a.PageAddr(page), uintptr(uffd.PageSize), true, true); err != nil {
				t.Fatal(err)
			}
			got := a.Page(page)
			if word(got, 64) != 4242 || word(got, 72) != 4343 || word(got, 80) != word(v1, 80) {
				t.Fatalf("pread sees %d %d %d", word(got, 64), word(got, 72), word(got, 80))
			}
			// Reads still run without a fault while protected.
			a.Read(off)
			if v := a.MustResult(); v != 4242 {
				t.Fatalf("read %d while protected", v)
			}
			a.NoMsg()

			// Shared -> Invalid: punch the hole.
			if err := uffd.PunchHole(a.Memfd, int64(page*uffd.PageSize), int64(uffd.PageSize)); err != nil {
				t.Fatal(err)
			}
			if ok, _ := uffd.PageAllocated(a.Memfd, int64(page*uffd.PageSize)); ok {
				t.Fatal("page still allocated after punching")
			}

			// The next read faults MISSING again; install writable this time.
			v2 := pageWith(1 << 30)
			a.Read(off)
			expectFault(t, a, page, "missing", false)
			if err := a.UFFD.Copy(a.PageAddr(page), v2, false); err != nil {
				t.Fatal(err)
			}
			if got := a.MustResult(); got != word(v2, 64) {
				t.Fatalf("read %d after reinstall, want %d", got, word(v2, 64))
			}
			a.Write(off, 7)
			a.MustResult()
			a.NoMsg()
			if got := a.Page(page); word(got, 64) != 7 {
				t.Fatalf("pread sees %d after a write to a writable copy", word(got, 64))
			}

			// A write to a hole faults MISSING with the write flag.
			a.Write(3*uffd.PageSize, 99)
			expectFault(t, a, 3, "missing", true)
			if err := a.UFFD.Copy(a.PageAddr(3), make([]byte, uffd.PageSize), false); err != nil {
				t.Fatal(err)
			}
			a.MustResult()
			if got := a.Page(3); word(got, 0) != 99 {
				t.Fatalf("the write after the fault is not in the memfd: %d", word(got, 0))
			}
		})
	}
}

func TestZeroPage(t *testing.T) {
	a := startAgent(t, uffdtest.AgentOptions{})
	a.Read(4*uffd.PageSize + 8)
	expectFault(t, a, 4, "missing", false)
	if err := a.UFFD.ZeroPage(a.PageAddr(4), uintptr(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	if got := a.MustResult(); got != 0 {
		t.Errorf("read %d from a zero page", got)
	}
	if ok, _ := uffd.PageAllocated(a.Memfd, int64(4*uffd.PageSize)); !ok {
		t.Error("ZEROPAGE did not populate the memfd")
	}
	// A zero page installed by ZEROPAGE is writable.
	a.Write(4*uffd.PageSize+8, 5)
	a.MustResult()
	a.NoMsg()
	if got := a.Page(4); word(got, 8) != 5 {
		t.Errorf("memfd sees %d", word(got, 8))
	}
	// ZEROPAGE over a present page reports ErrExist.
	if err := a.UFFD.ZeroPage(a.PageAddr(4), uintptr(uffd.PageSize)); !errors.Is(err, uffd.ErrExist) {
		t.Errorf("ZEROPAGE over a present page: %v", err)
	}
}

func TestWriteProtectDontWakeThenWake(t *testing.T) {
	// Without async preemption nothing but a wake-up ends the child's wait
	// (SIGURG would interrupt it and the retried write would then succeed).
	a := startAgent(t, uffdtest.AgentOptions{Env: []string{"GODEBUG=asyncpreemptoff=1"}})
	data := pageWith(5)
	a.Read(0)
	expectFault(t, a, 0, "missing", false)
	if err := a.UFFD.Copy(a.PageAddr(0), data, true); err != nil {
		t.Fatal(err)
	}
	a.MustResult()

	a.Write(24, 77)
	expectFault(t, a, 0, "wp", true)
	if err := a.UFFD.WriteProtect(a.PageAddr(0), uintptr(uffd.PageSize), false, false); err != nil {
		t.Fatal(err)
	}
	// Not woken: the child is still asleep (were it woken it would either
	// answer or fault again).
	if a.Replied(100 * time.Millisecond) {
		t.Fatal("the child ran although WRITEPROTECT was told not to wake it")
	}
	a.NoMsg()
	if err := a.UFFD.Wake(a.PageAddr(0), uintptr(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	a.MustResult()
	a.NoMsg()
	if got := a.Page(0); word(got, 24) != 77 {
		t.Errorf("memfd sees %d after the woken write", word(got, 24))
	}
}

// TestWakeRetriesTheAccess: a woken thread whose page is still missing
// faults again.
func TestWakeRetriesTheAccess(t *testing.T) {
	a := startAgent(t, uffdtest.AgentOptions{})
	a.Read(5 * uffd.PageSize)
	expectFault(t, a, 5, "missing", false)
	if err := a.UFFD.Wake(a.PageAddr(5), uintptr(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	expectFault(t, a, 5, "missing", false)
	data := pageWith(9)
	if err := a.UFFD.Copy(a.PageAddr(5), data, false); err != nil {
		t.Fatal(err)
	}
	if got := a.MustResult(); got != word(data, 0) {
		t.Errorf("read %d", got)
	}
}

// TestCopyExistWakesWaiter: the page appears in the memfd while a fault
// waits (here by pwrite, in the daemon by a race); UFFDIO_COPY then fails
// with EEXIST, and Copy must still wake the waiter, which sees the page.
func TestCopyExistWakesWaiter(t *testing.T) {
	// Without async preemption only a wake-up ends the child's wait, so
	// the reply proves Copy woke it.
	a := startAgent(t, uffdtest.AgentOptions{Env: []string{"GODEBUG=asyncpreemptoff=1"}})
	const page = 3
	a.Read(page*uffd.PageSize + 8)
	expectFault(t, a, page, "missing", false)
	present := pageWith(31337)
	if _, err := unix.Pwrite(a.Memfd, present, int64(page*uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	err := a.UFFD.Copy(a.PageAddr(page), pageWith(1), false)
	if !errors.Is(err, uffd.ErrExist) || !errors.Is(err, unix.EEXIST) {
		t.Fatalf("Copy over a present page: %v, want ErrExist", err)
	}
	if got := a.MustResult(); got != word(present, 8) {
		t.Errorf("woken child read %d, want %d", got, word(present, 8))
	}
	a.NoMsg()
	if got := a.Page(page); !bytes.Equal(got, present) {
		t.Error("the failed copy changed the page")
	}

	// A multi-page copy whose second page is present installs the first,
	// reports ErrExist for the rest and leaves the present page alone.
	if _, err := unix.Pwrite(a.Memfd, present, int64(6*uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	two := append(pageWith(50), pageWith(60)...)
	if err := a.UFFD.Copy(a.PageAddr(5), two, false); !errors.Is(err, uffd.ErrExist) {
		t.Fatalf("two-page copy: %v, want ErrExist", err)
	}
	if got := a.Page(5); !bytes.Equal(got, two[:uffd.PageSize]) {
		t.Error("the first page of a partial copy was not installed")
	}
	if got := a.Page(6); !bytes.Equal(got, present) {
		t.Error("the present page was overwritten")
	}
	a.Read(5 * uffd.PageSize)
	if got := a.MustResult(); got != word(two, 0) {
		t.Errorf("read %d from the copied page", got)
	}
	a.NoMsg()
}

// TestKernelModeFault: a system call that reads the region (write(2) from
// it) faults in kernel mode. A full-mode userfaultfd reports it; a
// user-mode-only one makes the call fail with EFAULT.
func TestKernelModeFault(t *testing.T) {
	t.Run("full", func(t *testing.T) {
		a := startAgent(t, uffdtest.AgentOptions{})
		if a.UserModeOnly {
			t.Skip("Open gave a user-mode-only descriptor here")
		}
		a.KernelRead(2*uffd.PageSize + 32)
		expectFault(t, a, 2, "missing", false)
		data := pageWith(77)
		if err := a.UFFD.Copy(a.PageAddr(2), data, false); err != nil {
			t.Fatal(err)
		}
		if got := a.MustResult(); got != word(data, 32) {
			t.Errorf("write(2) passed %d, want %d", got, word(data, 32))
		}
	})
	t.Run("user-mode-only", func(t *testing.T) {
		a := startAgent(t, uffdtest.AgentOptions{Method: uffd.MethodUserModeOnly})
		a.KernelRead(2*uffd.PageSize + 32)
		if r := a.Result(); r.Err != "EFAULT" {
			t.Errorf("write(2) from a missing page: %+v, want EFAULT", r)
		}
		a.NoMsg()
		// A user-mode access of the same page is reported.
		a.Read(2*uffd.PageSize + 32)
		expectFault(t, a, 2, "missing", false)
		if err := a.UFFD.ZeroPage(a.PageAddr(2), uintptr(uffd.PageSize)); err != nil {
			t.Fatal(err)
		}
		a.MustResult()
	})
}

// TestOpenFallbackUnprivileged runs the child as nobody: Open must still
// give it a working descriptor, through the method the system allows.
func TestOpenFallbackUnprivileged(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to start a child as another user")
	}
	const nobody = 65534
	want := uffd.MethodUserModeOnly
	if b, err := os.ReadFile(uffd.SysctlPath); err == nil && strings.TrimSpace(string(b)) == "1" {
		want = uffd.MethodSyscall
	} else if fi, err := os.Stat(uffd.DevicePath); err == nil && fi.Mode().Perm()&0o006 == 0o006 {
		want = uffd.MethodDevice
	}
	a := startAgent(t, uffdtest.AgentOptions{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}})
	if a.Method != want || a.UserModeOnly != (want == uffd.MethodUserModeOnly) {
		t.Fatalf("unprivileged child got %v (user-mode-only %v), want %v", a.Method, a.UserModeOnly, want)
	}
	st, err := os.Stat(fmt.Sprintf("/proc/%d", a.PID))
	if err != nil || st.Sys().(*syscall.Stat_t).Uid != nobody {
		t.Fatalf("child does not run as nobody: %v", err)
	}
	data := pageWith(3)
	a.Read(0)
	expectFault(t, a, 0, "missing", false)
	if err := a.UFFD.Copy(a.PageAddr(0), data, true); err != nil {
		t.Fatal(err)
	}
	if got := a.MustResult(); got != word(data, 0) {
		t.Errorf("read %d", got)
	}
	a.Write(0, 1)
	expectFault(t, a, 0, "wp", true)
	if err := a.UFFD.WriteProtect(a.PageAddr(0), uintptr(uffd.PageSize), false, true); err != nil {
		t.Fatal(err)
	}
	a.MustResult()
}

func TestMinorFaultResolvedByContinue(t *testing.T) {
	a := startAgent(t, uffdtest.AgentOptions{
		Features: uffd.RequiredFeatures | uffd.FeatureMinorShmem,
		Mode:     uffd.RegisterMissing | uffd.RegisterWP | uffd.RegisterMinor,
	})
	if a.Ioctls&uffd.IoctlContinue == 0 {
		t.Fatalf("range ioctls %#x lack CONTINUE", a.Ioctls)
	}
	// The page is in the page cache but not mapped by the child.
	data := pageWith(123)
	if _, err := unix.Pwrite(a.Memfd, data, int64(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	a.Read(uffd.PageSize + 40)
	expectFault(t, a, 1, "minor", false)
	if err := a.UFFD.Continue(a.PageAddr(1), uintptr(uffd.PageSize), true); err != nil {
		t.Fatal(err)
	}
	if got := a.MustResult(); got != word(data, 40) {
		t.Errorf("read %d, want %d", got, word(data, 40))
	}
	// Mapped write-protected by CONTINUE with MODE_WP.
	a.Write(uffd.PageSize+40, 1)
	expectFault(t, a, 1, "wp", true)
	if err := a.UFFD.WriteProtect(a.PageAddr(1), uintptr(uffd.PageSize), false, true); err != nil {
		t.Fatal(err)
	}
	a.MustResult()
	// A hole still faults MISSING.
	a.Read(0)
	expectFault(t, a, 0, "missing", false)
	if err := a.UFFD.ZeroPage(a.PageAddr(0), uintptr(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	a.MustResult()
}

func TestPoisonMakesTheAccessFail(t *testing.T) {
	uffdtest.Require(t)
	if f, err := uffd.KernelFeatures(); err != nil || !f.Has(uffd.FeaturePoison) {
		t.Skipf("kernel lacks UFFD_FEATURE_POISON (%v, %v)", f, err)
	}
	a := startAgent(t, uffdtest.AgentOptions{Features: uffd.RequiredFeatures | uffd.FeaturePoison})
	a.Read(6 * uffd.PageSize)
	expectFault(t, a, 6, "missing", false)
	if err := a.UFFD.Poison(a.PageAddr(6), uintptr(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	if r := a.Result(); !strings.HasPrefix(r.Err, "fault") {
		t.Errorf("access to a poisoned page: %+v, want a fault", r)
	}
	a.NoMsg()
}

func TestUnregisterStopsFaults(t *testing.T) {
	a := startAgent(t, uffdtest.AgentOptions{})
	// The daemon's copy of the descriptor may unregister the child's range.
	if err := a.UFFD.Unregister(a.PageAddr(7), uintptr(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	a.Write(7*uffd.PageSize, 11)
	a.MustResult()
	a.NoMsg()
	if got := a.Page(7); word(got, 0) != 11 {
		t.Errorf("memfd sees %d", word(got, 0))
	}
	// The rest is still registered.
	a.Read(6 * uffd.PageSize)
	expectFault(t, a, 6, "missing", false)
	if err := a.UFFD.ZeroPage(a.PageAddr(6), uintptr(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	a.MustResult()
}

// TestConcurrentFaults: three threads of the child fault at once on three
// pages; every fault is reported once, by its own thread, and all are
// resolved.
func TestConcurrentFaults(t *testing.T) {
	a := startAgent(t, uffdtest.AgentOptions{})
	pages := []int{1, 3, 5}
	a.ReadConcurrently(pages[0]*uffd.PageSize, pages[1]*uffd.PageSize+8, pages[2]*uffd.PageSize+16)
	seen := map[uint64]uint32{} // address -> thread
	msgs := make([]uffd.Msg, 8)
	for len(seen) < len(pages) {
		ready, err := a.UFFD.Wait(uffdtest.Timeout)
		if err != nil || !ready {
			t.Fatalf("Wait = %v, %v with %d of %d faults seen", ready, err, len(seen), len(pages))
		}
		n, err := a.UFFD.ReadMsgs(msgs)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs[:n] {
			if !m.IsMissing() {
				t.Fatalf("unexpected %v", m)
			}
			// A thread interrupted by a signal retries its access
			// and may report the same fault again.
			if tid, dup := seen[m.Address]; dup && tid != m.PTID {
				t.Fatalf("fault at %#x reported by threads %d and %d", m.Address, tid, m.PTID)
			}
			seen[m.Address] = m.PTID
		}
	}
	threads := map[uint32]bool{}
	var want uint64
	for i, p := range pages {
		tid, ok := seen[uint64(a.PageAddr(p))]
		if !ok {
			t.Fatalf("no fault on page %d: %v", p, seen)
		}
		threads[tid] = true
		data := pageWith(uint64(100 * (i + 1)))
		want += word(data, 8*i)
		if err := a.UFFD.Copy(a.PageAddr(p), data, false); err != nil {
			t.Fatal(err)
		}
	}
	if len(threads) != len(pages) {
		t.Errorf("faults came from %d threads, want %d", len(threads), len(pages))
	}
	if got := a.MustResult(); got != want {
		t.Errorf("sum %d, want %d", got, want)
	}
	a.NoMsg()
}

// TestBlockingRead: ReadMsgs works on a descriptor switched to blocking
// mode, the other way for a daemon to read it. The fault is made pending
// first, so that a broken test cannot sleep forever in read(2).
func TestBlockingRead(t *testing.T) {
	a := startAgent(t, uffdtest.AgentOptions{Env: []string{"GODEBUG=asyncpreemptoff=1"}})
	a.Read(2 * uffd.PageSize)
	if ready, err := a.UFFD.Wait(uffdtest.Timeout); !ready || err != nil {
		t.Fatalf("Wait = %v, %v", ready, err)
	}
	if err := a.UFFD.SetNonblock(false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.UFFD.Wait(0); err == nil {
		t.Error("Wait on a blocking descriptor did not report POLLERR")
	}
	msgs := make([]uffd.Msg, 4)
	n, err := a.UFFD.ReadMsgs(msgs)
	if err != nil || n != 1 || !msgs[0].IsMissing() || msgs[0].Address != uint64(a.PageAddr(2)) {
		t.Fatalf("blocking ReadMsgs = %d, %v: %v", n, err, msgs[:n])
	}
	if err := a.UFFD.ZeroPage(a.PageAddr(2), uintptr(uffd.PageSize)); err != nil {
		t.Fatal(err)
	}
	a.MustResult()
	if err := a.UFFD.SetNonblock(true); err != nil {
		t.Fatal(err)
	}
	a.NoMsg()
}

func TestOwnerExited(t *testing.T) {
	a := startAgent(t, uffdtest.AgentOptions{})
	a.Read(0)
	expectFault(t, a, 0, "missing", false)
	a.Kill()
	err := a.UFFD.Copy(a.PageAddr(0), pageWith(1), false)
	if !errors.Is(err, uffd.ErrExited) {
		t.Errorf("Copy after the owner exited: %v, want ErrExited", err)
	}
	if err := a.UFFD.WriteProtect(a.PageAddr(0), uintptr(uffd.PageSize), true, true); !errors.Is(err, uffd.ErrExited) {
		t.Errorf("WriteProtect after the owner exited: %v, want ErrExited", err)
	}
}
