package uffd

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// SysctlPath is where the kernel exposes vm.unprivileged_userfaultfd.
const SysctlPath = "/proc/sys/vm/unprivileged_userfaultfd"

// Attempt is one failed way of creating a userfaultfd, with the diagnosis.
type Attempt struct {
	Method Method
	Err    error  // the error of OpenWith
	Reason string // what is missing, in words
	Fix    string // what to do about it ("" when nothing can be done here)
}

// OpenError is returned by Open when no method works. It matches
// ErrPermission when some method was refused for lack of permission (so a
// configuration change can fix it) and ErrUnsupported otherwise.
type OpenError struct {
	Attempts []Attempt
	kind     error
}

// Error lists each attempt with its reason and fix on one line.
func (e *OpenError) Error() string {
	var b strings.Builder
	b.WriteString("uffd: cannot create a userfaultfd")
	for _, a := range e.Attempts {
		fmt.Fprintf(&b, "; %v failed: %s", a.Method, a.Reason)
		if a.Fix != "" {
			fmt.Fprintf(&b, " (fix: %s)", a.Fix)
		}
	}
	return b.String()
}

// Unwrap returns the kind (ErrPermission or ErrUnsupported) and the errors
// of the attempts.
func (e *OpenError) Unwrap() []error {
	errs := []error{e.kind}
	for _, a := range e.Attempts {
		errs = append(errs, a.Err)
	}
	return errs
}

// env is what the diagnosis needs to know about the process and system.
type env struct {
	sysctl    int  // vm.unprivileged_userfaultfd, -1 if unreadable
	capPtrace bool // CAP_SYS_PTRACE in the effective set
	devInfo   string
	uid       int
}

func currentEnv() env {
	e := env{sysctl: readSysctl(), capPtrace: hasCap(unix.CAP_SYS_PTRACE), uid: os.Getuid()}
	if fi, err := os.Stat(DevicePath); err == nil {
		e.devInfo = strings.TrimPrefix(fi.Mode().String(), "D")
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			e.devInfo += fmt.Sprintf(" owner %d:%d", st.Uid, st.Gid)
		}
	}
	return e
}

// readSysctl returns vm.unprivileged_userfaultfd, or -1 if it cannot be
// read (kernel without userfaultfd, or /proc not mounted).
func readSysctl() int {
	b, err := os.ReadFile(SysctlPath)
	if err != nil {
		return -1
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return v
}

// hasCap reports whether capability c is in the effective set of the
// process (read from /proc/self/status).
func hasCap(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<uint(c)) != 0
		}
	}
	return false
}

func isPermission(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
}

const seccompHint = "a seccomp filter or LSM forbids the call (containers: Docker's default seccomp profile blocks userfaultfd; allow it in the profile or run with --security-opt seccomp=unconfined)"

// newOpenError diagnoses why every method failed.
func newOpenError(attempts []Attempt, e env) *OpenError {
	oe := &OpenError{kind: ErrUnsupported}
	for _, a := range attempts {
		a.Reason, a.Fix = diagnose(a.Method, a.Err, e)
		if isPermission(a.Err) {
			oe.kind = ErrPermission
		}
		oe.Attempts = append(oe.Attempts, a)
	}
	return oe
}

func diagnose(m Method, err error, e env) (reason, fix string) {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return err.Error(), ""
	}
	if errno == unix.ENOSYS {
		return "the kernel has no userfaultfd (built without CONFIG_USERFAULTFD) or a seccomp filter hides it",
			"use a kernel with CONFIG_USERFAULTFD=y (Linux 4.11+ for shared memory, 5.19+ for write protection of shared memory)"
	}
	switch m {
	case MethodSyscall:
		if errno == unix.EPERM {
			if e.sysctl == 0 && !e.capPtrace {
				return "vm.unprivileged_userfaultfd is 0 and the process lacks CAP_SYS_PTRACE, so only user-mode-only descriptors are allowed",
					"run `sysctl -w vm.unprivileged_userfaultfd=1` (persist it in /etc/sysctl.d), or give the program CAP_SYS_PTRACE (`setcap cap_sys_ptrace+ep PROGRAM`)"
			}
			return seccompHint, "allow the userfaultfd system call"
		}
	case MethodDevice:
		switch errno {
		case unix.ENOENT:
			return DevicePath + " does not exist (it needs Linux 6.1+; in a container the device must be passed through)",
				"upgrade to Linux 6.1+, or pass the device to the container (--device " + DevicePath + ")"
		case unix.EACCES, unix.EPERM:
			who := fmt.Sprintf("uid %d", e.uid)
			return fmt.Sprintf("%s may not open %s for reading and writing (%s)", who, DevicePath, e.devInfo),
				fmt.Sprintf("grant access, e.g. `setfacl -m u:%d:rw %s` or a udev rule giving a group of this user rw", e.uid, DevicePath)
		case unix.ENOTTY, unix.EINVAL:
			return DevicePath + " does not know USERFAULTFD_IOC_NEW (kernel older than 6.1)", "upgrade to Linux 6.1+"
		}
	case MethodUserModeOnly:
		switch errno {
		case unix.EINVAL:
			return "the kernel does not know UFFD_USER_MODE_ONLY (older than 5.11)", "upgrade to Linux 5.11+, or enable one of the full-mode methods"
		case unix.EPERM:
			return seccompHint, "allow the userfaultfd system call"
		}
	}
	return errno.Error(), ""
}
