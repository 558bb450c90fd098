package uffd

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// This file mirrors the kernel's uapi header linux/userfaultfd.h, which
// golang.org/x/sys/unix does not translate. The layouts are checked against
// the running kernel by the tests (every ioctl is issued for real).

// ioctl number encoding of asm-generic/ioctl.h (x86-64, arm64, riscv64).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

// uffdioType is the ioctl "magic" of userfaultfd (UFFDIO and USERFAULTFD_IOC).
const uffdioType = 0xAA

// apiVersion is UFFD_API, the only userfaultfd API version there is.
const apiVersion = 0xAA

// ioctl command indexes (_UFFDIO_*). They are also the bit positions of the
// ioctl bitmasks the kernel returns from UFFDIO_API and UFFDIO_REGISTER.
const (
	nrRegister     = 0x00
	nrUnregister   = 0x01
	nrWake         = 0x02
	nrCopy         = 0x03
	nrZeroPage     = 0x04
	nrMove         = 0x05
	nrWriteProtect = 0x06
	nrContinue     = 0x07
	nrPoison       = 0x08
	nrAPI          = 0x3F
)

// The kernel structures passed to the ioctls. Every field is 64 bits wide,
// so the Go layout equals the C layout with no padding.
type (
	uffdioAPI struct {
		API      uint64
		Features uint64
		Ioctls   uint64
	}
	uffdioRange struct {
		Start uint64
		Len   uint64
	}
	uffdioRegister struct {
		Range  uffdioRange
		Mode   uint64
		Ioctls uint64
	}
	uffdioCopy struct {
		Dst  uint64
		Src  uint64
		Len  uint64
		Mode uint64
		Copy int64
	}
	uffdioZeroPage struct {
		Range    uffdioRange
		Mode     uint64
		ZeroPage int64
	}
	uffdioWriteProtect struct {
		Range uffdioRange
		Mode  uint64
	}
	uffdioContinue struct {
		Range  uffdioRange
		Mode   uint64
		Mapped int64
	}
	uffdioPoison struct {
		Range   uffdioRange
		Mode    uint64
		Updated int64
	}
)

// The ioctl request numbers. UFFDIO_UNREGISTER and UFFDIO_WAKE are declared
// _IOR by the kernel although userland writes them (see the header).
var (
	ioctlAPI          = ioc(iocRead|iocWrite, uffdioType, nrAPI, 24)
	ioctlRegister     = ioc(iocRead|iocWrite, uffdioType, nrRegister, 32)
	ioctlUnregister   = ioc(iocRead, uffdioType, nrUnregister, 16)
	ioctlWake         = ioc(iocRead, uffdioType, nrWake, 16)
	ioctlCopy         = ioc(iocRead|iocWrite, uffdioType, nrCopy, 40)
	ioctlZeroPage     = ioc(iocRead|iocWrite, uffdioType, nrZeroPage, 32)
	ioctlWriteProtect = ioc(iocRead|iocWrite, uffdioType, nrWriteProtect, 24)
	ioctlContinue     = ioc(iocRead|iocWrite, uffdioType, nrContinue, 32)
	ioctlPoison       = ioc(iocRead|iocWrite, uffdioType, nrPoison, 32)

	// ioctlDevNew is USERFAULTFD_IOC_NEW on /dev/userfaultfd.
	ioctlDevNew = ioc(iocNone, uffdioType, 0x00, 0)
)

// Mode bits of the range ioctls.
const (
	copyModeDontWake         = 1 << 0
	copyModeWP               = 1 << 1
	zeroPageModeDontWake     = 1 << 0
	writeProtectModeWP       = 1 << 0
	writeProtectModeDontWake = 1 << 1
	continueModeDontWake     = 1 << 0
	continueModeWP           = 1 << 1
	poisonModeDontWake       = 1 << 0
)

// Flags of userfaultfd(2) and USERFAULTFD_IOC_NEW.
const userModeOnlyFlag = 1 // UFFD_USER_MODE_ONLY

// Ioctl bits reported by UFFDIO_API (for the descriptor) and UFFDIO_REGISTER
// (for a registered range): bit n set means ioctl number n is available.
const (
	IoctlRegister     uint64 = 1 << 0x00 // UFFDIO_REGISTER
	IoctlUnregister   uint64 = 1 << 0x01 // UFFDIO_UNREGISTER
	IoctlWake         uint64 = 1 << 0x02 // UFFDIO_WAKE
	IoctlCopy         uint64 = 1 << 0x03 // UFFDIO_COPY
	IoctlZeroPage     uint64 = 1 << 0x04 // UFFDIO_ZEROPAGE
	IoctlMove         uint64 = 1 << 0x05 // UFFDIO_MOVE
	IoctlWriteProtect uint64 = 1 << 0x06 // UFFDIO_WRITEPROTECT
	IoctlContinue     uint64 = 1 << 0x07 // UFFDIO_CONTINUE
	IoctlPoison       uint64 = 1 << 0x08 // UFFDIO_POISON
	IoctlAPI          uint64 = 1 << 0x3F // UFFDIO_API
)

// RegisterMode selects which faults on a registered range are reported.
type RegisterMode uint64

// Registration modes (UFFDIO_REGISTER_MODE_*); combine them with |.
const (
	// RegisterMissing reports accesses to pages absent from the backing
	// file (for a memfd: holes).
	RegisterMissing RegisterMode = 1 << 0
	// RegisterWP reports writes to pages write-protected with
	// UFFDIO_WRITEPROTECT or installed with Copy(..., wp=true).
	RegisterWP RegisterMode = 1 << 1
	// RegisterMinor reports accesses to pages present in the page cache
	// but not yet mapped by the faulting process (resolve with Continue).
	RegisterMinor RegisterMode = 1 << 2
)

// String lists the mode names, e.g. "MISSING|WP".
func (m RegisterMode) String() string {
	return bitNames(uint64(m), []string{"MISSING", "WP", "MINOR"})
}

// Features is a set of userfaultfd features (UFFD_FEATURE_*), as requested
// from and reported by the UFFDIO_API handshake.
type Features uint64

// The kernel's feature bits. They are untyped constants so that they can be
// passed to API (which takes a uint64) and combined with Features values alike.
const (
	FeaturePagefaultFlagWP  = 1 << 0  // write-protect faults are reported with the WP flag
	FeatureEventFork        = 1 << 1  // fork events (needs CAP_SYS_PTRACE)
	FeatureEventRemap       = 1 << 2  // mremap events
	FeatureEventRemove      = 1 << 3  // madvise(DONTNEED/REMOVE) events
	FeatureMissingHugetlbfs = 1 << 4  // MISSING registration on hugetlbfs
	FeatureMissingShmem     = 1 << 5  // MISSING registration on shmem (memfd, tmpfs)
	FeatureEventUnmap       = 1 << 6  // munmap events
	FeatureSigbus           = 1 << 7  // deliver SIGBUS instead of fault messages
	FeatureThreadID         = 1 << 8  // fault messages carry the faulting thread id
	FeatureMinorHugetlbfs   = 1 << 9  // MINOR registration on hugetlbfs
	FeatureMinorShmem       = 1 << 10 // MINOR registration on shmem
	FeatureExactAddress     = 1 << 11 // fault addresses are not rounded down to the page
	FeatureWPHugetlbfsShmem = 1 << 12 // WP registration on hugetlbfs and shmem
	FeatureWPUnpopulated    = 1 << 13 // WP also covers never-populated anonymous pages
	FeaturePoison           = 1 << 14 // UFFDIO_POISON
	FeatureWPAsync          = 1 << 15 // write protection resolved by the kernel (dirty tracking)
	FeatureMove             = 1 << 16 // UFFDIO_MOVE
)

// RequiredFeatures are the features the DSM runtime depends on: MISSING and
// WP faults on a memfd mapping, with WP faults marked as such. Request them in
// API; ThreadID is useful too but optional.
const RequiredFeatures = FeatureMissingShmem | FeatureWPHugetlbfsShmem | FeaturePagefaultFlagWP

var featureNames = []string{
	"PAGEFAULT_FLAG_WP", "EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE",
	"MISSING_HUGETLBFS", "MISSING_SHMEM", "EVENT_UNMAP", "SIGBUS",
	"THREAD_ID", "MINOR_HUGETLBFS", "MINOR_SHMEM", "EXACT_ADDRESS",
	"WP_HUGETLBFS_SHMEM", "WP_UNPOPULATED", "POISON", "WP_ASYNC", "MOVE",
}

// String lists the feature names separated by "|", e.g.
// "PAGEFAULT_FLAG_WP|MISSING_SHMEM"; unknown bits are shown in hex and an
// empty set as "0".
func (f Features) String() string {
	return bitNames(uint64(f), featureNames)
}

// Has reports whether every feature of want is in f.
func (f Features) Has(want Features) bool { return f&want == want }

func bitNames(v uint64, names []string) string {
	if v == 0 {
		return "0"
	}
	var parts []string
	for i, name := range names {
		if v&(1<<i) != 0 {
			parts = append(parts, name)
			v &^= 1 << i
		}
	}
	if v != 0 {
		parts = append(parts, fmt.Sprintf("%#x", v))
	}
	return strings.Join(parts, "|")
}

// The kinds of userfaultfd messages (UFFD_EVENT_*), the values of Msg.Event.
// Only EventPagefault is delivered unless the matching FeatureEvent* was
// requested in API.
const (
	EventPagefault = 0x12
	EventFork      = 0x13
	EventRemap     = 0x14
	EventRemove    = 0x15
	EventUnmap     = 0x16
)

// EventName returns the name of a Msg.Event value, e.g. "PAGEFAULT".
func EventName(e uint8) string {
	switch e {
	case EventPagefault:
		return "PAGEFAULT"
	case EventFork:
		return "FORK"
	case EventRemap:
		return "REMAP"
	case EventRemove:
		return "REMOVE"
	case EventUnmap:
		return "UNMAP"
	}
	return fmt.Sprintf("EVENT(%#x)", e)
}

// Flags of a page-fault message (UFFD_PAGEFAULT_FLAG_*).
const (
	PagefaultFlagWrite uint64 = 1 << 0 // the access was a write
	PagefaultFlagWP    uint64 = 1 << 1 // the page is write-protected (RegisterWP)
	PagefaultFlagMinor uint64 = 1 << 2 // the page is in the page cache (RegisterMinor)
)

// MsgSize is the size of one struct uffd_msg as read(2) returns it.
const MsgSize = 32

// Msg is a decoded struct uffd_msg. Which fields are meaningful depends on
// Event: Flags, Address and PTID for EventPagefault; UFD for EventFork;
// From, To and Len for EventRemap; Start and End for EventRemove and
// EventUnmap.
type Msg struct {
	Event   uint8  // one of the Event* constants
	Flags   uint64 // PagefaultFlag* bits
	Address uint64 // faulting address (page aligned unless FeatureExactAddress)
	PTID    uint32 // faulting thread id, if FeatureThreadID was enabled

	UFD uint32 // new userfaultfd of the child (EventFork)

	From, To, Len uint64 // EventRemap
	Start, End    uint64 // EventRemove, EventUnmap
}

// IsPagefault reports whether m is a page-fault message.
func (m Msg) IsPagefault() bool { return m.Event == EventPagefault }

// IsWrite reports whether m is a page fault caused by a write.
func (m Msg) IsWrite() bool { return m.IsPagefault() && m.Flags&PagefaultFlagWrite != 0 }

// IsWP reports whether m is a write-protect fault.
func (m Msg) IsWP() bool { return m.IsPagefault() && m.Flags&PagefaultFlagWP != 0 }

// IsMinor reports whether m is a minor fault.
func (m Msg) IsMinor() bool { return m.IsPagefault() && m.Flags&PagefaultFlagMinor != 0 }

// IsMissing reports whether m is a fault on a missing page (neither WP nor
// minor).
func (m Msg) IsMissing() bool {
	return m.IsPagefault() && m.Flags&(PagefaultFlagWP|PagefaultFlagMinor) == 0
}

// String describes the message for logs.
func (m Msg) String() string {
	switch m.Event {
	case EventPagefault:
		kind := "missing"
		switch {
		case m.IsWP():
			kind = "wp"
		case m.IsMinor():
			kind = "minor"
		}
		access := "read"
		if m.IsWrite() {
			access = "write"
		}
		return fmt.Sprintf("pagefault %s %s at %#x tid %d", kind, access, m.Address, m.PTID)
	case EventFork:
		return fmt.Sprintf("fork uffd %d", m.UFD)
	case EventRemap:
		return fmt.Sprintf("remap %#x -> %#x len %d", m.From, m.To, m.Len)
	case EventRemove, EventUnmap:
		return fmt.Sprintf("%s %#x-%#x", strings.ToLower(EventName(m.Event)), m.Start, m.End)
	}
	return EventName(m.Event)
}

// DecodeMsg decodes one 32-byte struct uffd_msg.
func DecodeMsg(b []byte) (Msg, error) {
	if len(b) < MsgSize {
		return Msg{}, fmt.Errorf("uffd: message has %d bytes, want %d", len(b), MsgSize)
	}
	ne := binary.NativeEndian
	m := Msg{Event: b[0]}
	a0, a1, a2 := ne.Uint64(b[8:]), ne.Uint64(b[16:]), ne.Uint64(b[24:])
	switch m.Event {
	case EventPagefault:
		m.Flags, m.Address, m.PTID = a0, a1, ne.Uint32(b[24:])
	case EventFork:
		m.UFD = ne.Uint32(b[8:])
	case EventRemap:
		m.From, m.To, m.Len = a0, a1, a2
	case EventRemove, EventUnmap:
		m.Start, m.End = a0, a1
	}
	return m, nil
}

// Encode writes m into b (at least MsgSize bytes) in the kernel's layout.
// It is the inverse of DecodeMsg, used to build test input.
func (m Msg) Encode(b []byte) {
	ne := binary.NativeEndian
	clear(b[:MsgSize])
	b[0] = m.Event
	switch m.Event {
	case EventPagefault:
		ne.PutUint64(b[8:], m.Flags)
		ne.PutUint64(b[16:], m.Address)
		ne.PutUint32(b[24:], m.PTID)
	case EventFork:
		ne.PutUint32(b[8:], m.UFD)
	case EventRemap:
		ne.PutUint64(b[8:], m.From)
		ne.PutUint64(b[16:], m.To)
		ne.PutUint64(b[24:], m.Len)
	case EventRemove, EventUnmap:
		ne.PutUint64(b[8:], m.Start)
		ne.PutUint64(b[16:], m.End)
	}
}
