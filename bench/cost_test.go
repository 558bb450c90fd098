package main

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStatusField(t *testing.T) {
	st := []byte("Name:\tbench\nvoluntary_ctxt_switches:\t42\nnonvoluntary_ctxt_switches:\t7\n")
	v, err := statusField(st, "voluntary_ctxt_switches")
	require.NoError(t, err)
	assert.Equal(t, uint64(42), v)
	v, err = statusField(st, "nonvoluntary_ctxt_switches")
	require.NoError(t, err)
	assert.Equal(t, uint64(7), v)
	_, err = statusField(st, "missing")
	assert.Error(t, err)
}

// The counters of this process (all its threads) only grow.
func TestReadProcCounters(t *testing.T) {
	a, err := readProcCounters(os.Getpid())
	require.NoError(t, err)
	time.Sleep(time.Millisecond)
	b, err := readProcCounters(os.Getpid())
	require.NoError(t, err)
	assert.Positive(t, b.cpu)
	assert.GreaterOrEqual(t, b.cpu, a.cpu)
	assert.GreaterOrEqual(t, b.switches, a.switches)
	_, err = readProcCounters(-1)
	assert.Error(t, err)

	// The fallback for kernels without schedstat counts in clock ticks.
	cpu, err := statCPU(os.Getpid())
	require.NoError(t, err)
	assert.Zero(t, cpu%uint64(clockTick))
}

func TestSetCost(t *testing.T) {
	var f Figure
	assert.Error(t, f.setCost(nil))
	assert.Error(t, f.setCost(&FaultCost{Windows: 1}), "no faults: nothing to divide by")
	c := &FaultCost{Windows: 2, Faults: 100, Ops: 100, ProgramSwitches: 100, DaemonSwitches: 250, DaemonCPU: 1_500_000, Datagrams: 200}
	require.NoError(t, f.setCost(c))
	assert.InDelta(t, 3.5, f.SwitchesPerFault, 1e-12)
	assert.InDelta(t, 15000, f.DaemonCPUPerFault, 1e-9)
	assert.InDelta(t, 2, f.DatagramsPerFault, 1e-12)
}

// Fault ratios use the chain; the KCP ratio keeps the local fault plus the
// KCP round trip; the Markdown shows the per-fault costs in the notes.
func TestRatiosUseTheChain(t *testing.T) {
	r := &Results{Parts: []string{"limits", "readfault"}}
	r.Limits.Chain = Stat{Count: 5, Median: 20000, P99: 40000}
	r.Limits.UffdFault = Stat{Count: 5, Median: 5000}
	r.Limits.UDP = Stat{Count: 5, Median: 6000}
	r.Limits.KCP = Stat{Count: 5, Median: 15000}
	f := Figure{Key: "read_fault", Part: "readfault", Name: "read", Nodes: 2, Compare: cmpLatency,
		Latency: Stat{Count: 100, Median: 50000, P99: 90000}}
	require.NoError(t, f.setCost(&FaultCost{Windows: 1, Faults: 100, Ops: 100, ProgramSwitches: 100, DaemonSwitches: 300, DaemonCPU: 2_000_000, Datagrams: 300, Messages: 400, Segments: 350}))
	r.add(f)
	// Raw datagrams (the chain's) carry no messages: none are claimed.
	raw := Figure{Key: "raw", Part: "readfault", Name: "raw", Nodes: 2, Compare: cmpLatency, Latency: Stat{Count: 10, Median: 30000}}
	require.NoError(t, raw.setCost(&FaultCost{Windows: 1, Faults: 10, Ops: 10, DaemonCPU: 100_000, Datagrams: 20}))
	r.add(raw)
	r.add(Figure{Key: "scan/depth=1", Part: "readfault", Name: "scan", Compare: cmpThroughput, PagesPerSec: 25000,
		Latency: Stat{Count: 10, Median: 40000}})
	r.finish()

	assert.Equal(t, 20000.0, r.Limits.LimitNs)
	assert.Equal(t, 11000.0, r.Limits.SumNs)
	assert.Equal(t, 20000.0, r.Limits.SumKCPNs)
	got, _ := r.figure("read_fault")
	assert.Equal(t, 20000.0, got.LimitNs)
	assert.InDelta(t, 2.5, got.Ratio, 1e-12)
	assert.InDelta(t, 2.5, got.RatioKCP, 1e-12)
	scan, _ := r.figure("scan/depth=1")
	assert.InDelta(t, 0.5, scan.Ratio, 1e-12, "25000 pages/s against one page per 20 µs")
	require.NotNil(t, r.Aim)
	assert.Equal(t, 20000.0, r.Aim.LimitNs)
	assert.InDelta(t, 2.5, r.Aim.Ratio, 1e-12)

	md := r.markdown()
	assert.Contains(t, md, "the fault chain (limit/chain): **20.0 µs** median, 40.0 µs p99")
	assert.Contains(t, md, "| read | 2 | 50.0 µs | 90.0 µs | 100 |  | 2.50× | 2.50× | per fault: 4.00 context switches, 20.0 µs daemon CPU, 3.00 datagrams (4.00 messages in 3.50 KCP segments) |")
	assert.Contains(t, md, "10.0 µs daemon CPU, 2.00 datagrams |")
}
