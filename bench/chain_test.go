package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/internal/uffdtest"
)

// The chain runs more than one window of pages, so the program punches its
// pages out and faults on them again; the program checks that every page
// it read is the one B sent for it.
func TestMeasureChain(t *testing.T) {
	uffdtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := chainWindow + 100
	samples, cost, err := measureChain(ctx, n)
	require.NoError(t, err)
	require.Len(t, samples, n)
	require.NotNil(t, cost)
	assert.Positive(t, cost.DaemonCPU, "A and B spent CPU")
	assert.GreaterOrEqual(t, cost.DaemonSwitches+cost.ProgramSwitches, uint64(n), "a fault blocks somebody at least once")
	for i, d := range samples {
		require.Positive(t, d, "sample %d", i)
	}
	assert.Empty(t, childrenOf(t, os.Getpid()), "processes of the chain left running")

	// Stopped early, the chain leaves nothing running either.
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, _, err = measureChain(ctx, 10_000_000)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Empty(t, childrenOf(t, os.Getpid()), "processes of the chain left running")
}

func TestChainHello(t *testing.T) {
	h := chainHello{userModeOnly: true, base: 0x7f0000000000, size: 4 << 20}
	got, err := decodeChainHello(h.encode())
	require.NoError(t, err)
	assert.Equal(t, h, got)
	_, err = decodeChainHello([]byte{2})
	assert.Error(t, err)
}
