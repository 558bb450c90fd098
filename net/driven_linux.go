package net

import (
	"errors"
	"fmt"
	stdnet "net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errWouldBlock: no datagram waits on the socket.
var errWouldBlock = errors.New("net: no datagram waiting")

// socketFD returns the descriptor behind c. The descriptor stays owned by
// c (Close closes it); it is non-blocking, as every socket of package net.
func socketFD(c *stdnet.UDPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("net: socket descriptor: %w", err)
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, fmt.Errorf("net: socket descriptor: %w", err)
	}
	return fd, nil
}

// recvFrom reads one datagram from the non-blocking socket fd into buf
// with a raw recvfrom(2): not through the netpoller (which would park the
// caller when nothing waits) and without allocating the source address.
func recvFrom(fd int, buf []byte) (int, netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	rsaLen := uint32(unix.SizeofSockaddrAny)
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd),
			uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), unix.MSG_DONTWAIT,
			uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&rsaLen)))
		switch e {
		case 0:
			return int(n), sockaddrPort(&rsa), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, netip.AddrPort{}, errWouldBlock
		}
		return 0, netip.AddrPort{}, fmt.Errorf("net: recvfrom: %w", e)
	}
}

// sockaddrPort decodes an IPv4 or IPv6 source address (IPv4-mapped IPv6
// addresses come out as IPv4, as the peers' addresses are kept).
func sockaddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		port := uint16(sa.Port>>8 | sa.Port<<8) // network byte order
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		port := uint16(sa.Port>>8 | sa.Port<<8)
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}
