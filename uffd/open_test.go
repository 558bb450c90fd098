package uffd

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func attempts(sys, dev, umo unix.Errno) []Attempt {
	wrap := func(m Method, e unix.Errno) error { return fmt.Errorf("uffd: %v: %w", m, e) }
	return []Attempt{
		{Method: MethodSyscall, Err: wrap(MethodSyscall, sys)},
		{Method: MethodDevice, Err: wrap(MethodDevice, dev)},
		{Method: MethodUserModeOnly, Err: wrap(MethodUserModeOnly, umo)},
	}
}

func TestOpenErrorDiagnosis(t *testing.T) {
	locked := env{sysctl: 0, uid: 1000, devInfo: "Dcrw------- owner 0:0"}
	tests := []struct {
		name     string
		attempts []Attempt
		env      env
		kind     error
		contains []string
	}{
		{
			name:     "unprivileged on a kernel older than 5.11",
			attempts: attempts(unix.EPERM, unix.ENOENT, unix.EINVAL),
			env:      locked,
			kind:     ErrPermission,
			contains: []string{"vm.unprivileged_userfaultfd is 0", "CAP_SYS_PTRACE", "sysctl -w vm.unprivileged_userfaultfd=1", "needs Linux 6.1+", "older than 5.11"},
		},
		{
			name:     "device not accessible, seccomp blocks the syscall",
			attempts: attempts(unix.EPERM, unix.EACCES, unix.EPERM),
			env:      env{sysctl: 1, uid: 1000, devInfo: "Dcrw------- owner 0:0"},
			kind:     ErrPermission,
			contains: []string{"seccomp", "uid 1000 may not open /dev/userfaultfd", "setfacl -m u:1000:rw /dev/userfaultfd"},
		},
		{
			name:     "capability present but still refused",
			attempts: attempts(unix.EPERM, unix.ENOENT, unix.EINVAL),
			env:      env{sysctl: 0, capPtrace: true},
			kind:     ErrPermission,
			contains: []string{"seccomp"},
		},
		{
			name:     "kernel without userfaultfd",
			attempts: attempts(unix.ENOSYS, unix.ENOENT, unix.ENOSYS),
			env:      env{sysctl: -1},
			kind:     ErrUnsupported,
			contains: []string{"CONFIG_USERFAULTFD"},
		},
		{
			name:     "device without USERFAULTFD_IOC_NEW",
			attempts: attempts(unix.ENOSYS, unix.ENOTTY, unix.ENOSYS),
			env:      env{sysctl: -1},
			kind:     ErrUnsupported,
			contains: []string{"USERFAULTFD_IOC_NEW"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := error(newOpenError(tt.attempts, tt.env))
			if !errors.Is(err, tt.kind) {
				t.Errorf("errors.Is(err, %v) = false: %v", tt.kind, err)
			}
			other := ErrUnsupported
			if tt.kind == ErrUnsupported {
				other = ErrPermission
			}
			if errors.Is(err, other) {
				t.Errorf("error also matches %v: %v", other, err)
			}
			for _, s := range tt.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error lacks %q:\n%v", s, err)
				}
			}
			var oe *OpenError
			if !errors.As(err, &oe) || len(oe.Attempts) != 3 {
				t.Fatalf("not an *OpenError with 3 attempts: %#v", err)
			}
			if !errors.Is(err, tt.attempts[0].Err) {
				t.Error("the attempts' errors are not wrapped")
			}
		})
	}
}

// TestOpenWith creates a descriptor with each method; a method the process
// is not allowed to use is skipped unless it runs as root, where all must
// work on a 6.1+ kernel.
func TestOpenWith(t *testing.T) {
	if _, err := Open(); err != nil {
		skipOrFail(t, err)
	}
	for _, m := range Methods {
		t.Run(m.String(), func(t *testing.T) {
			u, err := OpenWith(m)
			if err != nil {
				if os.Getuid() != 0 && isPermission(err) {
					t.Skipf("not permitted for this user: %v", err)
				}
				t.Fatal(err)
			}
			defer u.Close()
			if u.Method() != m || u.UserModeOnly() != (m == MethodUserModeOnly) {
				t.Errorf("Method %v UserModeOnly %v", u.Method(), u.UserModeOnly())
			}
			fdFlags, err := unix.FcntlInt(uintptr(u.Fd()), unix.F_GETFD, 0)
			if err != nil || fdFlags&unix.FD_CLOEXEC == 0 {
				t.Errorf("descriptor lacks FD_CLOEXEC (%#x, %v)", fdFlags, err)
			}
			flFlags, err := unix.FcntlInt(uintptr(u.Fd()), unix.F_GETFL, 0)
			if err != nil || flFlags&unix.O_NONBLOCK == 0 {
				t.Errorf("descriptor lacks O_NONBLOCK (%#x, %v)", flFlags, err)
			}
			if got, err := u.API(RequiredFeatures); err != nil || !got.Has(RequiredFeatures) {
				t.Errorf("API: %v, %v", got, err)
			}
		})
	}
	if _, err := OpenWith(Method(99)); err == nil {
		t.Error("OpenWith accepted an unknown method")
	}
}

// TestOpenPrefersFullMode: as root (or with the sysctl set) Open must not
// fall back to user-mode-only.
func TestOpenPrefersFullMode(t *testing.T) {
	u, err := Open()
	if err != nil {
		skipOrFail(t, err)
	}
	defer u.Close()
	if !hasCap(unix.CAP_SYS_PTRACE) && readSysctl() != 1 {
		t.Skip("full mode via the system call is not available to this process")
	}
	if u.Method() != MethodSyscall || u.UserModeOnly() {
		t.Errorf("Open chose %v (user-mode-only %v), want %v", u.Method(), u.UserModeOnly(), MethodSyscall)
	}
}

func TestAPIHandshake(t *testing.T) {
	u, err := Open()
	if err != nil {
		skipOrFail(t, err)
	}
	defer u.Close()
	req := Features(RequiredFeatures | FeatureThreadID)
	got, err := u.API(uint64(req))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Has(req) {
		t.Errorf("kernel offers %v, lacks some of %v", got, req)
	}
	if u.Features() != req {
		t.Errorf("Features() = %v, want %v", u.Features(), req)
	}
	kf, err := KernelFeatures()
	if err != nil || kf != got {
		t.Errorf("KernelFeatures() = %v, %v; API reported %v", kf, err, got)
	}
	// The handshake is accepted once per descriptor.
	if _, err := u.API(uint64(req)); err == nil || !strings.Contains(err.Error(), "only once") {
		t.Errorf("second API: %v, want an error saying it is done once", err)
	}

	// A feature the kernel lacks is named.
	v, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	const bogus = 1 << 40
	_, err = v.API(RequiredFeatures | bogus)
	if !errors.Is(err, ErrUnsupported) || !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "lacks feature(s) 0x10000000000") {
		t.Errorf("API with an unknown feature: %v", err)
	}
}

func TestWaitAndReadWithoutMessages(t *testing.T) {
	u, err := Open()
	if err != nil {
		skipOrFail(t, err)
	}
	defer u.Close()
	// Before UFFDIO_API the kernel reports POLLERR.
	if _, err := u.Wait(0); err == nil || !strings.Contains(err.Error(), "POLLERR") {
		t.Errorf("Wait before API: %v, want POLLERR", err)
	}
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	for _, timeout := range []time.Duration{0, time.Millisecond, 300 * time.Microsecond} {
		ready, err := u.Wait(timeout)
		if ready || err != nil {
			t.Errorf("Wait(%v) = %v, %v; want false, nil", timeout, ready, err)
		}
	}
	msgs := make([]Msg, 4)
	if n, err := u.ReadMsgs(msgs); n != 0 || err != nil {
		t.Errorf("ReadMsgs = %d, %v; want 0, nil", n, err)
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if err := u.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	if _, err := u.Wait(0); !errors.Is(err, ErrClosed) {
		t.Errorf("Wait after Close: %v", err)
	}
	if _, err := u.ReadMsgs(msgs); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadMsgs after Close: %v", err)
	}
	if err := u.Wake(uintptr(PageSize), uintptr(PageSize)); !errors.Is(err, ErrClosed) {
		t.Errorf("Wake after Close: %v", err)
	}
}

// A descriptor in blocking mode cannot be polled reliably; the kernel says
// POLLERR and Wait must report it.
func TestWaitBlockingDescriptor(t *testing.T) {
	u, err := Open()
	if err != nil {
		skipOrFail(t, err)
	}
	defer u.Close()
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(u.Fd(), false); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Wait(0); err == nil || !strings.Contains(err.Error(), "O_NONBLOCK") {
		t.Errorf("Wait on a blocking descriptor: %v", err)
	}
}
