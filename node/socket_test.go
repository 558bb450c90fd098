package node

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/internal/ctl"
)

// envDialAs makes the test binary a client that asks the daemon at the
// socket path in its value for its status and prints the outcome: it runs
// as another user (dialAs).
const envDialAs = "DSM_NODE_TEST_DIAL"

func TestMain(m *testing.M) {
	RunDaemonIfChild()
	if path := os.Getenv(envDialAs); path != "" {
		var st Status
		if err := ctl.Call(path, ctl.Request{Op: ctl.OpStatus, Version: ctl.Version}, &st); err != nil {
			os.Stdout.WriteString("refused: " + err.Error() + "\n")
			os.Exit(0)
		}
		os.Stdout.WriteString("answered\n")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dialAs asks the daemon at path for its status from a process running as
// uid and gid, and returns what that process printed.
func dialAs(t *testing.T, path string, uid, gid uint32) string {
	t.Helper()
	// The test binary's own directory is closed to other users: run a
	// copy of it from one that is not.
	dir, err := os.MkdirTemp("", "dsm-client-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	exe := filepath.Join(dir, "client")
	b, err := os.ReadFile(os.Args[0])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(exe, b, 0o755))
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envDialAs+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "client as uid %d: %s", uid, out)
	return strings.TrimSpace(string(out))
}

// openDirs lets other users reach the socket at path through its test
// directories (t.TempDir makes them 0700).
func openDirs(t *testing.T, path string) {
	dir := filepath.Dir(path)
	require.NoError(t, os.Chmod(dir, 0o755))
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
}

// The control socket gives whoever can use it the node's memory (attach)
// and its findings: it is created for its owner only, whatever the umask,
// and the daemon checks every connection's credentials (SO_PEERCRED), so
// that a socket whose mode was widened afterwards still refuses others.
func TestControlSocketOwnerOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run a client as another user")
	}
	old := syscall.Umask(0)
	a, b := pair(t, nil)
	start(t, a)
	start(t, b)
	syscall.Umask(old)

	fi, err := os.Stat(a.Socket)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "socket created with umask 000")

	// The owner is served.
	var st Status
	require.NoError(t, ctl.Call(a.Socket, ctl.Request{Op: ctl.OpStatus, Version: ctl.Version}, &st))

	// Another user cannot reach it through the file system...
	openDirs(t, a.Socket)
	const nobody = 65534
	require.Contains(t, dialAs(t, a.Socket, nobody, nobody), "permission denied")
	// ...nor when its mode is widened: the daemon refuses the connection,
	// and says how to allow it.
	require.NoError(t, os.Chmod(a.Socket, 0o666))
	got := dialAs(t, a.Socket, nobody, nobody)
	require.Contains(t, got, "refused: ")
	require.Contains(t, got, "uid 65534")
	require.Contains(t, got, "socket_group")
}

// With SocketGroup the socket is 0660 and owned by that group, and a member
// of the group is served.
func TestControlSocketGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run a client as another user")
	}
	const group = 65534 // nogroup on Debian
	a, b := pair(t, func(c *Config) {})
	a.SocketGroup = "65534"
	start(t, a)
	start(t, b)
	fi, err := os.Stat(a.Socket)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o660), fi.Mode().Perm())
	require.Equal(t, uint32(group), fi.Sys().(*syscall.Stat_t).Gid)
	openDirs(t, a.Socket)
	require.Equal(t, "answered", dialAs(t, a.Socket, 4242, group))
	require.Contains(t, dialAs(t, a.Socket, 4242, 4242), "permission denied")
}
