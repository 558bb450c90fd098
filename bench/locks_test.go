package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/dht"
)

func TestLockNameHomedOn(t *testing.T) {
	for _, tc := range []struct {
		nodes, node int
		prefix      string
	}{
		{2, 0, "bench/lock/local"},
		{2, 1, "bench/lock/remote"},
		{4, 3, "x"},
		{8, 5, "bench/lock/contended"},
	} {
		name := lockNameHomedOn(tc.nodes, tc.node, tc.prefix)
		assert.True(t, strings.HasPrefix(name, tc.prefix+"/"), name)
		assert.Equal(t, dht.NodeID(tc.node), dht.ClusterRing(tc.nodes).HomeOfString(name), "home of %q in %d nodes", name, tc.nodes)
	}
}

func TestMeasureSyncMutex(t *testing.T) {
	fl, err := measureSyncMutex(4*mutexBatch, 20)
	require.NoError(t, err)
	assert.Equal(t, 4, fl.uncontended.Count, "one sample per batch")
	assert.Positive(t, fl.uncontended.Median)
	assert.NotEmpty(t, fl.handoffs)
	assert.GreaterOrEqual(t, fl.acquisitions, len(fl.handoffs), "every hand-off is an acquisition")
	assert.Positive(t, fl.rate)
	for _, d := range fl.handoffs {
		require.GreaterOrEqual(t, d, int64(0), "a hand-off before the release")
	}
}

func TestScaleStat(t *testing.T) {
	st := scaleStat(summarize([]int64{1000, 2000, 3000}), 0.001)
	assert.Equal(t, 3, st.Count)
	assert.InDelta(t, 2.0, st.Median, 1e-12)
	assert.InDelta(t, 1.0, st.Min, 1e-12)
	assert.InDelta(t, 3.0, st.Max, 1e-12)
	assert.InDelta(t, 2.0, st.Mean, 1e-12)
}

// The lock figures are compared with their sync.Mutex floor, not with the
// machine's limits, and the Markdown shows them side by side.
func TestLocksFloorRatio(t *testing.T) {
	r := &Results{Parts: []string{"limits", "locks"}}
	r.Limits.UffdFault = Stat{Count: 1, Median: 5000}
	r.Limits.UDP = Stat{Count: 1, Median: 6000}
	r.add(Figure{Key: keyFloorUncontended, Part: "locks", Name: "floor", Latency: Stat{Count: 3, Median: 20, P99: 30}})
	r.add(Figure{Key: keyLockLocal, Part: "locks", Name: "ours", Nodes: 2, Compare: cmpFloor, Floor: keyFloorUncontended,
		Latency: Stat{Count: 5, Median: 50000, P99: 90000}})
	r.add(Figure{Key: keyLockHandoff, Part: "locks", Name: "no floor measured", Compare: cmpFloor, Floor: "locks/floor/missing",
		Latency: Stat{Count: 5, Median: 1000, P99: 2000}, AcquisitionsPerSec: 4000})
	r.finish()

	ours, _ := r.figure(keyLockLocal)
	assert.InDelta(t, 2500.0, ours.FloorRatio, 1e-9)
	assert.Equal(t, 20.0, ours.FloorNs)
	assert.Zero(t, ours.Ratio, "not compared with the limit")
	floor, _ := r.figure(keyFloorUncontended)
	assert.Zero(t, floor.FloorRatio)
	assert.Zero(t, floor.Ratio)
	missing, _ := r.figure(keyLockHandoff)
	assert.Zero(t, missing.FloorRatio, "no ratio without its floor")

	md := r.markdown()
	assert.Contains(t, md, "## Distributed locks")
	assert.Contains(t, md, "| ours | 2 | 50.0 µs | 90.0 µs | 5 |  | 20 ns | 2500× |")
	assert.Contains(t, md, "| no floor measured |  | 1.0 µs | 2.0 µs | 5 | 4000 acquisitions/s | — | — |")
}
