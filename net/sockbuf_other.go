//go:build !linux

package net

import stdnet "net"

// setSocketBuffers asks for socketBuffer bytes of socket buffer each way.
// Best effort: smaller buffers only cost retransmissions under bursts.
func setSocketBuffers(c *stdnet.UDPConn) {
	_ = c.SetReadBuffer(socketBuffer)
	_ = c.SetWriteBuffer(socketBuffer)
}
