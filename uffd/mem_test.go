package uffd_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/uffd"
)

func newMemfd(t *testing.T, pages int) int {
	t.Helper()
	fd, err := uffd.Memfd(t.Name(), int64(pages*uffd.PageSize))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestMemfd(t *testing.T) {
	fd := newMemfd(t, 3)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(3*uffd.PageSize) || st.Blocks != 0 {
		t.Errorf("size %d blocks %d, want %d and 0", st.Size, st.Blocks, 3*uffd.PageSize)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("memfd lacks FD_CLOEXEC")
	}
	if _, err := uffd.Memfd("bad", -1); err == nil {
		t.Error("negative size accepted")
	}
}

func TestPunchHole(t *testing.T) {
	ps := uffd.PageSize
	fd := newMemfd(t, 4)
	data := bytes.Repeat([]byte{7}, 4*ps)
	if _, err := unix.Pwrite(fd, data, 0); err != nil {
		t.Fatal(err)
	}
	if err := uffd.PunchHole(fd, int64(ps), int64(2*ps)); err != nil {
		t.Fatal(err)
	}
	want := []bool{true, false, false, true}
	for i, w := range want {
		got, err := uffd.PageAllocated(fd, int64(i*ps+5))
		if err != nil || got != w {
			t.Errorf("page %d allocated = %v, %v; want %v", i, got, err, w)
		}
	}
	buf := make([]byte, 4*ps)
	if _, err := unix.Pread(fd, buf, 0); err != nil {
		t.Fatal(err)
	}
	for i := range buf {
		want := byte(7)
		if i >= ps && i < 3*ps {
			want = 0
		}
		if buf[i] != want {
			t.Fatalf("byte %d = %d, want %d", i, buf[i], want)
		}
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	if st.Size != int64(4*ps) {
		t.Errorf("punching changed the size to %d", st.Size)
	}
	for _, bad := range [][2]int64{{-1, 10}, {0, 0}} {
		if err := uffd.PunchHole(fd, bad[0], bad[1]); err == nil {
			t.Errorf("PunchHole(%d, %d) accepted", bad[0], bad[1])
		}
	}
}

// testBase is a fixed address for mappings made by this (parent) process.
const testBase uintptr = 0x610000000000

func TestMapSharedFixed(t *testing.T) {
	ps := uffd.PageSize
	fd := newMemfd(t, 4)
	b, err := uffd.MapShared(fd, testBase, 4*ps, true)
	if err != nil {
		t.Fatal(err)
	}
	defer uffd.Unmap(b)
	if uffd.Addr(b) != testBase || len(b) != 4*ps {
		t.Fatalf("mapped at %#x len %d", uffd.Addr(b), len(b))
	}
	// This mapping has no userfaultfd: touching it is safe, and it is
	// shared with the file.
	copy(b[ps:], "hello")
	got := make([]byte, 5)
	if _, err := unix.Pread(fd, got, int64(ps)); err != nil || string(got) != "hello" {
		t.Errorf("pread after a store through the mapping: %q, %v", got, err)
	}
	if _, err := unix.Pwrite(fd, []byte("world"), int64(2*ps)); err != nil {
		t.Fatal(err)
	}
	if string(b[2*ps:2*ps+5]) != "world" {
		t.Errorf("the mapping does not see a pwrite: %q", b[2*ps:2*ps+5])
	}
	// A second, non-fixed mapping shares the same pages.
	c, err := uffd.MapShared(fd, 0, 4*ps, false)
	if err != nil {
		t.Fatal(err)
	}
	if string(c[ps:ps+5]) != "hello" {
		t.Errorf("second mapping sees %q", c[ps:ps+5])
	}
	if err := uffd.Unmap(c); err != nil {
		t.Fatal(err)
	}
}

func TestMapSharedBusyAddress(t *testing.T) {
	ps := uffd.PageSize
	fd := newMemfd(t, 4)
	b, err := uffd.MapShared(fd, testBase, 2*ps, true)
	if err != nil {
		t.Fatal(err)
	}
	defer uffd.Unmap(b)
	tests := []struct {
		name string
		addr uintptr
		size int
	}{
		{"same range", testBase, 2 * ps},
		{"overlapping end", testBase + uintptr(ps), 2 * ps},
		{"overlapping start", testBase - uintptr(ps), 2 * ps},
		{"covering", testBase - uintptr(ps), 4 * ps},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := uffd.MapShared(fd, tt.addr, tt.size, true)
			if err == nil {
				uffd.Unmap(m)
				t.Fatal("mapping over a busy range succeeded")
			}
			want := fmt.Sprintf("address range %#x-%#x already in use; choose another base", tt.addr, tt.addr+uintptr(tt.size))
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
			if !errors.Is(err, uffd.ErrAddressInUse) || !errors.Is(err, unix.EEXIST) {
				t.Errorf("error does not match ErrAddressInUse and EEXIST: %v", err)
			}
		})
	}
	// The existing mapping is intact.
	copy(b, "still here")
	got := make([]byte, 10)
	unix.Pread(fd, got, 0)
	if string(got) != "still here" {
		t.Errorf("existing mapping damaged: %q", got)
	}
}

func TestMapSharedBadArguments(t *testing.T) {
	fd := newMemfd(t, 1)
	tests := []struct {
		name  string
		addr  uintptr
		size  int
		fixed bool
	}{
		{"zero size", 0, 0, false},
		{"fixed at zero", 0, uffd.PageSize, true},
		{"fixed unaligned", testBase + 1, uffd.PageSize, true},
	}
	for _, tt := range tests {
		if m, err := uffd.MapShared(fd, tt.addr, tt.size, tt.fixed); err == nil {
			uffd.Unmap(m)
			t.Errorf("%s: accepted", tt.name)
		}
	}
	if _, err := uffd.MapShared(-1, 0, uffd.PageSize, false); !errors.Is(err, unix.EBADF) {
		t.Errorf("bad descriptor: %v", err)
	}
}
