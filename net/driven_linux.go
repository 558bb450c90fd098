package net

import (
	"errors"
	"fmt"
	stdnet "net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errWouldBlock: no datagram waits on the socket.
var errWouldBlock = errors.New("net: no datagram waiting")

// rawConn is the UDP socket of a driven transport. It is opened with raw
// system calls and never registered with Go's netpoller: a socket of
// package net is (edge-triggered, for reading and writing), so every
// datagram it received or sent would also wake an idle thread of the Go
// runtime sleeping in the netpoller, for nothing. On a machine of two cores
// that stray wake-up costs as much as the one the event loop needs.
type rawConn struct {
	fd     int
	family int
	local  *stdnet.UDPAddr
	closed atomic.Bool
	// mu keeps the descriptor open while a system call uses it: Close
	// takes it exclusively. Once closed, the number may belong to a socket
	// the process opened since, and a sendto on an unbound UDP socket binds
	// it to an ephemeral port (its owner's bind then fails with EINVAL), so
	// a write that comes late (a wrapper's delayed datagram) must find the
	// socket closed rather than reach that number.
	mu sync.RWMutex
}

// listenRaw opens a non-blocking UDP socket bound to local. v6 asks for an
// IPv6 socket (which also reaches IPv4 peers through mapped addresses).
func listenRaw(local netip.AddrPort, v6 bool) (*rawConn, error) {
	family := unix.AF_INET
	if a := local.Addr(); v6 || a.Is6() && !a.Is4In6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	c := &rawConn{fd: fd, family: family}
	if family == unix.AF_INET6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}
	sa, err := c.sockaddr(local)
	if err == nil {
		err = unix.Bind(fd, sa)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: %w", local, err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		c.local = &stdnet.UDPAddr{IP: stdnet.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		c.local = &stdnet.UDPAddr{IP: stdnet.IP(a.Addr[:]), Port: a.Port}
	}
	// As setSocketBuffers does for a socket of package net.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer)
	return c, nil
}

func (c *rawConn) sockaddr(ap netip.AddrPort) (unix.Sockaddr, error) {
	a := ap.Addr()
	if !a.IsValid() { // an unspecified local address (":0")
		a = netip.IPv6Unspecified()
		if c.family == unix.AF_INET {
			a = netip.IPv4Unspecified()
		}
	}
	if c.family == unix.AF_INET {
		if !a.Is4() && !a.Is4In6() {
			return nil, fmt.Errorf("net: %s is not an IPv4 address", a)
		}
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.Unmap().As4()}, nil
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}, nil
}

// writeTo sends b to ap with a raw sendto(2) that never blocks: a full
// socket buffer drops the datagram, as a full queue on the way would, and
// KCP sends it again.
func (c *rawConn) writeTo(b []byte, ap netip.AddrPort) error {
	var rsa unix.RawSockaddrInet6 // large enough for either family
	var size uintptr
	a := ap.Addr()
	port := ap.Port()
	if c.family == unix.AF_INET {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		sa.Family = unix.AF_INET
		sa.Port = port>>8 | port<<8
		sa.Addr = a.Unmap().As4()
		size = unix.SizeofSockaddrInet4
	} else {
		rsa.Family = unix.AF_INET6
		rsa.Port = port>>8 | port<<8
		rsa.Addr = a.As16()
		size = unix.SizeofSockaddrInet6
	}
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		return stdnet.ErrClosed
	}
	for {
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(c.fd), uintptr(p), uintptr(len(b)),
			unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&rsa)), size)
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		if c.closed.Load() {
			return stdnet.ErrClosed
		}
		return fmt.Errorf("net: sendto %s: %w", ap, e)
	}
}

// ReadFrom implements net.PacketConn for wrappers (Config.WrapConn); the
// transport itself reads with Receive. It waits with poll(2), on the calling
// thread.
func (c *rawConn) ReadFrom(b []byte) (int, stdnet.Addr, error) {
	for {
		c.mu.RLock()
		if c.closed.Load() {
			c.mu.RUnlock()
			return 0, nil, stdnet.ErrClosed
		}
		n, ap, err := recvFrom(c.fd, b)
		c.mu.RUnlock()
		if err == nil {
			return n, stdnet.UDPAddrFromAddrPort(ap), nil
		}
		if err != errWouldBlock {
			return 0, nil, err
		}
		fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
		unix.Poll(fds, 100)
	}
}

// WriteTo implements net.PacketConn.
func (c *rawConn) WriteTo(b []byte, addr stdnet.Addr) (int, error) {
	ua, ok := addr.(*stdnet.UDPAddr)
	if !ok {
		return 0, fmt.Errorf("net: %v is not a UDP address", addr)
	}
	if err := c.writeTo(b, ua.AddrPort()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close implements net.PacketConn.
func (c *rawConn) Close() error {
	if c.closed.Swap(true) {
		return stdnet.ErrClosed
	}
	c.mu.Lock() // waits for the system calls under way
	defer c.mu.Unlock()
	return unix.Close(c.fd)
}

// LocalAddr implements net.PacketConn.
func (c *rawConn) LocalAddr() stdnet.Addr { return c.local }

// SetDeadline implements net.PacketConn; a driven transport sets none.
func (c *rawConn) SetDeadline(time.Time) error { return os.ErrNoDeadline }

// SetReadDeadline implements net.PacketConn; a driven transport sets none.
func (c *rawConn) SetReadDeadline(time.Time) error { return os.ErrNoDeadline }

// SetWriteDeadline implements net.PacketConn; a driven transport sets none.
func (c *rawConn) SetWriteDeadline(time.Time) error { return os.ErrNoDeadline }

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

// recvBatch reads the datagrams waiting on a socket with one recvmmsg(2):
// a wake-up that finds one datagram costs one system call, where reading
// with recvfrom until EAGAIN costs two (a read-fault's daemon made about
// four recvfrom calls per fault, half of them EAGAIN: perf trace -s).
type recvBatch struct {
	bufs  [][]byte
	addrs []unix.RawSockaddrAny
	iovs  []unix.Iovec
	hdrs  []unix.Mmsghdr
}

// newRecvBatch returns a batch of k buffers of size bytes.
func newRecvBatch(k, size int) *recvBatch {
	b := &recvBatch{bufs: make([][]byte, k), addrs: make([]unix.RawSockaddrAny, k),
		iovs: make([]unix.Iovec, k), hdrs: make([]unix.Mmsghdr, k)}
	for i := range k {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.SetIovlen(1)
		b.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.addrs[i]))
	}
	return b
}

// read reads up to max (at most the batch's size) datagrams waiting on fd
// without blocking and returns how many; none is errWouldBlock. Fewer
// than asked means the socket was empty after them.
func (b *recvBatch) read(fd, max int) (int, error) {
	k := min(max, len(b.hdrs))
	for i := range k {
		b.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrAny
		b.hdrs[i].Hdr.Flags = 0
		b.hdrs[i].Len = 0
	}
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd),
			uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(k), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, errWouldBlock
		}
		return 0, fmt.Errorf("net: recvmmsg: %w", e)
	}
}

// datagram returns the i-th datagram of the last read and its source.
func (b *recvBatch) datagram(i int) ([]byte, netip.AddrPort) {
	return b.bufs[i][:b.hdrs[i].Len], sockaddrPort(&b.addrs[i])
}

// sockaddrPort decodes an IPv4 or IPv6 source address (IPv4-mapped IPv6
// addresses come out as IPv4, as the peers' addresses are kept).
func sockaddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		port := sa.Port>>8 | sa.Port<<8 // network byte order
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		port := sa.Port>>8 | sa.Port<<8
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}
