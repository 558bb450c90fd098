package dsm_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/node"
	"github.com/dsmrt/dsm/uffd"
)

// Attach with a wrong socket says what is wrong and what to do.
func TestAttachWrongSocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	stream := filepath.Join(dir, "stream.sock")
	ln, err := net.Listen("unix", stream)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	t.Setenv(dsm.EnvSocket, "")
	cases := []struct{ socket, want string }{
		{"", "set DSM_SOCKET"},
		{filepath.Join(dir, "none"), "no dsmnode socket"},
		{file, "is not a socket"},
		{stream, "another kind"},
	}
	for _, tc := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := dsm.Attach(ctx, dsm.Options{Socket: tc.socket})
		cancel()
		require.ErrorContains(t, err, tc.want, tc.socket)
	}
}

// When the region's address range is taken in the program, Attach fails
// with an error that names the range, and the daemon goes on.
func TestAttachBaseInUse(t *testing.T) {
	c := startCluster(t, 2)
	fd, err := uffd.Memfd("squatter", 4096)
	require.NoError(t, err)
	m, err := uffd.MapShared(fd, node.DefaultBase+8192, 4096, true)
	require.NoError(t, err)
	t.Cleanup(func() { uffd.Unmap(m) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = dsm.Attach(ctx, dsm.Options{Socket: c.Daemons[0].Socket})
	require.ErrorContains(t, err, "already in use")
	st, err := c.Status(0)
	require.NoError(t, err, "the daemon must survive a failed attach")
	require.Zero(t, st.Programs)
}
