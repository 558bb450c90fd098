package uffd

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The request numbers as the C preprocessor computes them from
// linux/userfaultfd.h (checked with gcc on the build machine); the POISON
// number follows the same macro for struct uffdio_poison (32 bytes).
func TestIoctlNumbersMatchHeader(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"UFFDIO_API", ioctlAPI, 0xc018aa3f},
		{"UFFDIO_REGISTER", ioctlRegister, 0xc020aa00},
		{"UFFDIO_UNREGISTER", ioctlUnregister, 0x8010aa01},
		{"UFFDIO_WAKE", ioctlWake, 0x8010aa02},
		{"UFFDIO_COPY", ioctlCopy, 0xc028aa03},
		{"UFFDIO_ZEROPAGE", ioctlZeroPage, 0xc020aa04},
		{"UFFDIO_WRITEPROTECT", ioctlWriteProtect, 0xc018aa06},
		{"UFFDIO_CONTINUE", ioctlContinue, 0xc020aa07},
		{"UFFDIO_POISON", ioctlPoison, 0xc020aa08},
		{"USERFAULTFD_IOC_NEW", ioctlDevNew, 0xaa00},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
}

func TestStructSizesMatchIoctlNumbers(t *testing.T) {
	tests := []struct {
		name string
		size uintptr
		req  uintptr
	}{
		{"uffdio_api", unsafe.Sizeof(uffdioAPI{}), ioctlAPI},
		{"uffdio_register", unsafe.Sizeof(uffdioRegister{}), ioctlRegister},
		{"uffdio_range", unsafe.Sizeof(uffdioRange{}), ioctlWake},
		{"uffdio_copy", unsafe.Sizeof(uffdioCopy{}), ioctlCopy},
		{"uffdio_zeropage", unsafe.Sizeof(uffdioZeroPage{}), ioctlZeroPage},
		{"uffdio_writeprotect", unsafe.Sizeof(uffdioWriteProtect{}), ioctlWriteProtect},
		{"uffdio_continue", unsafe.Sizeof(uffdioContinue{}), ioctlContinue},
		{"uffdio_poison", unsafe.Sizeof(uffdioPoison{}), ioctlPoison},
	}
	for _, tt := range tests {
		if enc := tt.req >> 16 & 0x3fff; enc != tt.size {
			t.Errorf("%s: Go size %d, ioctl encodes %d", tt.name, tt.size, enc)
		}
	}
}

func TestMsgEncodeDecode(t *testing.T) {
	tests := []Msg{
		{Event: EventPagefault, Flags: PagefaultFlagWrite | PagefaultFlagWP, Address: 0x600000001000, PTID: 4242},
		{Event: EventFork, UFD: 17},
		{Event: EventRemap, From: 0x1000, To: 0x2000, Len: 0x3000},
		{Event: EventRemove, Start: 0x4000, End: 0x6000},
		{Event: EventUnmap, Start: 0x7000, End: 0x9000},
	}
	for _, want := range tests {
		var b [MsgSize]byte
		want.Encode(b[:])
		got, err := DecodeMsg(b[:])
		if err != nil || got != want {
			t.Errorf("round trip of %v: got %+v, %v", want, got, err)
		}
	}
	// Offsets of struct uffd_msg: event at 0, pagefault flags at 8,
	// address at 16, ptid at 24.
	var b [MsgSize]byte
	b[0] = 0x12
	b[8] = byte(PagefaultFlagMinor)
	b[16], b[17] = 0x00, 0x10
	b[24] = 7
	m, _ := DecodeMsg(b[:])
	if !m.IsPagefault() || !m.IsMinor() || m.IsWP() || m.IsWrite() || m.IsMissing() || m.Address != 0x1000 || m.PTID != 7 {
		t.Errorf("decoded %+v", m)
	}
	if _, err := DecodeMsg(b[:31]); err == nil {
		t.Error("DecodeMsg accepted a short message")
	}
}

func TestFeaturesString(t *testing.T) {
	tests := []struct {
		f    Features
		want string
	}{
		{0, "0"},
		{FeatureMissingShmem, "MISSING_SHMEM"},
		{FeaturePagefaultFlagWP | FeatureMove, "PAGEFAULT_FLAG_WP|MOVE"},
		{0x1ffff, strings.Join(featureNames, "|")},
		{FeatureThreadID | 1<<40, "THREAD_ID|0x10000000000"},
	}
	for _, tt := range tests {
		if got := tt.f.String(); got != tt.want {
			t.Errorf("Features(%#x).String() = %q, want %q", uint64(tt.f), got, tt.want)
		}
	}
	if got := (RegisterMissing | RegisterWP).String(); got != "MISSING|WP" {
		t.Errorf("RegisterMode string %q", got)
	}
	if !Features(0x1ffff).Has(RequiredFeatures) || Features(FeatureMissingShmem).Has(RequiredFeatures) {
		t.Error("Has is wrong")
	}
}

// TestIoctlsAgainstKernel issues every ioctl for real on a registered memfd
// mapping of this process. Nothing touches the mapping, so no fault is
// raised here; a wrong request number or structure layout fails with ENOTTY
// or EINVAL.
func TestIoctlsAgainstKernel(t *testing.T) {
	u, err := Open()
	if err != nil {
		skipOrFail(t, err)
	}
	defer u.Close()
	feats, err := u.API(RequiredFeatures | FeatureMinorShmem)
	if err != nil {
		t.Fatal(err)
	}
	if want := IoctlAPI | IoctlRegister | IoctlUnregister; u.Ioctls()&want != want {
		t.Errorf("UFFDIO_API ioctls %#x lack %#x", u.Ioctls(), want)
	}
	const pages = 5
	ps := PageSize
	fd, err := Memfd("ioctl-test", pages*int64(ps))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	mem, err := MapShared(fd, 0, pages*ps, false)
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(mem)
	addr := Addr(mem)
	page := func(i int) uintptr { return addr + uintptr(i*ps) }

	ioctls, err := u.Register(addr, uintptr(len(mem)), RegisterMissing|RegisterWP|RegisterMinor)
	if err != nil {
		t.Fatal(err)
	}
	want := IoctlWake | IoctlCopy | IoctlZeroPage | IoctlWriteProtect | IoctlContinue
	if feats&FeaturePoison != 0 {
		want |= IoctlPoison
	}
	if ioctls&want != want {
		t.Fatalf("range ioctls %#x lack %#x", ioctls, want&^ioctls)
	}

	data := bytes.Repeat([]byte("uffd"), ps/4)
	if err := u.Copy(page(0), data, true); err != nil {
		t.Fatal(err)
	}
	if err := u.WriteProtect(page(0), uintptr(ps), false, false); err != nil {
		t.Fatal(err)
	}
	if err := u.WriteProtect(page(0), uintptr(ps), true, true); err != nil {
		t.Fatal(err)
	}
	if err := u.ZeroPage(page(1), uintptr(ps)); err != nil {
		t.Fatal(err)
	}
	// CONTINUE maps a page that is in the page cache.
	if _, err := unix.Pwrite(fd, data[:8], int64(2*ps)); err != nil {
		t.Fatal(err)
	}
	if err := u.Continue(page(2), uintptr(ps), false); err != nil {
		t.Fatal(err)
	}
	if feats&FeaturePoison != 0 {
		if err := u.Poison(page(3), uintptr(ps)); err != nil {
			t.Fatal(err)
		}
	}
	if err := u.Wake(addr, uintptr(len(mem))); err != nil {
		t.Fatal(err)
	}

	got := make([]byte, ps)
	if _, err := unix.Pread(fd, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Errorf("page 0 after COPY: %q..., %v", got[:8], err)
	}
	if ok, err := PageAllocated(fd, int64(ps)); err != nil || !ok {
		t.Errorf("page 1 not allocated after ZEROPAGE: %v", err)
	}
	if ok, _ := PageAllocated(fd, int64(4*ps)); ok {
		t.Error("page 4 allocated although nothing touched it")
	}
	// Installing over present pages is refused.
	if err := u.Copy(page(0), data, false); !errors.Is(err, ErrExist) {
		t.Errorf("second COPY: %v, want ErrExist", err)
	}
	if err := u.Continue(page(2), uintptr(ps), false); !errors.Is(err, ErrExist) {
		t.Errorf("second CONTINUE: %v, want ErrExist", err)
	}
	if err := u.Unregister(addr, uintptr(len(mem))); err != nil {
		t.Fatal(err)
	}
	// After UNREGISTER the range ioctls are refused.
	if err := u.Copy(page(4), data, false); err == nil {
		t.Error("COPY into an unregistered range succeeded")
	}
}

func TestRangeValidation(t *testing.T) {
	u := NewFD(-1) // never reaches the kernel
	ps := uintptr(PageSize)
	tests := []struct {
		name string
		err  error
	}{
		{"unaligned copy dst", u.Copy(ps+1, make([]byte, ps), false)},
		{"short copy src", u.Copy(ps, make([]byte, 100), false)},
		{"empty copy", u.Copy(ps, nil, false)},
		{"unaligned zeropage", u.ZeroPage(ps, 100)},
		{"empty wake", u.Wake(ps, 0)},
		{"wrapping wp", u.WriteProtect(^uintptr(0)-ps+1, 2*ps, true, true)},
		{"bad register mode", func() error { _, err := u.Register(ps, ps, 1<<5); return err }()},
	}
	for _, tt := range tests {
		if tt.err == nil || !strings.HasPrefix(tt.err.Error(), "uffd: ") {
			t.Errorf("%s: err = %v, want a validation error", tt.name, tt.err)
		}
	}
}

func skipOrFail(t *testing.T, err error) {
	t.Helper()
	if os.Getenv("DSM_REQUIRE_UFFD") == "1" {
		t.Fatalf("userfaultfd required: %v", err)
	}
	t.Skipf("userfaultfd unavailable: %v", err)
}

func TestIoctlBitsMatchNumbers(t *testing.T) {
	tests := []struct {
		bit uint64
		req uintptr
	}{
		{IoctlRegister, ioctlRegister}, {IoctlUnregister, ioctlUnregister}, {IoctlWake, ioctlWake},
		{IoctlCopy, ioctlCopy}, {IoctlZeroPage, ioctlZeroPage}, {IoctlWriteProtect, ioctlWriteProtect},
		{IoctlContinue, ioctlContinue}, {IoctlPoison, ioctlPoison}, {IoctlAPI, ioctlAPI},
	}
	for _, tt := range tests {
		if want := uint64(1) << (tt.req & 0xff); tt.bit != want {
			t.Errorf("bit %#x for ioctl %#x, want %#x", tt.bit, tt.req, want)
		}
	}
}
