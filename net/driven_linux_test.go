package net

import (
	"bytes"
	"errors"
	stdnet "net"
	"net/netip"
	"testing"
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
