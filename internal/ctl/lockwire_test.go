package ctl

import (
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestLockMsgRoundTrip(t *testing.T) {
	for _, m := range []LockMsg{
		{Op: LockOpLockCached, ID: 7, Client: 3, Req: 9, Text: "counter"},
		{Op: LockOpReply, Flags: LockRecall, ID: 7, Token: 1<<32 | 5, Limit: 1<<32 | 0xffff},
		{Op: LockOpBarrier, Count: 1 << 31, Client: 1<<32 - 1, Req: 1<<64 - 1, Text: "é"},
		{Op: LockOpReply, Flags: LockFailed | LockLeader, Node: 65535, Gen: 42, Text: "lock \"x\": not held"},
		{Op: LockOpRecalled, Client: 2, Req: 4, Token: 8},
	} {
		got, err := ParseLockMsg(m.AppendBinary(nil))
		if err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
		if got != m {
			t.Fatalf("round trip of %+v gave %+v", m, got)
		}
	}
}

func TestParseLockMsgRejects(t *testing.T) {
	good := (&LockMsg{Op: LockOpUnlock, Text: "x"}).AppendBinary(nil)
	for name, b := range map[string][]byte{
		"empty":     nil,
		"truncated": good[:lockHeaderLen-1],
		"json":      []byte(`{"op":"lock"}` + string(good[13:])),
		"op 0":      append([]byte{LockMagic, 0}, good[2:]...),
		"op beyond": append([]byte{LockMagic, byte(lockOpLimit)}, good[2:]...),
	} {
		if _, err := ParseLockMsg(b); !errors.Is(err, ErrBadLockMsg) {
			t.Errorf("%s: err %v, want ErrBadLockMsg", name, err)
		}
	}
}

// Read leaves a binary message in Bin and reads JSON as before, on one
// connection.
func TestReadBinaryAndJSON(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Skip(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "seqpacket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	a, b := conn(fds[0]), conn(fds[1])
	defer a.Close()
	defer b.Close()
	m := LockMsg{Op: LockOpLock, ID: 1, Client: 2, Req: 3, Text: "n"}
	if err := WriteLock(a, &m); err != nil {
		t.Fatal(err)
	}
	if err := Write(a, Request{Op: OpStatus, ID: 2}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	var r Request
	if _, err := Read(b, buf, &r); err != nil || r.Op != OpBinary {
		t.Fatalf("binary: %+v, %v", r, err)
	}
	if got, err := ParseLockMsg(r.Bin); err != nil || got != m {
		t.Fatalf("binary: %+v, %v", got, err)
	}
	r = Request{}
	if _, err := Read(b, buf, &r); err != nil || r.Op != OpStatus || r.ID != 2 || r.Bin != nil {
		t.Fatalf("json: %+v, %v", r, err)
	}
}

// FuzzParseLockMsg: no input makes ParseLockMsg panic, every error wraps
// ErrBadLockMsg, and what it accepts encodes back to a message that parses
// to the same thing (a program's lock requests reach the daemon through
// it).
func FuzzParseLockMsg(f *testing.F) {
	for _, m := range []LockMsg{
		{Op: LockOpLockCached, ID: 7, Client: 3, Req: 9, Text: "counter"},
		{Op: LockOpReply, Flags: LockRecall, Token: 1<<32 | 5, Limit: 1<<32 | 0xffff},
		{Op: LockOpBarrier, Count: 3, Text: "phase"},
		{Op: LockOpBarrier, Flags: LockReplyJoined, Node: 3, Count: 2, Text: "phase"},
		{Op: LockOpPrefetch, Text: string(AppendPrefetchHint(AppendPrefetchHint(nil, 4096, 8192, false), 0, 1, true))},
	} {
		f.Add(m.AppendBinary(nil))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseLockMsg(b)
		if err != nil {
			if !errors.Is(err, ErrBadLockMsg) {
				t.Fatalf("error %v does not wrap ErrBadLockMsg", err)
			}
			return
		}
		again, err := ParseLockMsg(m.AppendBinary(nil))
		if err != nil || again != m {
			t.Fatalf("%+v encodes to a message that parses to %+v (%v)", m, again, err)
		}
		if m.Op == LockOpPrefetch {
			hints, err := ParsePrefetchHints(m.Text, nil)
			if err != nil {
				if !errors.Is(err, ErrBadLockMsg) {
					t.Fatalf("error %v does not wrap ErrBadLockMsg", err)
				}
				return
			}
			var text []byte
			for _, h := range hints {
				text = AppendPrefetchHint(text, h.Off, h.Size, h.Write)
			}
			if string(text) != m.Text {
				t.Fatalf("hints %v encode to %x, not %x", hints, text, m.Text)
			}
		}
	})
}

func TestPrefetchHints(t *testing.T) {
	var text []byte
	text = AppendPrefetchHint(text, 4096, 8192, false)
	text = AppendPrefetchHint(text, 1<<40, 1, true)
	m := LockMsg{Op: LockOpPrefetch, Text: string(text)}
	got, err := ParseLockMsg(m.AppendBinary(nil))
	if err != nil {
		t.Fatal(err)
	}
	hints, err := ParsePrefetchHints(got.Text, nil)
	want := []PrefetchHint{{Off: 4096, Size: 8192}, {Off: 1 << 40, Size: 1, Write: true}}
	if err != nil || !slices.Equal(hints, want) {
		t.Fatalf("ParsePrefetchHints = %v, %v; want %v", hints, err, want)
	}
	for _, c := range []struct {
		name, text, want string
	}{
		{"short", string(text[:PrefetchHintLen+3]), "not a multiple of 17"},
		{"unknown intent", string(append(text[:PrefetchHintLen-1:PrefetchHintLen-1], 2)), "prefetch intent 2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParsePrefetchHints(c.text, nil)
			if !errors.Is(err, ErrBadLockMsg) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want ErrBadLockMsg saying %q", err, c.want)
			}
		})
	}
	if none, err := ParsePrefetchHints("", nil); err != nil || len(none) != 0 {
		t.Fatalf("no hints: %v, %v", none, err)
	}
}
