package main

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/uffd"
)

// What asynchronous write protection would cost a release, measured beside
// what write-fault tracking costs (rc/release/dirty=K). The runtime does
// not use it (a write racing an acquire's invalidation would be lost: see
// the README), so this is a limit of the machine, measured here: a shared
// memfd mapping like the release-consistent area, registered with a
// userfaultfd in WP_ASYNC mode and write-protected, K of its pages written
// (the kernel records the writes; no fault), then one PAGEMAP_SCAN that
// finds the written pages and protects them again, as a release would.

// The PAGEMAP_SCAN ABI (include/uapi/linux/fs.h, Linux 6.7).
const (
	pagemapScan       = 0xC0606610 // _IOWR('f', 16, struct pm_scan_arg)
	pmScanWPMatching  = 1 << 0     // write-protect the pages matched
	pmScanCheckWPSync = 1 << 1     // stop at a page not under async write protection
	pageIsWritten     = 1 << 1
)

type pmScanArg struct {
	Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages uint64
	CategoryInverted, CategoryMask, CategoryAnyofMask       uint64
	ReturnMask                                              uint64
}

type pageRegion struct{ Start, End, Categories uint64 }

// wpScanPages is the size of the measured mapping: K pages of it are
// written, and the scan walks all of it.
const wpScanPages = 1024

// errNoWPAsync reports a kernel without asynchronous write protection.
var errNoWPAsync = errors.New("this kernel offers no asynchronous write protection (UFFD_FEATURE_WP_ASYNC)")

// measureWPScan writes one word in each of k of wpScanPages pages and scans
// for them, rounds times; it returns the scans' and the writes' times.
func measureWPScan(k, rounds, ps int) (scans, writes []int64, err error) {
	if k > wpScanPages {
		return nil, nil, fmt.Errorf("wp scan: %d pages of %d", k, wpScanPages)
	}
	size := wpScanPages * ps
	fd, err := unix.MemfdCreate("dsm-bench-wpscan", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("wp scan: memfd: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return nil, nil, fmt.Errorf("wp scan: size the memfd: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("wp scan: map: %w", err)
	}
	defer unix.Munmap(mem)
	for p := 0; p < size; p += ps {
		mem[p] = 1 // present: the protection applies to every page
	}
	if avail, err := uffd.KernelFeatures(); err == nil && avail&uffd.FeatureWPAsync == 0 {
		return nil, nil, errNoWPAsync
	}
	u, err := uffd.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("wp scan: %w", err)
	}
	defer u.Close()
	if _, err := u.API(uffd.FeatureWPAsync | uffd.FeatureWPHugetlbfsShmem); err != nil {
		return nil, nil, fmt.Errorf("wp scan: %w", err)
	}
	addr := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := u.Register(addr, uintptr(size), uffd.RegisterWP); err != nil {
		return nil, nil, fmt.Errorf("wp scan: register: %w", err)
	}
	pagemap, err := unix.Open("/proc/self/pagemap", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("wp scan: %w", err)
	}
	defer unix.Close(pagemap)
	vec := make([]pageRegion, wpScanPages)
	scan := func() (int, error) {
		arg := pmScanArg{
			Size: uint64(unsafe.Sizeof(pmScanArg{})), Flags: pmScanWPMatching | pmScanCheckWPSync,
			Start: uint64(addr), End: uint64(addr) + uint64(size),
			Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))), VecLen: uint64(len(vec)),
			CategoryMask: pageIsWritten, ReturnMask: pageIsWritten,
		}
		n, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(pagemap), pagemapScan, uintptr(unsafe.Pointer(&arg)))
		if e != 0 {
			return 0, fmt.Errorf("wp scan: PAGEMAP_SCAN: %w", e)
		}
		pages := 0
		for _, r := range vec[:n] {
			pages += int(r.End-r.Start) / ps
		}
		return pages, nil
	}
	if err := u.WriteProtect(addr, uintptr(size), true, false); err != nil {
		return nil, nil, fmt.Errorf("wp scan: write-protect: %w", err)
	}
	if _, err := scan(); err != nil { // starts clean, and the scan works
		return nil, nil, err
	}
	// The written pages are spread over the mapping, one in every
	// wpScanPages/k, as a program's scattered writes would be.
	stride := wpScanPages / k
	for r := range rounds {
		t0 := time.Now()
		for i := range k {
			*(*uint64)(unsafe.Pointer(&mem[i*stride*ps])) = uint64(r + 2)
		}
		t1 := time.Now()
		got, err := scan()
		t2 := time.Now()
		if err != nil {
			return nil, nil, err
		}
		if got != k {
			return nil, nil, fmt.Errorf("wp scan: %d pages written, the scan found %d", k, got)
		}
		writes = append(writes, int64(t1.Sub(t0)))
		scans = append(scans, int64(t2.Sub(t1)))
	}
	return scans, writes, nil
}
