package uffd

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Check is the outcome of one probe check.
type Check struct {
	Name   string
	OK     bool
	Detail string // what was found
	Fix    string // what to do when !OK ("" when nothing applies)
}

func (c Check) String() string {
	mark := " ok "
	if !c.OK {
		mark = "FAIL"
	}
	s := fmt.Sprintf("[%s] %s: %s", mark, c.Name, c.Detail)
	if !c.OK && c.Fix != "" {
		s += "\n       fix: " + c.Fix
	}
	return s
}

// ProbeResult is what Probe found about this machine.
type ProbeResult struct {
	KernelRelease           string
	UnprivilegedUserfaultfd int    // vm.unprivileged_userfaultfd, -1 if unreadable
	CapSysPtrace            bool   // the process has CAP_SYS_PTRACE
	DeviceNode              string // mode and owner of /dev/userfaultfd, "" if absent

	// Methods has one check per creation method (see Methods), telling
	// whether it creates a descriptor here. One working method is enough.
	Methods []Check
	// Best is the method Open picks (0 if none works).
	Best Method
	// Features is every feature the kernel offers.
	Features Features

	Userfaultfd    Check // a userfaultfd can be created, and in which mode
	FeatureCheck   Check // RequiredFeatures are offered
	Memfd          Check // memfd_create and ftruncate work
	FixedNoReplace Check // MAP_FIXED_NOREPLACE places a mapping and refuses a busy range
	Register       Check // MISSING|WP registration of a memfd mapping works
	Resolve        Check // COPY with MODE_WP, ZEROPAGE, EEXIST, WRITEPROTECT on that mapping
	PunchHole      Check // PUNCH_HOLE frees a page of the memfd
}

// Checks returns the checks that must all pass for the DSM runtime to work,
// in the order they were made.
func (r ProbeResult) Checks() []Check {
	return []Check{r.Userfaultfd, r.FeatureCheck, r.Memfd, r.FixedNoReplace, r.Register, r.Resolve, r.PunchHole}
}

// OK reports whether every check of Checks passed.
func (r ProbeResult) OK() bool {
	for _, c := range r.Checks() {
		if !c.OK {
			return false
		}
	}
	return true
}

// RCTracking says how the daemon finds the pages a program wrote in
// release-consistent memory on this machine. It always uses write-protect
// faults: asynchronous write protection (WP_ASYNC with PAGEMAP_SCAN, Linux
// 6.7) cannot hold a write, so a thread writing a page while another
// thread's acquire invalidates it would lose its write.
func (r ProbeResult) RCTracking() string {
	s := "written pages found by write-protect faults (one per page and interval; fewer for pages written in order)"
	if r.Features&FeatureWPAsync != 0 {
		return s + "; this kernel offers asynchronous write protection (WP_ASYNC), not used: it cannot hold a write while an acquire invalidates the page"
	}
	return s + "; this kernel lacks asynchronous write protection (WP_ASYNC)"
}

// String formats the result as a report for people, one check per line.
func (r ProbeResult) String() string {
	var b strings.Builder
	sysctl := "unreadable"
	if r.UnprivilegedUserfaultfd >= 0 {
		sysctl = fmt.Sprint(r.UnprivilegedUserfaultfd)
	}
	dev := r.DeviceNode
	if dev == "" {
		dev = "absent"
	}
	fmt.Fprintf(&b, "kernel %s, vm.unprivileged_userfaultfd=%s, CAP_SYS_PTRACE=%v, %s: %s\n",
		r.KernelRelease, sysctl, r.CapSysPtrace, DevicePath, dev)
	b.WriteString("creation methods:\n")
	for _, c := range r.Methods {
		b.WriteString("  " + strings.ReplaceAll(c.String(), "\n", "\n  ") + "\n")
	}
	b.WriteString("checks:\n")
	for _, c := range r.Checks() {
		b.WriteString("  " + strings.ReplaceAll(c.String(), "\n", "\n  ") + "\n")
	}
	b.WriteString("release-consistent memory: " + r.RCTracking() + "\n")
	if r.OK() {
		b.WriteString("result: OK\n")
	} else {
		b.WriteString("result: FAILED\n")
	}
	return b.String()
}

// Probe runs real checks of everything the DSM runtime needs from the
// kernel: it creates userfaultfds with every method, creates a memfd, maps
// it with MAP_FIXED_NOREPLACE, registers the mapping for MISSING|WP faults,
// installs pages with UFFDIO_COPY and UFFDIO_ZEROPAGE, toggles write
// protection and punches a hole. It never touches the registered mapping,
// so it causes no page fault in the calling process, and it releases
// everything it created.
func Probe() (r ProbeResult) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		r.KernelRelease = unix.ByteSliceToString(uts.Release[:])
	}
	e := currentEnv()
	r.UnprivilegedUserfaultfd, r.CapSysPtrace, r.DeviceNode = e.sysctl, e.capPtrace, e.devInfo

	var failed []Attempt
	for _, m := range Methods {
		c := Check{Name: m.String()}
		u, err := OpenWith(m)
		if err == nil {
			u.Close()
			c.OK, c.Detail = true, "creates a userfaultfd"
			if r.Best == 0 {
				r.Best = m
			}
		} else {
			c.Detail, c.Fix = diagnose(m, err, e)
			failed = append(failed, Attempt{Method: m, Err: err})
		}
		r.Methods = append(r.Methods, c)
	}

	r.Userfaultfd = Check{Name: "userfaultfd"}
	switch r.Best {
	case 0:
		oe := newOpenError(failed, e)
		r.Userfaultfd.Detail = oe.Error()
		r.Userfaultfd.Fix = "apply one of the fixes above"
	case MethodUserModeOnly:
		r.Userfaultfd.OK = true
		r.Userfaultfd.Detail = "user-mode-only (via " + r.Best.String() + "): faults taken inside system calls that touch the region fail with EFAULT"
		r.Userfaultfd.Fix = "for full mode: `sysctl -w vm.unprivileged_userfaultfd=1`, CAP_SYS_PTRACE, or rw access to " + DevicePath
	default:
		r.Userfaultfd.OK = true
		r.Userfaultfd.Detail = "full mode (kernel-mode faults handled too) via " + r.Best.String()
	}

	r.FeatureCheck = Check{Name: "features"}
	r.Memfd = Check{Name: "memfd"}
	r.FixedNoReplace = Check{Name: "MAP_FIXED_NOREPLACE"}
	r.Register = Check{Name: "shmem MISSING+WP registration"}
	r.Resolve = Check{Name: "COPY(WP)/ZEROPAGE/WRITEPROTECT"}
	r.PunchHole = Check{Name: "PUNCH_HOLE"}
	notRun := func(c *Check, why string) {
		if c.Detail == "" {
			c.Detail = "not run: " + why
		}
	}
	defer func() {
		for _, c := range []*Check{&r.FeatureCheck, &r.Memfd, &r.FixedNoReplace, &r.Register, &r.Resolve, &r.PunchHole} {
			notRun(c, "an earlier check failed")
		}
	}()

	if r.Best != 0 {
		probeFeatures(&r)
	} else {
		notRun(&r.FeatureCheck, "no userfaultfd")
	}

	const pages = 4
	size := pages * PageSize
	fd, err := Memfd("dsm-probe", int64(size))
	if err != nil {
		r.Memfd.Detail = err.Error()
		r.Memfd.Fix = "memfd_create needs Linux 3.17+ and a writable tmpfs-backed shmem; check seccomp and memory limits"
		return r
	}
	defer unix.Close(fd)
	r.Memfd.OK, r.Memfd.Detail = true, fmt.Sprintf("created a %d-byte memfd", size)

	region, ok := probeFixed(&r, fd, size)
	if !ok {
		punchCheck(&r, fd)
		return r
	}
	defer Unmap(region)
	addr := Addr(region)

	if r.Best == 0 {
		notRun(&r.Register, "no userfaultfd")
		punchCheck(&r, fd)
		return r
	}
	u, err := OpenWith(r.Best)
	if err != nil {
		r.Register.Detail = err.Error()
		return r
	}
	defer u.Close()
	if _, err := u.API(RequiredFeatures); err != nil {
		r.Register.Detail = err.Error()
		r.Register.Fix = "needs Linux 5.19+ (write protection of shared memory)"
		punchCheck(&r, fd)
		return r
	}
	ioctls, err := u.Register(addr, uintptr(size), RegisterMissing|RegisterWP)
	if err != nil {
		r.Register.Detail = err.Error()
		r.Register.Fix = "needs Linux 5.19+ with CONFIG_PTE_MARKER_UFFD_WP (write protection of shared memory)"
		punchCheck(&r, fd)
		return r
	}
	defer u.Unregister(addr, uintptr(size))
	need := IoctlCopy | IoctlZeroPage | IoctlWriteProtect | IoctlWake
	if ioctls&need != need {
		r.Register.Detail = fmt.Sprintf("registered, but the range allows ioctls %#x, missing %#x", ioctls, need&^ioctls)
		r.Register.Fix = "upgrade the kernel (5.19+)"
	} else {
		r.Register.OK = true
		r.Register.Detail = fmt.Sprintf("registered %d pages at %#x, range ioctls %#x", pages, addr, ioctls)
	}

	probeResolve(&r, u, fd, addr)
	punchCheck(&r, fd)
	return r
}

func probeFeatures(r *ProbeResult) {
	u, err := OpenWith(r.Best)
	if err != nil {
		r.FeatureCheck.Detail = err.Error()
		return
	}
	defer u.Close()
	f, err := u.API(0)
	if err != nil {
		r.FeatureCheck.Detail = err.Error()
		return
	}
	r.Features = f
	if missing := RequiredFeatures &^ f; missing != 0 {
		r.FeatureCheck.Detail = fmt.Sprintf("kernel offers %v (%#x) but lacks %v", f, uint64(f), missing)
		r.FeatureCheck.Fix = "upgrade to Linux 5.19+ (write protection and missing faults on shared memory)"
		return
	}
	r.FeatureCheck.OK = true
	r.FeatureCheck.Detail = fmt.Sprintf("%#x: %v", uint64(f), f)
}

// probeFixed maps the memfd with MAP_FIXED_NOREPLACE at a free address and
// checks that mapping it again there is refused.
func probeFixed(r *ProbeResult, fd, size int) ([]byte, bool) {
	c := &r.FixedNoReplace
	c.Fix = "needs Linux 4.17+"
	// Find a free range: let the kernel choose, then give it back.
	tmp, err := MapShared(fd, 0, size, false)
	if err != nil {
		c.Detail = err.Error()
		return nil, false
	}
	addr := Addr(tmp)
	if err := Unmap(tmp); err != nil {
		c.Detail = err.Error()
		return nil, false
	}
	region, err := MapShared(fd, addr, size, true)
	if err != nil {
		c.Detail = err.Error()
		return nil, false
	}
	again, err := MapShared(fd, addr, size, true)
	if err == nil {
		Unmap(again)
		c.Detail = fmt.Sprintf("a second mapping at busy address %#x was not refused", addr)
		return region, false
	}
	if !errors.Is(err, ErrAddressInUse) {
		c.Detail = "a second mapping at a busy address failed with an unexpected error: " + err.Error()
		return region, false
	}
	c.OK, c.Fix = true, ""
	c.Detail = fmt.Sprintf("mapped at %#x; a second mapping there is refused", addr)
	return region, true
}

// probeResolve installs pages through the registered mapping without
// touching it, and reads them back with pread.
func probeResolve(r *ProbeResult, u *FD, fd int, addr uintptr) {
	c := &r.Resolve
	ps := PageSize
	fail := func(format string, args ...any) {
		c.Detail = fmt.Sprintf(format, args...)
		c.Fix = "needs Linux 5.19+ (write protection of shared memory)"
	}
	page := bytes.Repeat([]byte{0xA5}, ps)
	if err := u.Copy(addr, page, true); err != nil {
		fail("%v", err)
		return
	}
	got := make([]byte, ps)
	if _, err := unix.Pread(fd, got, 0); err != nil || !bytes.Equal(got, page) {
		fail("after UFFDIO_COPY the memfd does not hold the copied page (pread: %v)", err)
		return
	}
	if err := u.Copy(addr, page, false); !errors.Is(err, ErrExist) {
		fail("a second UFFDIO_COPY of a present page gave %v, want EEXIST", err)
		return
	}
	if err := u.WriteProtect(addr, uintptr(ps), false, true); err != nil {
		fail("%v", err)
		return
	}
	if err := u.WriteProtect(addr, uintptr(ps), true, true); err != nil {
		fail("%v", err)
		return
	}
	if err := u.ZeroPage(addr+uintptr(ps), uintptr(ps)); err != nil {
		fail("%v", err)
		return
	}
	if _, err := unix.Pread(fd, got, int64(ps)); err != nil || !bytes.Equal(got, make([]byte, ps)) {
		fail("after UFFDIO_ZEROPAGE the page does not read as zeros (pread: %v)", err)
		return
	}
	if err := u.Wake(addr, uintptr(2*ps)); err != nil {
		fail("%v", err)
		return
	}
	c.OK = true
	c.Detail = "COPY with MODE_WP installed data, a second COPY gave EEXIST, WRITEPROTECT cleared and set, ZEROPAGE and WAKE worked"
}

// punchCheck punches the first page of fd and checks that its blocks were
// freed and that it reads as zeros.
func punchCheck(r *ProbeResult, fd int) {
	c := &r.PunchHole
	c.Fix = "fallocate(PUNCH_HOLE) on shmem needs Linux 3.5+"
	ps := PageSize
	// Make sure the page is allocated (pwrite allocates it).
	data := bytes.Repeat([]byte{0x5A}, ps)
	if has, _ := pageAllocated(fd, 0); !has {
		if _, err := unix.Pwrite(fd, data, 0); err != nil {
			c.Detail = "pwrite: " + err.Error()
			return
		}
	}
	var before, after unix.Stat_t
	if err := unix.Fstat(fd, &before); err != nil {
		c.Detail = "fstat: " + err.Error()
		return
	}
	if err := PunchHole(fd, 0, int64(ps)); err != nil {
		c.Detail = err.Error()
		return
	}
	if err := unix.Fstat(fd, &after); err != nil {
		c.Detail = "fstat: " + err.Error()
		return
	}
	got := make([]byte, ps)
	if _, err := unix.Pread(fd, got, 0); err != nil {
		c.Detail = "pread: " + err.Error()
		return
	}
	if !bytes.Equal(got, make([]byte, ps)) {
		c.Detail = "the punched page does not read as zeros"
		return
	}
	if after.Blocks >= before.Blocks {
		c.Detail = fmt.Sprintf("the memfd still uses %d blocks after punching (was %d)", after.Blocks, before.Blocks)
		return
	}
	c.OK, c.Fix = true, ""
	c.Detail = fmt.Sprintf("freed a page (%d -> %d blocks) that now reads as zeros", before.Blocks, after.Blocks)
}

// pageAllocated reports whether the page at off of fd holds data
// (lseek SEEK_DATA).
func pageAllocated(fd int, off int64) (bool, error) {
	got, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if err == unix.ENXIO {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return got == off, nil
}

// PageAllocated reports whether the page containing byte off of the file fd
// is allocated (not a hole), using lseek(SEEK_DATA). It lets a daemon check
// a page's state without touching any mapping of it.
func PageAllocated(fd int, off int64) (bool, error) {
	off -= off % int64(PageSize)
	ok, err := pageAllocated(fd, off)
	if err != nil {
		return false, fmt.Errorf("uffd: lseek SEEK_DATA at %d: %w", off, err)
	}
	return ok, nil
}
