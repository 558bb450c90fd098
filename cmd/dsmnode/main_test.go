package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/internal/uffdtest"
)

// The test binary is dsmnode itself when envMain is set: the tests run the
// command line as a user would, in processes of its own.
const envMain = "DSMNODE_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func dsmnode(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envMain+"=1", "DSMNODE="+os.Args[0])
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestRunPrefixesAndEnvironment(t *testing.T) {
	uffdtest.Require(t)
	out, err := dsmnode(t, "run", "-n", "3", "--", "/bin/sh", "-c", `echo "node $DSM_NODE_ID of $DSM_NODES"`)
	require.NoError(t, err, out)
	for _, want := range []string{"[0] node 0 of 3", "[1] node 1 of 3", "[2] node 2 of 3"} {
		require.Contains(t, out, want)
	}
}

func TestRunFailsWhenAnInstanceFails(t *testing.T) {
	uffdtest.Require(t)
	out, err := dsmnode(t, "run", "-n", "2", "--", "/bin/sh", "-c", `exit $DSM_NODE_ID`)
	require.Error(t, err, out)
	require.Contains(t, out, "instance 1")
}

func TestRunStatusOfARunningNode(t *testing.T) {
	uffdtest.Require(t)
	out, err := dsmnode(t, "run", "-n", "2", "--", "/bin/sh", "-c", `"$DSMNODE" status --socket "$DSM_SOCKET"`)
	require.NoError(t, err, out)
	require.Contains(t, out, "[0] node")
	require.Contains(t, out, "pages")
	require.Contains(t, out, "fault latency")
	require.Regexp(t, `peer 1 +127\.0\.0\.1:\d+ up`, out)
}

func TestProbe(t *testing.T) {
	uffdtest.Require(t)
	out, err := dsmnode(t, "probe")
	require.NoError(t, err, out)
	require.Contains(t, out, "result: OK")
	require.Contains(t, out, "WP_HUGETLBFS_SHMEM")
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "usage: dsmnode"},
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"run", "-n", "2"}, "no program given"},
		{[]string{"run", "--", "./no-such-program"}, "no-such-program"},
		{[]string{"serve"}, "give --config"},
		{[]string{"serve", "--id", "0", "--nodes", "2", "--peers", "1"}, "not id=host:port"},
		{[]string{"status", "--socket", "/nonexistent/sock"}, "no dsmnode socket"},
	}
	for _, tc := range cases {
		out, err := dsmnode(t, tc.args...)
		require.Error(t, err, strings.Join(tc.args, " "))
		require.Contains(t, out, tc.want, strings.Join(tc.args, " "))
	}
}

func TestReportOfARunningNode(t *testing.T) {
	uffdtest.Require(t)
	dir := t.TempDir()
	out, err := dsmnode(t, "run", "-n", "2", "--", "/bin/sh", "-c",
		`[ "$DSM_NODE_ID" = 0 ] && "$DSMNODE" report --socket "$DSM_SOCKET" --json > `+dir+`/report.json; "$DSMNODE" report --socket "$DSM_SOCKET"`)
	require.NoError(t, err, out)
	require.Contains(t, out, "[0] layout analyzer:")
	require.Contains(t, out, "no false sharing found")
	b, err := os.ReadFile(dir + "/report.json")
	require.NoError(t, err)
	var rep struct {
		PageSize int `json:"page_size"`
	}
	require.NoError(t, json.Unmarshal(b, &rep), string(b))
	require.Equal(t, os.Getpagesize(), rep.PageSize)
}

// Two nodes started with serve, by flags and by a config file, form a
// cluster that status reports; the one started by flags serves its metrics.
func TestServeTwoNodes(t *testing.T) {
	uffdtest.Require(t)
	dir := t.TempDir()
	addrs := make([]string, 2)
	for i := range addrs {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		require.NoError(t, err)
		addrs[i] = pc.LocalAddr().String()
		pc.Close()
	}
	keyFile := filepath.Join(dir, "key")
	require.NoError(t, os.WriteFile(keyFile, []byte("0123456789abcdef0123456789abcdef\n"), 0o600))
	sock := func(i int) string { return filepath.Join(dir, fmt.Sprintf("n%d.sock", i)) }
	cfg := fmt.Sprintf(`{"id": 1, "nodes": 2, "addr": %q, "peers": {"0": %q}, "key": "0123456789abcdef0123456789abcdef", "socket": %q, "size": 4194304, "mtu": 9000}`,
		addrs[1], addrs[0], sock(1))
	cfgFile := filepath.Join(dir, "node1.json")
	require.NoError(t, os.WriteFile(cfgFile, []byte(cfg), 0o644))
	start := func(args ...string) {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), envMain+"=1")
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	metrics := "127.0.0.1:" + strconv.Itoa(freeTCPPorts(t))
	start("serve", "--id", "0", "--nodes", "2", "--addr", addrs[0], "--peers", "1="+addrs[1],
		"--key-file", keyFile, "--socket", sock(0), "--size", "4194304",
		"--metrics", metrics, "--read-ahead", "0", "--no-hold", "--compress=false", "--fault-timeout", "1m", "--mtu", "1400")
	start("serve", "--config", cfgFile)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := dsmnode(t, "status", "--socket", sock(0))
		if err == nil && strings.Contains(out, " up,") {
			require.Regexp(t, `node +0 of 2`, out)
			require.Contains(t, out, "4194304 bytes")
			require.Contains(t, out, "datagrams of up to 1400 bytes")
			out, err = dsmnode(t, "status", "--socket", sock(1))
			require.NoError(t, err, out)
			require.Contains(t, out, "datagrams of up to 9000 bytes")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the two nodes did not form a cluster: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + metrics + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Contains(t, string(body), `node="0"`)
}
