package uffd

import (
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// SendFDs writes data on c with the descriptors fds attached as one
// SCM_RIGHTS control message. data must not be empty: on a stream socket the
// descriptors travel with the first byte of data. The caller keeps its own
// copies of fds open.
func SendFDs(c *net.UnixConn, data []byte, fds ...int) error {
	if len(data) == 0 {
		return errors.New("uffd: SendFDs needs at least one byte of data to carry the descriptors")
	}
	if len(fds) == 0 {
		return errors.New("uffd: SendFDs: no descriptors to send")
	}
	oob := unix.UnixRights(fds...)
	n, oobn, err := c.WriteMsgUnix(data, oob, nil)
	if err != nil {
		return fmt.Errorf("uffd: send %d descriptor(s): %w", len(fds), err)
	}
	if n != len(data) || oobn != len(oob) {
		return fmt.Errorf("uffd: send descriptors: short write (%d of %d bytes, %d of %d control bytes)", n, len(data), oobn, len(oob))
	}
	return nil
}

// RecvFDs reads data into buf and up to maxFDs descriptors passed with
// SCM_RIGHTS. The descriptors are received close-on-exec
// (MSG_CMSG_CLOEXEC) and belong to the caller. If the sender passed more
// descriptors than maxFDs (the control data was truncated) every received
// descriptor is closed and an error returned. At end of stream it returns
// io.EOF. It honours the read deadline of c.
func RecvFDs(c *net.UnixConn, buf []byte, maxFDs int) (n int, fds []int, err error) {
	if maxFDs < 1 {
		return 0, nil, fmt.Errorf("uffd: RecvFDs: maxFDs %d must be at least 1", maxFDs)
	}
	if len(buf) == 0 {
		return 0, nil, errors.New("uffd: RecvFDs needs a non-empty buffer (descriptors arrive with data)")
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, nil, fmt.Errorf("uffd: RecvFDs: %w", err)
	}
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	var oobn, flags int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, nil, fmt.Errorf("uffd: receive descriptors: %w", err)
	}
	fds, perr := parseRights(oob[:oobn])
	if flags&unix.MSG_CTRUNC != 0 {
		closeAll(fds)
		return 0, nil, fmt.Errorf("uffd: receive descriptors: control data truncated (the sender passed more than %d descriptors); all were closed", maxFDs)
	}
	if perr != nil {
		closeAll(fds)
		return 0, nil, fmt.Errorf("uffd: receive descriptors: %w", perr)
	}
	if n == 0 && len(fds) == 0 {
		return 0, nil, io.EOF
	}
	return n, fds, nil
}

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control messages: %w", err)
	}
	var fds []int
	var firstErr error
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("parse SCM_RIGHTS: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, firstErr
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
