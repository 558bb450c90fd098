//go:build !linux

package net

import (
	"errors"
	stdnet "net"
	"net/netip"
)

var errWouldBlock = errors.New("net: no datagram waiting")

// rawConn is the socket of a driven transport, which needs Linux.
type rawConn struct {
	stdnet.PacketConn
	fd int
}

func listenRaw(netip.AddrPort, bool) (*rawConn, error) {
	return nil, errors.New("net: Config.Driven needs Linux")
}

func (c *rawConn) writeTo([]byte, netip.AddrPort) error { return errWouldBlock }

func recvFrom(int, []byte) (int, netip.AddrPort, error) {
	return 0, netip.AddrPort{}, errWouldBlock
}

// recvBatch reads datagrams in batches, which needs Linux.
type recvBatch struct{}

func newRecvBatch(int, int) *recvBatch { return &recvBatch{} }

func (*recvBatch) read(int, int) (int, error) { return 0, errWouldBlock }

func (*recvBatch) datagram(int) ([]byte, netip.AddrPort) { return nil, netip.AddrPort{} }
