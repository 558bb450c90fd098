package node

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Who may use the control socket. Whoever can connect can attach, and so
// read and write the node's shared memory, and can take its locks: the
// socket is its owner's alone (0600), or its owner's and one group's
// (0660, Config.SocketGroup), whatever the umask, and the daemon checks
// the credentials of every connection (SO_PEERCRED), so that a socket
// whose mode was widened after it was created, or a connection made in
// the moment between bind and chmod, is still refused.

// socketAccess is the resolved policy.
type socketAccess struct {
	uid   int // the daemon's user
	gid   int // Config.SocketGroup, or -1
	group string
}

// resolveSocketGroup turns Config.SocketGroup (a name or a number) into a
// gid; -1 when none is set.
func resolveSocketGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("socket_group %q: %w (give an existing group name or number)", name, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, fmt.Errorf("socket_group %q: gid %q is not a number", name, g.Gid)
	}
	return gid, nil
}

// secure sets the socket file's mode and group.
func (a socketAccess) secure(path string) error {
	mode := os.FileMode(0o600)
	if a.gid >= 0 {
		mode = 0o660
		if err := os.Chown(path, -1, a.gid); err != nil {
			return fmt.Errorf("give socket %s to group %s: %w", path, a.group, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("restrict socket %s to mode %v: %w", path, mode, err)
	}
	return nil
}

// check returns nil if the process at the other end of c may use the
// socket, and otherwise an error that says how to allow it.
func (a socketAccess) check(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("credentials of the connection: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("credentials of the connection: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("credentials of the connection (SO_PEERCRED): %w", cerr)
	}
	uid, gid := int(cred.Uid), int(cred.Gid)
	if uid == a.uid || uid == 0 {
		return nil
	}
	if a.gid >= 0 && (gid == a.gid || inGroup(int(cred.Pid), a.gid)) {
		return nil
	}
	how := "set socket_group (dsmnode serve --socket-group GROUP) to a group of that user's, or run the program as"
	if a.gid >= 0 {
		how = fmt.Sprintf("add that user to group %s, or run the program as", a.group)
	}
	return fmt.Errorf("uid %d (pid %d) may not use this node: its socket belongs to uid %d; %s uid %d",
		uid, cred.Pid, a.uid, how, a.uid)
}

// inGroup reports whether process pid has gid among its supplementary
// groups (SO_PEERCRED gives only the primary one).
func inGroup(pid, gid int) bool {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		rest, ok := strings.CutPrefix(s.Text(), "Groups:")
		if !ok {
			continue
		}
		for _, g := range strings.Fields(rest) {
			if v, err := strconv.Atoi(g); err == nil && v == gid {
				return true
			}
		}
		return false
	}
	return false
}
