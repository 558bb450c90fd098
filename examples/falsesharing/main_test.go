package main

import (
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/internal/uffdtest"
)

// The test binary is the demo when envMain is set, so the test runs it as a
// user does: its own cluster, its own workers, real processes.
const envMain = "FALSESHARING_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestDemoFindsTheFalseSharing(t *testing.T) {
	uffdtest.Require(t)
	out := t.TempDir()
	cmd := exec.Command(os.Args[0], "-iters", "1000000", "-json", "-out", out)
	cmd.Env = append(os.Environ(), envMain+"=1")
	stdout, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		t.Fatalf("demo failed: %v\n%s\n%s", err, stdout, ee.Stderr)
	}
	require.NoError(t, err)
	var res Result
	require.NoError(t, json.Unmarshal(stdout, &res), string(stdout))
	for _, l := range []Layout{res.Packed, res.Padded} {
		require.Equal(t, 2, l.Nodes)
		require.Equal(t, 1000000, l.ItersPerNode)
		require.Positive(t, l.IncrementsPerSec)
		require.Positive(t, l.NsPerIncrement)
	}
	require.Greater(t, res.Packed.Migrations, res.Padded.Migrations, "the packed counters must ping-pong")
	require.Positive(t, res.Slowdown)
	var fs *analyzer.Finding
	for i, f := range res.Findings {
		if f.Class == analyzer.FalseSharing {
			require.Nil(t, fs, "one false-sharing finding, not two")
			fs = &res.Findings[i]
		}
	}
	require.NotNil(t, fs, "no false-sharing finding: %s", stdout)
	var names []string
	for _, v := range fs.Vars {
		names = append(names, v.Name)
	}
	require.ElementsMatch(t, []string{"counter_A", "counter_B"}, names)
	require.Contains(t, fs.Fix, "counter_B")
	require.Len(t, res.Plots, 2)
	for _, p := range res.Plots {
		require.Equal(t, out, filepath.Dir(p))
		f, err := os.Open(p)
		require.NoError(t, err)
		img, err := png.Decode(f)
		f.Close()
		require.NoError(t, err, p)
		b := img.Bounds()
		require.True(t, b.Dx() >= 300 && b.Dy() >= 200 && b.Dx() <= 8192 && b.Dy() <= 8192, "%s is %v", p, b)
	}
}
