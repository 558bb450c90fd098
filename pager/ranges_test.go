package pager

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/analyzer"
)

func TestDiffRanges(t *testing.T) {
	twin := make([]byte, 64)
	cur := make([]byte, 64)
	cur[3], cur[9], cur[17], cur[63] = 1, 1, 1, 1
	got := DiffRanges(nil, twin, cur)
	require.Equal(t, []analyzer.Range{{Off: 0, Len: 24}, {Off: 56, Len: 8}}, got)
	enc := EncodeRanges(nil, got)
	dec, err := DecodeRanges(enc, 64)
	require.NoError(t, err)
	require.Equal(t, got, dec)
	_, err = DecodeRanges([]byte{1, 60, 10}, 64)
	require.Error(t, err, "a range past the page end is refused")
	_, err = DecodeRanges([]byte{2, 0}, 64)
	require.Error(t, err, "truncated")
}
