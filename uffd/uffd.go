// Package uffd gives the DSM runtime the Linux primitives it is built on:
// userfaultfd (to trap page faults on the shared region and resolve them from
// another process), memfd (the memory that backs the region), hole punching
// (to drop a page so the next access faults again) and SCM_RIGHTS descriptor
// passing (so an attached program can hand its userfaultfd to the node
// daemon).
//
// golang.org/x/sys/unix only knows the userfaultfd system call number; this
// package defines the UFFDIO ioctls, their structures and struct uffd_msg
// from the kernel's uapi header and tests each one against the running
// kernel.
//
// The package is meant for a split where the process that faults and the
// process that serves the faults are different: a page fault is a trap that
// keeps the faulting thread's P, so a Go runtime must never serve faults
// taken by its own threads (see DESIGN.md). The attached program calls
// Open, API and Register and sends the descriptor with SendFDs; the daemon
// wraps it with NewFD, waits with Wait, reads with ReadMsgs and resolves
// faults with Copy, ZeroPage, WriteProtect, Continue and Wake.
//
// Facts about serving another process's faults, checked by the tests:
//
//   - The attached program must keep its own copy of the userfaultfd open.
//     When the last copy is closed the kernel unregisters the range and
//     wakes every waiter, so if the daemon's copy were the only one, the
//     daemon's death would let the program read stale or zero pages.
//   - The descriptor never reports the owner's exit (no POLLHUP); range
//     ioctls then fail with ErrExited. Watch the program's socket instead.
//   - A Go thread blocked in a fault is interrupted by SIGURG (async
//     preemption) about every 10 ms; the access is retried and may report
//     the same fault again. Resolve idempotently: ErrExist from Copy means
//     the page is there and the waiters have been woken.
//   - Under the race detector, a sync/atomic store reads first, so a write
//     to a missing page arrives as a read fault followed by a WP fault.
//   - A user-mode-only descriptor (UserModeOnly) cannot serve faults taken
//     inside system calls: read(2) into the region fails with EFAULT.
package uffd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errors that callers test with errors.Is.
var (
	// ErrPermission means userfaultfd exists but this process may not use
	// it; the error text says which sysctl, capability or device
	// permission to change. It is fs.ErrPermission, so os.ErrPermission
	// matches too.
	ErrPermission = fs.ErrPermission

	// ErrUnsupported means the kernel lacks what was asked for (no
	// userfaultfd at all, too old, or a missing feature). It is
	// errors.ErrUnsupported.
	ErrUnsupported = errors.ErrUnsupported

	// ErrExist is returned (wrapped) by Copy, ZeroPage, Continue and Poison when a
	// page of the range was already present, typically because another
	// resolver won a race. Waiters on the range have been woken when it is
	// returned, so the fault is resolved either way.
	ErrExist = errors.New("page already present")

	// ErrExited means the process whose memory the userfaultfd covers has
	// exited (the kernel answers ESRCH).
	ErrExited = errors.New("the process that owns the registered memory has exited")

	// ErrAddressInUse is returned (wrapped) by MapShared when the fixed
	// address range overlaps an existing mapping.
	ErrAddressInUse = errors.New("address range already in use")

	// ErrClosed is returned by calls on a closed FD.
	ErrClosed = errors.New("uffd: use of closed userfaultfd")
)

// PageSize is the size of a base page, the unit of every range operation.
var PageSize = os.Getpagesize()

// Method is a way to create a userfaultfd.
type Method int

// The creation methods, in the order Open tries them.
const (
	// MethodSyscall is userfaultfd(2) without UFFD_USER_MODE_ONLY: it
	// handles faults taken in kernel mode too (a read(2) into the region,
	// a futex on it). Needs vm.unprivileged_userfaultfd=1 or
	// CAP_SYS_PTRACE.
	MethodSyscall Method = iota + 1
	// MethodDevice is ioctl(USERFAULTFD_IOC_NEW) on /dev/userfaultfd
	// (Linux 6.1+): full mode, for whoever may open the device.
	MethodDevice
	// MethodUserModeOnly is userfaultfd(2) with UFFD_USER_MODE_ONLY
	// (Linux 5.11+): allowed to everyone, but a fault taken in kernel mode
	// fails with EFAULT instead of being reported.
	MethodUserModeOnly
)

// Methods lists every Method in the order Open tries them.
var Methods = []Method{MethodSyscall, MethodDevice, MethodUserModeOnly}

// String names the method.
func (m Method) String() string {
	switch m {
	case MethodSyscall:
		return "userfaultfd(2)"
	case MethodDevice:
		return "/dev/userfaultfd"
	case MethodUserModeOnly:
		return "userfaultfd(2) with UFFD_USER_MODE_ONLY"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// DevicePath is the userfaultfd device node (Linux 6.1+).
const DevicePath = "/dev/userfaultfd"

// FD is a userfaultfd descriptor.
//
// Range operations (Copy, ZeroPage, WriteProtect, Wake, Continue, Poison)
// and ReadMsgs may be called from several goroutines at once; Close must not
// race with any other call.
type FD struct {
	fd           int
	userModeOnly bool
	method       Method
	features     Features // enabled by API
	ioctls       uint64   // reported by API
}

// Open creates a userfaultfd with O_CLOEXEC|O_NONBLOCK, preferring full mode:
// userfaultfd(2), then /dev/userfaultfd, then userfaultfd(2) with
// UFFD_USER_MODE_ONLY. If every method fails the error is an *OpenError that
// says what is missing and how to fix it; errors.Is(err, ErrPermission) or
// errors.Is(err, ErrUnsupported) tells the two cases apart.
func Open() (*FD, error) {
	var attempts []Attempt
	for _, m := range Methods {
		u, err := OpenWith(m)
		if err == nil {
			return u, nil
		}
		attempts = append(attempts, Attempt{Method: m, Err: err})
	}
	return nil, newOpenError(attempts, currentEnv())
}

// OpenWith creates a userfaultfd with one method only. The error is the
// plain errno, wrapped with the method's name; Open explains failures.
func OpenWith(m Method) (*FD, error) {
	const flags = unix.O_CLOEXEC | unix.O_NONBLOCK
	var fd int
	var err error
	switch m {
	case MethodSyscall:
		fd, err = userfaultfd(flags)
	case MethodUserModeOnly:
		fd, err = userfaultfd(flags | userModeOnlyFlag)
	case MethodDevice:
		fd, err = openDevice(flags)
	default:
		return nil, fmt.Errorf("uffd: unknown open method %d", int(m))
	}
	if err != nil {
		return nil, fmt.Errorf("uffd: %v: %w", m, err)
	}
	return &FD{fd: fd, method: m, userModeOnly: m == MethodUserModeOnly}, nil
}

func userfaultfd(flags int) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func openDevice(flags int) (int, error) {
	dev, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(dev)
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), ioctlDevNew, uintptr(flags))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// NewFD wraps a userfaultfd received from another process (see RecvFDs).
// The kernel does not tell whether such a descriptor is user-mode-only; use
// NewFDMode when the sender said so.
func NewFD(fd int) *FD { return &FD{fd: fd} }

// NewFDMode is NewFD for a descriptor known to be created with (or without)
// UFFD_USER_MODE_ONLY.
func NewFDMode(fd int, userModeOnly bool) *FD {
	return &FD{fd: fd, userModeOnly: userModeOnly}
}

// Fd returns the descriptor number, or -1 after Close.
func (u *FD) Fd() int { return u.fd }

// UserModeOnly reports whether the descriptor was created with
// UFFD_USER_MODE_ONLY: faults taken by the kernel on behalf of the process
// (system calls reading or writing the region) then fail with EFAULT instead
// of being reported.
func (u *FD) UserModeOnly() bool { return u.userModeOnly }

// Method returns how the descriptor was created (0 for NewFD).
func (u *FD) Method() Method { return u.method }

// Features returns the features enabled by a successful API call on this FD
// (0 before, and for descriptors wrapped by NewFD).
func (u *FD) Features() Features { return u.features }

// Close closes the descriptor. When the last reference to a userfaultfd is
// closed, the kernel unregisters its ranges and wakes every waiting fault,
// which then proceeds as if no userfaultfd existed.
func (u *FD) Close() error {
	if u.fd < 0 {
		return ErrClosed
	}
	err := unix.Close(u.fd)
	u.fd = -1
	if err != nil {
		return fmt.Errorf("uffd: close: %w", err)
	}
	return nil
}

func (u *FD) ioctl(req uintptr, arg unsafe.Pointer) error {
	if u.fd < 0 {
		return ErrClosed
	}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(u.fd), req, uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

// API performs the UFFDIO_API handshake, which must precede Register, and
// enables the requested features (Feature* bits). It returns every feature
// the kernel offers (a superset of features). A userfaultfd accepts the handshake only
// once. When the kernel lacks a requested feature the error names it and
// matches ErrUnsupported.
func (u *FD) API(features uint64) (got Features, err error) {
	a := uffdioAPI{API: apiVersion, Features: features}
	if err := u.ioctl(ioctlAPI, unsafe.Pointer(&a)); err != nil {
		return 0, u.apiError(Features(features), err)
	}
	u.features = Features(features)
	u.ioctls = a.Ioctls
	return Features(a.Features), nil
}

func (u *FD) apiError(req Features, err error) error {
	if errors.Is(err, ErrClosed) {
		return err
	}
	if err == unix.EPERM && req&FeatureEventFork != 0 {
		return fmt.Errorf("uffd: UFFDIO_API: feature EVENT_FORK needs CAP_SYS_PTRACE: %w", err)
	}
	if err != unix.EINVAL {
		return fmt.Errorf("uffd: UFFDIO_API features %v: %w", req, err)
	}
	// The kernel zeroes the answer on failure; ask a fresh descriptor what
	// it supports to name the missing features.
	avail, aerr := KernelFeatures()
	if aerr != nil {
		return fmt.Errorf("uffd: UFFDIO_API features %v: %w (could not list the kernel's features: %v)", req, err, aerr)
	}
	if missing := req &^ avail; missing != 0 {
		return fmt.Errorf("uffd: UFFDIO_API: this kernel lacks feature(s) %v (it has %v); upgrade the kernel or do not request them: %w (%w)",
			missing, avail, ErrUnsupported, err)
	}
	return fmt.Errorf("uffd: UFFDIO_API: the kernel refused features %v although it has them; the handshake can be done only once per userfaultfd: %w", req, err)
}

// KernelFeatures reports every feature the running kernel offers, using a
// throwaway userfaultfd.
func KernelFeatures() (Features, error) {
	p, err := Open()
	if err != nil {
		return 0, err
	}
	defer p.Close()
	return p.API(0)
}

// Ioctls returns the ioctl bits (Ioctl*) UFFDIO_API reported for the
// descriptor (0 before API and for descriptors wrapped by NewFD).
func (u *FD) Ioctls() uint64 { return u.ioctls }

// Register starts reporting faults of the given modes on [addr, addr+length),
// which must be page aligned and mapped in the process that created the
// descriptor. It returns the range ioctls the kernel allows there (Ioctl*).
func (u *FD) Register(addr, length uintptr, mode RegisterMode) (ioctls uint64, err error) {
	if err := checkRange("UFFDIO_REGISTER", addr, length); err != nil {
		return 0, err
	}
	if mode == 0 || mode&^(RegisterMissing|RegisterWP|RegisterMinor) != 0 {
		return 0, fmt.Errorf("uffd: UFFDIO_REGISTER: invalid mode %v; use RegisterMissing, RegisterWP and RegisterMinor", mode)
	}
	r := uffdioRegister{Range: uffdioRange{uint64(addr), uint64(length)}, Mode: uint64(mode)}
	if err := u.ioctl(ioctlRegister, unsafe.Pointer(&r)); err != nil {
		hint := ""
		switch err {
		case unix.EINVAL:
			hint = " (is the whole range mapped, does the mapping type support this mode, and was API called first?)"
		case unix.EBUSY:
			hint = " (part of the range is registered with another userfaultfd)"
		}
		return 0, fmt.Errorf("uffd: UFFDIO_REGISTER %#x+%#x mode %v%s: %w", addr, length, mode, hint, mapErrno(err))
	}
	return r.Ioctls, nil
}

// Unregister stops reporting faults on [addr, addr+length) and wakes the
// faults waiting there. Any holder of the descriptor may call it.
func (u *FD) Unregister(addr, length uintptr) error {
	if err := checkRange("UFFDIO_UNREGISTER", addr, length); err != nil {
		return err
	}
	r := uffdioRange{uint64(addr), uint64(length)}
	if err := u.ioctl(ioctlUnregister, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("uffd: UFFDIO_UNREGISTER %#x+%#x: %w", addr, length, mapErrno(err))
	}
	return nil
}

// maxAgain bounds the retries of an ioctl the kernel answers with EAGAIN
// without progress (the address space is changing under a non-cooperative
// event); it is far above anything seen in practice.
const maxAgain = 10000

// Copy atomically fills the missing pages at dst with src (UFFDIO_COPY) and
// wakes the faults waiting on them. With wp the pages are installed
// write-protected, so a later write raises a WP fault (needs RegisterWP).
// dst must be page aligned and len(src) a non-zero multiple of PageSize; src
// is read from this process's memory.
//
// A partial copy (EAGAIN) is continued where the kernel stopped, as the
// kernel documentation prescribes. If a page is already present the rest of
// the range is woken and the error wraps ErrExist.
func (u *FD) Copy(dst uintptr, src []byte, wp bool) error {
	n := uintptr(len(src))
	if err := checkRange("UFFDIO_COPY", dst, n); err != nil {
		return err
	}
	var mode uint64
	if wp {
		mode |= copyModeWP
	}
	done := uintptr(0)
	for again := 0; done < n; {
		c := uffdioCopy{
			Dst:  uint64(dst + done),
			Src:  uint64(uintptr(unsafe.Pointer(&src[done]))),
			Len:  uint64(n - done),
			Mode: mode,
		}
		err := u.ioctl(ioctlCopy, unsafe.Pointer(&c))
		runtime.KeepAlive(src)
		if err == nil {
			return nil
		}
		if c.Copy > 0 {
			// Partial progress: the copied part was woken by the kernel.
			done += uintptr(c.Copy)
			again = 0
			continue
		}
		if err == unix.EAGAIN {
			if again++; again > maxAgain {
				return fmt.Errorf("uffd: UFFDIO_COPY %#x+%#x: no progress after %d retries: %w", dst+done, n-done, maxAgain, err)
			}
			runtime.Gosched()
			continue
		}
		if err == unix.EEXIST {
			return u.existErr("UFFDIO_COPY", dst+done, n-done)
		}
		return fmt.Errorf("uffd: UFFDIO_COPY %#x+%#x: %w", dst+done, n-done, mapErrno(err))
	}
	return nil
}

// existErr wakes [addr, addr+n): a fault waiting there would otherwise sleep
// forever, since the ioctl that failed with EEXIST woke nobody.
func (u *FD) existErr(op string, addr, n uintptr) error {
	if werr := u.Wake(addr, n); werr != nil {
		return fmt.Errorf("uffd: %s %#x+%#x: %w (%w), and waking the range failed: %v", op, addr, n, ErrExist, unix.EEXIST, werr)
	}
	return fmt.Errorf("uffd: %s %#x+%#x: %w (%w)", op, addr, n, ErrExist, unix.EEXIST)
}

// ZeroPage fills the missing pages of [dst, dst+length) with zeros
// (UFFDIO_ZEROPAGE) and wakes the faults waiting on them. ErrExist and
// EAGAIN are handled as in Copy.
func (u *FD) ZeroPage(dst, length uintptr) error {
	if err := checkRange("UFFDIO_ZEROPAGE", dst, length); err != nil {
		return err
	}
	done := uintptr(0)
	for again := 0; done < length; {
		z := uffdioZeroPage{Range: uffdioRange{uint64(dst + done), uint64(length - done)}}
		err := u.ioctl(ioctlZeroPage, unsafe.Pointer(&z))
		if err == nil {
			return nil
		}
		if z.ZeroPage > 0 {
			done += uintptr(z.ZeroPage)
			again = 0
			continue
		}
		if err == unix.EAGAIN {
			if again++; again > maxAgain {
				return fmt.Errorf("uffd: UFFDIO_ZEROPAGE %#x+%#x: no progress after %d retries: %w", dst+done, length-done, maxAgain, err)
			}
			runtime.Gosched()
			continue
		}
		if err == unix.EEXIST {
			return u.existErr("UFFDIO_ZEROPAGE", dst+done, length-done)
		}
		return fmt.Errorf("uffd: UFFDIO_ZEROPAGE %#x+%#x: %w", dst+done, length-done, mapErrno(err))
	}
	return nil
}

// Continue maps pages already present in the page cache into the faulting
// process (UFFDIO_CONTINUE), resolving MINOR faults, and wakes the waiters.
// With wp the pages are mapped write-protected. ErrExist and EAGAIN are
// handled as in Copy.
func (u *FD) Continue(addr, length uintptr, wp bool) error {
	if err := checkRange("UFFDIO_CONTINUE", addr, length); err != nil {
		return err
	}
	var mode uint64
	if wp {
		mode |= continueModeWP
	}
	done := uintptr(0)
	for again := 0; done < length; {
		c := uffdioContinue{Range: uffdioRange{uint64(addr + done), uint64(length - done)}, Mode: mode}
		err := u.ioctl(ioctlContinue, unsafe.Pointer(&c))
		if err == nil {
			return nil
		}
		if c.Mapped > 0 {
			done += uintptr(c.Mapped)
			again = 0
			continue
		}
		if err == unix.EAGAIN {
			if again++; again > maxAgain {
				return fmt.Errorf("uffd: UFFDIO_CONTINUE %#x+%#x: no progress after %d retries: %w", addr+done, length-done, maxAgain, err)
			}
			runtime.Gosched()
			continue
		}
		if err == unix.EEXIST {
			return u.existErr("UFFDIO_CONTINUE", addr+done, length-done)
		}
		return fmt.Errorf("uffd: UFFDIO_CONTINUE %#x+%#x: %w", addr+done, length-done, mapErrno(err))
	}
	return nil
}

// Poison marks the missing pages of [addr, addr+length) as poisoned
// (UFFDIO_POISON, needs FeaturePoison): an access raises SIGBUS instead of a
// fault message. It wakes the waiters, which then receive the SIGBUS. Use it
// to make a program fail loudly on a page that can no longer be served.
func (u *FD) Poison(addr, length uintptr) error {
	if err := checkRange("UFFDIO_POISON", addr, length); err != nil {
		return err
	}
	done := uintptr(0)
	for again := 0; done < length; {
		p := uffdioPoison{Range: uffdioRange{uint64(addr + done), uint64(length - done)}}
		err := u.ioctl(ioctlPoison, unsafe.Pointer(&p))
		if err == nil {
			return nil
		}
		if p.Updated > 0 {
			done += uintptr(p.Updated)
			again = 0
			continue
		}
		if err == unix.EAGAIN {
			if again++; again > maxAgain {
				return fmt.Errorf("uffd: UFFDIO_POISON %#x+%#x: no progress after %d retries: %w", addr+done, length-done, maxAgain, err)
			}
			runtime.Gosched()
			continue
		}
		if err == unix.EEXIST {
			return u.existErr("UFFDIO_POISON", addr+done, length-done)
		}
		return fmt.Errorf("uffd: UFFDIO_POISON %#x+%#x: %w", addr+done, length-done, mapErrno(err))
	}
	return nil
}

// WriteProtect sets (protect) or clears write protection on the present
// pages of [addr, addr+length) (UFFDIO_WRITEPROTECT; the range must be
// registered with RegisterWP). Clearing wakes the faults waiting on the
// range unless wake is false (UFFDIO_WRITEPROTECT_MODE_DONTWAKE; call Wake
// later). wake is ignored when protecting: the kernel wakes no one then.
func (u *FD) WriteProtect(addr, length uintptr, protect bool, wake bool) error {
	if err := checkRange("UFFDIO_WRITEPROTECT", addr, length); err != nil {
		return err
	}
	var mode uint64
	switch {
	case protect:
		mode = writeProtectModeWP
	case !wake:
		mode = writeProtectModeDontWake
	}
	w := uffdioWriteProtect{Range: uffdioRange{uint64(addr), uint64(length)}, Mode: mode}
	for again := 0; ; again++ {
		err := u.ioctl(ioctlWriteProtect, unsafe.Pointer(&w))
		if err == nil {
			return nil
		}
		if err == unix.EAGAIN && again < maxAgain {
			runtime.Gosched()
			continue
		}
		return fmt.Errorf("uffd: UFFDIO_WRITEPROTECT %#x+%#x protect=%v: %w", addr, length, protect, mapErrno(err))
	}
}

// Wake wakes the faults waiting on [addr, addr+length) (UFFDIO_WAKE). A woken
// thread retries its access, and faults again if the page is still missing
// or protected.
func (u *FD) Wake(addr, length uintptr) error {
	if err := checkRange("UFFDIO_WAKE", addr, length); err != nil {
		return err
	}
	r := uffdioRange{uint64(addr), uint64(length)}
	if err := u.ioctl(ioctlWake, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("uffd: UFFDIO_WAKE %#x+%#x: %w", addr, length, mapErrno(err))
	}
	return nil
}

// SetNonblock switches the descriptor between non-blocking mode (as Open
// creates it; use Wait then ReadMsgs) and blocking mode (ReadMsgs sleeps in
// read(2) until a message arrives; Wait then reports POLLERR). The mode
// belongs to the open file description, so it is shared with every process
// holding the descriptor.
func (u *FD) SetNonblock(nonblocking bool) error {
	if u.fd < 0 {
		return ErrClosed
	}
	if err := unix.SetNonblock(u.fd, nonblocking); err != nil {
		return fmt.Errorf("uffd: set non-blocking=%v: %w", nonblocking, err)
	}
	return nil
}

// maxBatch bounds the messages one ReadMsgs call reads.
const maxBatch = 64

// ReadMsgs reads up to len(msgs) (at most 64) pending messages with one
// read(2) and decodes them into msgs. It returns 0, nil when nothing is
// pending (EAGAIN on the non-blocking descriptor). On a descriptor in
// blocking mode it waits for a message.
func (u *FD) ReadMsgs(msgs []Msg) (int, error) {
	if u.fd < 0 {
		return 0, ErrClosed
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	var buf [maxBatch * MsgSize]byte
	want := min(len(msgs), maxBatch) * MsgSize
	for {
		n, err := unix.Read(u.fd, buf[:want])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, fmt.Errorf("uffd: read: %w", err)
		case n%MsgSize != 0:
			return 0, fmt.Errorf("uffd: read returned %d bytes, not a multiple of the %d-byte message", n, MsgSize)
		}
		for i := 0; i < n/MsgSize; i++ {
			msgs[i], _ = DecodeMsg(buf[i*MsgSize:])
		}
		return n / MsgSize, nil
	}
}

// Wait polls the descriptor for a pending message for up to timeout (a
// negative timeout waits forever, zero does not wait). It blocks the calling
// OS thread, never the netpoller. POLLERR (descriptor not in non-blocking
// mode, or API not done) and POLLHUP/POLLNVAL are reported as errors.
func (u *FD) Wait(timeout time.Duration) (readable bool, err error) {
	if u.fd < 0 {
		return false, ErrClosed
	}
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		ms := -1
		if timeout >= 0 {
			ms = 0
			if timeout > 0 {
				left := time.Until(deadline)
				if left < 0 {
					left = 0
				}
				ms = int((left + time.Millisecond - 1) / time.Millisecond)
			}
		}
		fds := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("uffd: poll: %w", err)
		}
		if n == 0 {
			return false, nil
		}
		re := fds[0].Revents
		switch {
		case re&unix.POLLNVAL != 0:
			return false, fmt.Errorf("uffd: poll: descriptor %d is not open (POLLNVAL)", u.fd)
		case re&unix.POLLERR != 0:
			return false, fmt.Errorf("uffd: poll: POLLERR: the userfaultfd must be non-blocking (O_NONBLOCK) and have completed UFFDIO_API")
		case re&unix.POLLHUP != 0:
			return false, fmt.Errorf("uffd: poll: POLLHUP on userfaultfd")
		}
		return re&unix.POLLIN != 0, nil
	}
}

func checkRange(op string, addr, length uintptr) error {
	ps := uintptr(PageSize)
	switch {
	case length == 0:
		return fmt.Errorf("uffd: %s: empty range at %#x", op, addr)
	case addr%ps != 0 || length%ps != 0:
		return fmt.Errorf("uffd: %s: range %#x+%#x is not aligned to the %d-byte page", op, addr, length, ps)
	case addr+length < addr:
		return fmt.Errorf("uffd: %s: range %#x+%#x wraps around", op, addr, length)
	}
	return nil
}

// mapErrno adds the package's sentinel errors to errnos that have one.
func mapErrno(err error) error {
	switch err {
	case unix.ESRCH:
		return fmt.Errorf("%w (%w)", ErrExited, err)
	case unix.EEXIST:
		return fmt.Errorf("%w (%w)", ErrExist, err)
	}
	return err
}
