package net

import (
	"bytes"
	"errors"
	stdnet "net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// recvBatch reads what waits in batches: full batches while more wait, a
// short one when the socket empties, errWouldBlock when nothing waits;
// each datagram whole, with its source.
func TestRecvBatch(t *testing.T) {
	rc, err := listenRaw(netip.MustParseAddrPort("127.0.0.1:0"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	to := rc.local.AddrPort()
	src, err := stdnet.ListenUDP("udp4", &stdnet.UDPAddr{IP: stdnet.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	from := src.LocalAddr().(*stdnet.UDPAddr).AddrPort()

	b := newRecvBatch(8, MaxMTU+1)
	if k, err := b.read(rc.fd, 8); k != 0 || !errors.Is(err, errWouldBlock) {
		t.Fatalf("read of an empty socket = %d, %v; want 0, errWouldBlock", k, err)
	}
	const sent = 20
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 1+i*700) }
	for i := range sent {
		if _, err := src.WriteToUDPAddrPort(payload(i), to); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	for _, c := range []struct{ max, want int }{{8, 8}, {3, 3}, {8, 8}, {8, 1}} {
		k, err := b.read(rc.fd, c.max)
		if err != nil || k != c.want {
			t.Fatalf("read(max %d) after %d of %d datagrams = %d, %v; want %d", c.max, got, sent, k, err, c.want)
		}
		for j := range k {
			d, ap := b.datagram(j)
			if !bytes.Equal(d, payload(got)) || ap != from {
				t.Fatalf("datagram %d: %d bytes from %v, want %d bytes from %v", got, len(d), ap, len(payload(got)), from)
			}
			got++
		}
	}
	if k, err := b.read(rc.fd, 8); k != 0 || !errors.Is(err, errWouldBlock) {
		t.Fatalf("read after all %d datagrams = %d, %v; want 0, errWouldBlock", sent, k, err)
	}
}

// A write on a raw socket after Close reaches no descriptor: once closed,
// the number may belong to a socket the process opened since, and a
// sendto on an unbound UDP socket binds it to an ephemeral port, so that
// its owner's bind then fails with EINVAL. (Seen in CI: a write delayed by
// the fault-injecting wrapper of a closed transport broke the next test's
// net.ListenPacket("udp", "127.0.0.1:0").)
func TestRawConnNoWriteAfterClose(t *testing.T) {
	rc, err := listenRaw(netip.MustParseAddrPort("127.0.0.1:0"), false)
	if err != nil {
		t.Fatal(err)
	}
	old := rc.fd
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	// Take descriptors until the closed number comes back.
	var extra []int
	defer func() {
		for _, fd := range extra {
			unix.Close(fd)
		}
	}()
	reused := -1
	for range 1000 {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, fd)
		if fd == old {
			reused = fd
			break
		}
	}
	if reused < 0 {
		t.Skip("the closed descriptor number did not come back")
	}
	err = rc.writeTo([]byte("late"), netip.MustParseAddrPort("127.0.0.1:9"))
	if !errors.Is(err, stdnet.ErrClosed) {
		t.Errorf("writeTo after Close = %v, want net.ErrClosed", err)
	}
	if _, _, err := rc.ReadFrom(make([]byte, 16)); !errors.Is(err, stdnet.ErrClosed) {
		t.Errorf("ReadFrom after Close = %v, want net.ErrClosed", err)
	}
	sa, err := unix.Getsockname(reused)
	if err != nil {
		t.Fatal(err)
	}
	if port := sa.(*unix.SockaddrInet4).Port; port != 0 {
		t.Fatalf("a write after Close bound the socket that reused its descriptor (port %d)", port)
	}
	if err := unix.Bind(reused, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind of the socket that reused the descriptor: %v", err)
	}
}
