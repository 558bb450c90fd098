package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/examples/stencil/jacobi"
	"github.com/dsmrt/dsm/internal/uffdtest"
)

// The test binary is the demo when envMain is set, so the test runs it as a
// user does: its own cluster, its own workers, real processes.
const envMain = "STENCIL_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runDemo runs the demo with args and returns what it printed. Whatever
// happens to the test, the demo and the workers it started are stopped.
func runDemo(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), envMain+"=1")
	// A process group of its own holds the demo and its workers, so that
	// they can be stopped together. The daemons have groups of their own
	// and die with the demo (cluster starts them with a parent-death
	// signal), or are stopped by it on SIGTERM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	require.NoError(t, cmd.Start())
	pgid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	err = cmd.Wait()
	return out.String(), errOut.String(), err
}

func TestStencilPassesItsCheck(t *testing.T) {
	uffdtest.Require(t)
	const n, iters = 128, 5
	for _, c := range []struct {
		nodes    int
		prefetch bool
		rc       bool
	}{{1, true, false}, {2, true, false}, {3, true, false}, {2, false, false}, {1, true, true}, {3, true, true}} {
		nodes := c.nodes
		t.Run(fmt.Sprintf("nodes=%d/prefetch=%v/rc=%v", nodes, c.prefetch, c.rc), func(t *testing.T) {
			stdout, stderr, err := runDemo(t, "-nodes", strconv.Itoa(nodes), "-n", strconv.Itoa(n), "-iters", strconv.Itoa(iters), "-json",
				"-prefetch="+strconv.FormatBool(c.prefetch), "-rc="+strconv.FormatBool(c.rc))
			require.NoError(t, err, "demo failed:\n%s\n%s", stdout, stderr)
			var s Summary
			require.NoError(t, json.Unmarshal([]byte(stdout), &s), stdout)
			require.True(t, s.Passed, "the check failed: %v", s.Mismatches)
			require.Empty(t, s.Mismatches)
			require.Equal(t, nodes, s.Nodes)
			require.Equal(t, n, s.N)
			require.Equal(t, iters, s.Iters)
			require.Equal(t, c.rc, s.RC)
			require.Equal(t, nodes > 1 && c.prefetch, s.Prefetch, "prefetch hints are sent on more than one node unless turned off")
			require.Positive(t, s.MsPerIter)
			require.Positive(t, s.MeanMsPerIter)
			// One band per node, covering every row in order, each
			// starting on a page boundary (4 rows of 1 KiB to a page).
			require.Len(t, s.Bands, nodes)
			next := 0
			for i, b := range s.Bands {
				require.Equal(t, i, b.Node)
				require.Equal(t, next, b.Lo, "band %d", i)
				require.Greater(t, b.Hi, b.Lo, "band %d is empty", i)
				require.Zero(t, b.Lo*n*jacobi.CellBytes%os.Getpagesize(), "band %d starts inside a page", i)
				next = b.Hi
			}
			require.Equal(t, n, next)
		})
	}
}

// The text output is what the user reads: the explanation, the figure and
// the check's verdict.
func TestStencilText(t *testing.T) {
	uffdtest.Require(t)
	stdout, stderr, err := runDemo(t, "-nodes", "2", "-n", "64", "-iters", "3")
	require.NoError(t, err, "demo failed:\n%s\n%s", stdout, stderr)
	require.Contains(t, stdout, "Jacobi heat stencil: 64×64")
	require.Contains(t, stdout, "only the halo")
	require.Contains(t, stdout, "node 1: rows 32..63")
	require.Contains(t, stdout, "ms per iteration: ")
	require.Contains(t, stdout, "check: passed")
}

// A node whose check failed makes the run fail, and its mismatch is
// reported, even when another node reported nothing.
func TestSummarizeFailedCheck(t *testing.T) {
	ok := func(node int) jacobi.Result {
		return jacobi.Result{Node: node, Nodes: 3, N: 8, Iters: 2, Lo: node * 2, Hi: node*2 + 2,
			IterNs: []int64{3e6, 1e6}, SweepNs: []int64{2e6, 5e5}, Passed: true}
	}
	s, err := summarize([]jacobi.Result{ok(0), ok(1), ok(2)}, 3, 8, 2)
	require.NoError(t, err)
	require.True(t, s.Passed)
	require.Equal(t, 2.0, s.MsPerIter)
	require.Equal(t, 2.0, s.MeanMsPerIter)
	require.Equal(t, 1.25, s.Bands[0].SweepMs)

	bad := ok(1)
	bad.Passed, bad.Mismatch = false, "cell (3, 4) differs"
	s, err = summarize([]jacobi.Result{ok(0), bad}, 3, 8, 2)
	require.True(t, errors.Is(err, jacobi.ErrMismatch), "%v", err)
	require.False(t, s.Passed)
	require.Equal(t, []string{"node 1: cell (3, 4) differs"}, s.Mismatches)

	s, err = summarize([]jacobi.Result{ok(0), ok(2)}, 3, 8, 2)
	require.ErrorContains(t, err, "no result from node(s) 1")
	require.False(t, errors.Is(err, jacobi.ErrMismatch))
	require.False(t, s.Passed)

	wrong := ok(2)
	wrong.Iters, wrong.IterNs, wrong.SweepNs = 1, wrong.IterNs[:1], wrong.SweepNs[:1]
	_, err = summarize([]jacobi.Result{ok(0), ok(1), wrong}, 3, 8, 2)
	require.ErrorContains(t, err, "node 2 reports 1 iterations")
}
