package jacobi

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBandCoversTheRowsOnPageBoundaries(t *testing.T) {
	const ps = 4096
	for _, tc := range []struct {
		n, nodes int
		step     int // rows of a page-aligned step; 1 when bands cannot all be aligned
	}{
		{1024, 1, 1}, {1024, 2, 1}, {1024, 3, 1}, // two pages a row
		{4096, 7, 1},        // eight pages a row
		{1024 + 512, 4, 1},  // three pages a row
		{2048 + 1024, 2, 1}, // six pages a row
		{256, 3, 2},         // two rows a page
		{128, 2, 4},         // four rows a page
		{128, 3, 4},         // 32 steps of 4 rows for 3 nodes
		{128, 32, 4},        // one step each
		{1000, 2, 64},       // 8000-byte rows: 64 of them fill 125 pages
		{1000, 3, 64},       // 15 steps of 64 rows; the last band takes the 40 rows left over
		{128, 33, 1},        // fewer steps than nodes: rows split evenly
		{100, 3, 1},         // 800-byte rows: one step (128 rows) is more than the grid
		{3, 3, 1},           // one row each
	} {
		t.Run(fmt.Sprintf("n=%d/nodes=%d", tc.n, tc.nodes), func(t *testing.T) {
			next, smallest, largest := 0, tc.n, 0
			for id := 0; id < tc.nodes; id++ {
				lo, hi := Band(tc.n, ps, tc.nodes, id)
				require.Equal(t, next, lo, "band %d does not start where band %d ends", id, id-1)
				require.Greater(t, hi, lo, "band %d is empty", id)
				require.Zero(t, lo%tc.step, "band %d starts at row %d", id, lo)
				if tc.step > 1 || tc.n*CellBytes%ps == 0 {
					require.Zero(t, lo*tc.n*CellBytes%ps, "band %d starts inside a page", id)
				}
				next = hi
				if id < tc.nodes-1 {
					smallest, largest = min(smallest, hi-lo), max(largest, hi-lo)
				}
			}
			require.Equal(t, tc.n, next, "the bands do not cover the grid")
			require.LessOrEqual(t, largest-smallest, tc.step, "bands before the last differ by more than one step")
		})
	}
}

// Sweeping band by band, in any order, gives the very same bits as
// sweeping the whole grid: that is what lets the nodes' result be checked
// exactly against Reference.
func TestSweepByBandsEqualsWholeGrid(t *testing.T) {
	const n, iters = 37, 20
	for _, nodes := range []int{1, 2, 3, 5} {
		g := [2][]float64{make([]float64, n*n), make([]float64, n*n)}
		for id := nodes - 1; id >= 0; id-- {
			lo, hi := Band(n, 4096, nodes, id)
			Init(g[0], n, lo, hi)
			Init(g[1], n, lo, hi)
		}
		for it := 0; it < iters; it++ {
			for id := nodes - 1; id >= 0; id-- {
				lo, hi := Band(n, 4096, nodes, id)
				Sweep(g[(it+1)%2], g[it%2], n, lo, hi)
			}
		}
		require.NoError(t, Check(g[iters%2], Reference(n, iters), n), "%d bands", nodes)
	}
}

func TestReference(t *testing.T) {
	// One interior cell: the mean of a hot and three cold neighbours.
	g := Reference(3, 1)
	require.Equal(t, []float64{Hot, Hot, Hot, 0, Hot / 4, 0, 0, 0, 0}, g)
	require.Equal(t, Reference(3, 1), Reference(3, 7), "a single interior cell is settled after one iteration")

	// The boundary stays fixed, every value stays between the edges',
	// and every interior row changes at every iteration, so that a stale
	// halo row, anywhere and at any iteration, changes the result.
	const n = 64
	prev := Reference(n, 0)
	for it := 1; it <= 40; it++ {
		g = Reference(n, it)
		for r := 0; r < n; r++ {
			changed := false
			for c := 0; c < n; c++ {
				v := g[r*n+c]
				switch {
				case r == 0:
					require.Equal(t, Hot, v, "top edge at (%d, %d)", r, c)
				case r == n-1 || c == 0 || c == n-1:
					require.Zero(t, v, "edge at (%d, %d)", r, c)
				default:
					require.True(t, v >= 0 && v <= Hot, "(%d, %d) = %v", r, c, v)
					changed = changed || v != prev[r*n+c]
				}
			}
			require.True(t, changed || r == 0 || r == n-1, "row %d did not change at iteration %d", r, it)
		}
		prev = g
	}
	require.Equal(t, Reference(n, 0), func() []float64 { g := make([]float64, n*n); Init(g, n, 0, n); return g }())
}

func TestCheckIsExact(t *testing.T) {
	const n = 8
	want := Reference(n, 3)
	got := append([]float64(nil), want...)
	require.NoError(t, Check(got, want, n))

	// The smallest possible difference is one.
	got[2*n+5] = math.Nextafter(got[2*n+5], math.Inf(1))
	got[6*n+1] = 1
	err := Check(got, want, n)
	require.True(t, errors.Is(err, ErrMismatch), "%v", err)
	require.ErrorContains(t, err, "2 of 64 cells differ, the first at row 2, column 5")

	// So is a zero of the other sign.
	got = append([]float64(nil), want...)
	got[n*n-1] = math.Copysign(0, -1)
	require.ErrorContains(t, Check(got, want, n), "1 of 64 cells differ, the first at row 7, column 7")

	require.ErrorIs(t, Check(got[:10], want, n), ErrMismatch)
}
