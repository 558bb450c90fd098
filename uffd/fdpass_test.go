package uffd_test

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/uffd"
)

func unixPair(t *testing.T) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

func sameFile(t *testing.T, a, b int) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestSendRecvFDs(t *testing.T) {
	a, b := unixPair(t)
	memfd := newMemfd(t, 1)
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])

	if err := uffd.SendFDs(a, []byte("geometry"), memfd, pipe[1]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, fds, err := uffd.RecvFDs(b, buf, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if string(buf[:n]) != "geometry" || len(fds) != 2 {
		t.Fatalf("got %q and %d descriptors", buf[:n], len(fds))
	}
	for i, orig := range []int{memfd, pipe[1]} {
		if fds[i] == orig || !sameFile(t, fds[i], orig) {
			t.Errorf("descriptor %d (%d) is not a new descriptor for %d", i, fds[i], orig)
		}
		flags, err := unix.FcntlInt(uintptr(fds[i]), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("received descriptor %d lacks FD_CLOEXEC", fds[i])
		}
	}
	// The received pipe end works.
	if _, err := unix.Write(fds[1], []byte("x")); err != nil {
		t.Fatal(err)
	}
	var one [1]byte
	if _, err := unix.Read(pipe[0], one[:]); err != nil || one[0] != 'x' {
		t.Errorf("pipe read %q, %v", one, err)
	}
}

func TestRecvFDsTruncated(t *testing.T) {
	a, b := unixPair(t)
	memfd := newMemfd(t, 1)
	before := openFDs(t)
	if err := uffd.SendFDs(a, []byte("x"), memfd, memfd, memfd); err != nil {
		t.Fatal(err)
	}
	_, fds, err := uffd.RecvFDs(b, make([]byte, 8), 1)
	if err == nil {
		t.Fatalf("truncated control data not reported; got %v", fds)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open after a truncated receive, %d before: leaked", after, before)
	}
}

func TestSendRecvFDsErrors(t *testing.T) {
	a, b := unixPair(t)
	memfd := newMemfd(t, 1)
	if err := uffd.SendFDs(a, nil, memfd); err == nil {
		t.Error("SendFDs without data accepted")
	}
	if err := uffd.SendFDs(a, []byte("x")); err == nil {
		t.Error("SendFDs without descriptors accepted")
	}
	if _, _, err := uffd.RecvFDs(b, make([]byte, 1), 0); err == nil {
		t.Error("RecvFDs with maxFDs 0 accepted")
	}
	if _, _, err := uffd.RecvFDs(b, nil, 1); err == nil {
		t.Error("RecvFDs without a buffer accepted")
	}
	// The read deadline is honoured.
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := uffd.RecvFDs(b, make([]byte, 1), 1); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("RecvFDs past the deadline: %v", err)
	}
	b.SetReadDeadline(time.Time{})
	// Plain data without descriptors is returned as such.
	a.Write([]byte("plain"))
	buf := make([]byte, 16)
	n, fds, err := uffd.RecvFDs(b, buf, 1)
	if err != nil || string(buf[:n]) != "plain" || len(fds) != 0 {
		t.Errorf("plain data: %q %v %v", buf[:n], fds, err)
	}
	a.Close()
	if _, _, err := uffd.RecvFDs(b, buf, 1); err != io.EOF {
		t.Errorf("after the peer closed: %v, want io.EOF", err)
	}
}
