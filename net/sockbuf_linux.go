package net

import (
	stdnet "net"

	"golang.org/x/sys/unix"
)

// setSocketBuffers asks for socketBuffer bytes of socket buffer each way,
// beyond net.core.rmem_max/wmem_max when the process may (CAP_NET_ADMIN).
// Best effort: smaller buffers only cost retransmissions under bursts.
func setSocketBuffers(c *stdnet.UDPConn) {
	_ = c.SetReadBuffer(socketBuffer)
	_ = c.SetWriteBuffer(socketBuffer)
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer)
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer)
		})
	}
}
