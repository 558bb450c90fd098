package main

import (
	"bufio"
	"encoding/json"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/internal/uffdtest"
)

// buildFalseSharing builds the false-sharing demo, whose workers run under
// dsmnode run when told their layout by the environment.
func buildFalseSharing(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "falsesharing")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/dsmrt/dsm/examples/falsesharing").CombinedOutput()
	require.NoError(t, err, string(out))
	return bin
}

// The demo's packed layout under dsmnode run: the merged report of both
// nodes names both counters, the status of each node is printed, and the
// region base given reaches the daemons.
func TestRunReportAndStatus(t *testing.T) {
	uffdtest.Require(t)
	demo := buildFalseSharing(t)
	dir := filepath.Join(t.TempDir(), "report")
	cmd := exec.Command(os.Args[0], "run", "-n", "2", "--report", dir, "--status", "--base", "0x500000000000",
		"--read-ahead", "0", "--compress", "--", demo)
	cmd.Env = append(os.Environ(), envMain+"=1", "DSM_FS_LAYOUT=packed", "DSM_FS_ITERS=200000", "DSM_FS_YIELD=1")
	b, err := cmd.CombinedOutput()
	out := string(b)
	require.NoError(t, err, out)

	require.Contains(t, out, "[0] RESULT")
	require.Contains(t, out, "[1] RESULT")
	for _, re := range []string{`node +0 of 2`, `node +1 of 2`, `region +0x500000000000, `} {
		require.Regexp(t, re, out)
	}
	require.Regexp(t, `node 0: socket /\S+/node0\.sock`, out)
	for _, f := range []string{"report.txt", "report.json", "heatmap.png", "variables.png"} {
		require.Contains(t, out, "wrote "+filepath.Join(dir, f))
	}

	txt, err := os.ReadFile(filepath.Join(dir, "report.txt"))
	require.NoError(t, err)
	require.Contains(t, string(txt), "merged from the reports of nodes 0 and 1")
	require.Regexp(t, `counter_A \(node 0\) and counter_B \(node 1\) share a page`, string(txt))

	js, err := os.ReadFile(filepath.Join(dir, "report.json"))
	require.NoError(t, err)
	var rep struct {
		analyzer.Report
		Plots []string `json:"plots"`
	}
	require.NoError(t, json.Unmarshal(js, &rep))
	require.Equal(t, 2, rep.Parts)
	require.Equal(t, []analyzer.Recorder{{Node: 0, Sent: rep.Recorders[0].Sent}, {Node: 1, Sent: rep.Recorders[1].Sent}}, rep.Recorders)
	var f analyzer.Finding
	for _, x := range rep.Findings {
		if strings.Contains(x.Summary, "counter_A") {
			f = x
		}
	}
	require.Equal(t, analyzer.FalseSharing, f.Class, f.String())
	require.Equal(t, []uint16{0, 1}, f.Nodes)
	writers := map[string][]uint16{}
	for _, v := range f.Vars {
		writers[v.Name] = v.WrittenBy
	}
	require.Equal(t, map[string][]uint16{"counter_A": {0}, "counter_B": {1}}, writers, f.String())
	// Both ends recorded the ownership transfers; the totals count them
	// once, the finding sums the records.
	require.Positive(t, rep.Totals.Duplicates)
	require.GreaterOrEqual(t, rep.Totals.Migrations+rep.Totals.Duplicates, f.Migrations)
	require.Len(t, rep.Plots, 2)
	for _, p := range rep.Plots {
		fh, err := os.Open(p)
		require.NoError(t, err)
		_, err = png.Decode(fh)
		fh.Close()
		require.NoError(t, err, p)
	}
}

// freeTCPPorts returns a port p such that p and p+1 were free on loopback.
func freeTCPPorts(t *testing.T) int {
	t.Helper()
	for range 100 {
		l0, err := net.Listen("tcp4", "127.0.0.1:0")
		require.NoError(t, err)
		p := l0.Addr().(*net.TCPAddr).Port
		l1, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(p+1))
		l0.Close()
		if err == nil {
			l1.Close()
			return p
		}
	}
	t.Fatal("no two consecutive free TCP ports on loopback")
	return 0
}

// While dsmnode run lives, the sockets it prints answer dsmnode status and
// report, and each node serves its metrics on the port it was given.
func TestRunSocketsAndMetricsWhileLive(t *testing.T) {
	uffdtest.Require(t)
	dir := t.TempDir()
	done := filepath.Join(dir, "done")
	port := freeTCPPorts(t)
	cmd := exec.Command(os.Args[0], "run", "-n", "2", "--metrics", "127.0.0.1:"+strconv.Itoa(port), "--",
		"/bin/sh", "-c", `while [ ! -e "$0" ]; do sleep 0.05; done`, done)
	cmd.Env = append(os.Environ(), envMain+"=1")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// Told to stop, dsmnode stops its programs and daemons itself.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})

	line := regexp.MustCompile(`^dsmnode run: node (\d): socket (\S+), metrics (http://\S+)$`)
	sockets, urls := map[string]string{}, map[string]string{}
	sc := bufio.NewScanner(stderr)
	for len(sockets) < 2 && sc.Scan() {
		if m := line.FindStringSubmatch(sc.Text()); m != nil {
			sockets[m[1]], urls[m[1]] = m[2], m[3]
		}
	}
	require.Len(t, sockets, 2, "dsmnode run did not print both nodes' sockets")
	go io.Copy(io.Discard, stderr) // the daemons' log, if any
	require.Equal(t, "http://127.0.0.1:"+strconv.Itoa(port+1)+"/metrics", urls["1"])

	out, err := dsmnode(t, "status", "--socket", sockets["1"])
	require.NoError(t, err, out)
	require.Regexp(t, `node +1 of 2`, out)
	out, err = dsmnode(t, "report", "--socket", sockets["0"], "--json")
	require.NoError(t, err, out)
	var rep analyzer.Report
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	require.Equal(t, []analyzer.Recorder{{Node: 0}}, rep.Recorders)

	for i, u := range []string{urls["0"], urls["1"]} {
		resp, err := http.Get(u)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.Contains(t, string(body), `node="`+strconv.Itoa(i)+`"`)
	}

	require.NoError(t, os.WriteFile(done, nil, 0o644))
	<-exited
	require.NoError(t, waitErr)
	_, err = os.Stat(sockets["0"])
	require.True(t, os.IsNotExist(err), "the socket outlived the run: %v", err)
}

func TestDaemonFlagErrors(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(notDir, nil, 0o644))
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"run", "--read-ahead", "2000", "--", "/bin/true"}, "--read-ahead 2000: give 0 to 1024 pages"},
		{[]string{"run", "--fec-data", "4", "--", "/bin/true"}, "give both, or neither"},
		{[]string{"run", "--fec-data", "100", "--fec-parity", "2", "--", "/bin/true"}, "give 1 to 64 data"},
		{[]string{"run", "--loss", "1", "--", "/bin/true"}, "--loss 1: give a fraction"},
		{[]string{"run", "--mtu", "100", "--", "/bin/true"}, "--mtu 100: give 576 to 65507 bytes"},
		{[]string{"serve", "--id", "0", "--mtu", "70000"}, "--mtu 70000: give 576 to 65507 bytes"},
		{[]string{"run", "--tick", "0s", "--", "/bin/true"}, "--tick 0s: give a positive duration"},
		{[]string{"run", "--min-hold", "1ms", "--", "/bin/true"}, "the minimum hold 1ms is longer than the maximum hold 200µs"},
		{[]string{"run", "--metrics", "127.0.0.1", "--", "/bin/true"}, `--metrics "127.0.0.1": give HOST:PORT`},
		{[]string{"run", "-n", "3", "--metrics", "127.0.0.1:65534", "--", "/bin/true"}, "port from 1 to 65533"},
		{[]string{"run", "--fault-timeout", "soon", "--", "/bin/true"}, `invalid value "soon" for flag -fault-timeout`},
		{[]string{"run", "--report", filepath.Join(notDir, "report"), "--", "/bin/true"}, "--report: mkdir"},
		{[]string{"serve", "--id", "0", "--read-ahead", "-3"}, "--read-ahead -3: give 0 to 1024 pages"},
		{[]string{"serve", "--id", "0", "--fec-parity", "2"}, "give both, or neither"},
		{[]string{"serve", "--id", "0", "--max-hold", "5us"}, "the minimum hold 20µs is longer than the maximum hold 5µs"},
	}
	for _, tc := range cases {
		out, err := dsmnode(t, tc.args...)
		require.Error(t, err, strings.Join(tc.args, " "))
		require.Contains(t, out, tc.want, strings.Join(tc.args, " "))
	}
}
