package uffd

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Memfd creates an anonymous shared-memory file (memfd_create with
// MFD_CLOEXEC) of size bytes. Pages are allocated on first touch; every
// process mapping the file shares them.
func Memfd(name string, size int64) (fd int, err error) {
	if size < 0 {
		return -1, fmt.Errorf("uffd: memfd %q: negative size %d", name, size)
	}
	fd, err = unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("uffd: memfd_create %q: %w", name, err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("uffd: memfd %q: ftruncate to %d bytes: %w", name, size, err)
	}
	return fd, nil
}

// PunchHole frees [off, off+length) of the file fd (fallocate with
// FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE). Every process's mapping of those
// pages is dropped; the next access reads zeros, or raises a MISSING fault
// where a userfaultfd covers it.
func PunchHole(fd int, off, length int64) error {
	if off < 0 || length <= 0 {
		return fmt.Errorf("uffd: punch hole: invalid range offset %d length %d", off, length)
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length); err != nil {
		return fmt.Errorf("uffd: punch hole at offset %d length %d: %w", off, length, err)
	}
	return nil
}

// MapShared maps size bytes of fd from offset 0, readable and writable and
// MAP_SHARED. With fixed the mapping is placed exactly at addr with
// MAP_FIXED_NOREPLACE and never replaces an existing mapping: an occupied
// range gives an error wrapping ErrAddressInUse, and a kernel that ignores
// the flag (older than 4.17) and places the mapping elsewhere gives an error
// too. Without fixed, addr is only a hint (0 lets the kernel choose).
func MapShared(fd int, addr uintptr, size int, fixed bool) ([]byte, error) {
	if size <= 0 {
		return nil, fmt.Errorf("uffd: map: invalid size %d", size)
	}
	flags := unix.MAP_SHARED
	if fixed {
		if addr == 0 || addr%uintptr(PageSize) != 0 {
			return nil, fmt.Errorf("uffd: map: fixed address %#x must be non-zero and page aligned", addr)
		}
		flags |= unix.MAP_FIXED_NOREPLACE
	}
	// Reinterpret rather than convert: addr is an address in no Go object.
	hint := *(*unsafe.Pointer)(unsafe.Pointer(&addr))
	p, err := unix.MmapPtr(fd, 0, hint, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		if fixed && errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("uffd: map: address range %#x-%#x already in use; choose another base: %w (%w)",
				addr, addr+uintptr(size), ErrAddressInUse, err)
		}
		return nil, fmt.Errorf("uffd: map %d bytes at %#x: %w", size, addr, err)
	}
	if got := uintptr(p); fixed && got != addr {
		unix.MunmapPtr(p, uintptr(size))
		return nil, fmt.Errorf("uffd: map: the kernel placed the mapping at %#x instead of %#x: MAP_FIXED_NOREPLACE is not supported (needs Linux 4.17+): %w",
			got, addr, ErrUnsupported)
	}
	return unsafe.Slice((*byte)(p), size), nil
}

// Unmap removes a mapping made by MapShared.
func Unmap(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if err := unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b))); err != nil {
		return fmt.Errorf("uffd: munmap %#x+%#x: %w", Addr(b), len(b), err)
	}
	return nil
}

// Addr returns the address of the first byte of b (0 for an empty slice),
// the form the range operations of FD take.
func Addr(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}
