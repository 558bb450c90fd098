//go:build !linux

package net

import (
	"errors"
	stdnet "net"
	"net/netip"
)

var errWouldBlock = errors.New("net: no datagram waiting")

func socketFD(*stdnet.UDPConn) (int, error) {
	return -1, errors.New("net: Config.Driven needs Linux")
}

func recvFrom(int, []byte) (int, netip.AddrPort, error) {
	return 0, netip.AddrPort{}, errWouldBlock
}
