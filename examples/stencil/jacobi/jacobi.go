// Package jacobi is the Jacobi heat stencil that examples/stencil runs on a
// DSM cluster: the grid's fixed boundary, the split of its rows into one
// band per node, one sweep over a band, the private reference computation
// the shared result is checked against, and the program each node runs
// (Run).
//
// It is a package of its own, rather than part of the example's main,
// because the benchmark command (go run ./bench, part stencil) runs the
// same stencil as its worker program, and a main package cannot be
// imported. Sharing the code rather than copying it matters more than
// usual here: the check compares the shared grid with the reference bit
// for bit, which holds only because every cell, on every node and in the
// reference, is computed by the same instructions in the same order; and
// the benchmark's figure should be the time of exactly what the example
// prints.
//
// The cells are float64. float32 would halve the memory and the bytes a
// halo row moves, but the example is about the DSM, not about precision
// trade-offs, and with float64 a row of the default 1024×1024 grid is
// exactly two pages.
package jacobi

import (
	"errors"
	"fmt"
	"math"
)

// CellBytes is the size of one cell.
const CellBytes = 8

// Hot is the fixed temperature of the top edge. The other edges are held
// at zero; the interior starts at a fixed pattern of temperatures below
// Hot (Init).
const Hot = 100.0

// GridBytes is the size of an n×n grid.
func GridBytes(n int) int { return n * n * CellBytes }

// Init writes the initial state into rows lo..hi-1 of g, an n×n grid in
// row-major order: the top row at Hot, the other boundary cells at zero,
// and each interior cell at a temperature that differs from its
// neighbours' ((31 r + 17 c) mod 97). The pattern makes every row change
// at every iteration, the halo rows included: heat from the top edge alone
// would reach the bands' edges only after as many iterations as a band has
// rows, and until then a stale halo would go unnoticed by the check (and
// cost nothing to keep coherent). The boundary cells keep their values
// forever (Sweep never writes them), so both grids of a run must be
// initialized.
//
// A node initializes only its own band, which makes it the first to touch
// the band's pages: they are then its own before the first iteration,
// instead of being fetched from whichever node happened to write them.
func Init(g []float64, n, lo, hi int) {
	for r := lo; r < hi; r++ {
		row := g[r*n : (r+1)*n]
		for c := range row {
			switch {
			case r == 0:
				row[c] = Hot
			case r == n-1 || c == 0 || c == n-1:
				row[c] = 0
			default:
				row[c] = float64((31*r + 17*c) % 97)
			}
		}
	}
}

// Sweep computes rows lo..hi-1 of dst from src, both n×n grids: every
// interior cell becomes the mean of its four neighbours in src. Boundary
// cells (the first and last row and column) are not written.
//
// It reads rows lo-1 and hi of src, the halo: on a DSM cluster those rows
// belong to the neighbouring bands, and they are the only pages a sweep
// needs from other nodes.
func Sweep(dst, src []float64, n, lo, hi int) {
	lo, hi = max(lo, 1), min(hi, n-1)
	for r := lo; r < hi; r++ {
		out := dst[r*n : (r+1)*n]
		up := src[(r-1)*n : r*n][:len(out)]
		mid := src[r*n : (r+1)*n][:len(out)]
		down := src[(r+1)*n : (r+2)*n][:len(out)]
		for c := 1; c < len(out)-1; c++ {
			// The one expression every cell is computed with, on every
			// node and in Reference alike.
			out[c] = 0.25 * (up[c] + down[c] + mid[c-1] + mid[c+1])
		}
	}
}

// Band returns the rows lo..hi-1 of node id's band when the n rows of an
// n×n grid are split among nodes.
//
// Bands start on page boundaries where the grid allows it (given that the
// grid itself starts on one): every band is a whole number of steps of g
// rows, g being the fewest rows that fill a whole number of pages. The
// pages of a band then hold no row of another band, so the only pages
// nodes share are those of the halo rows at the bands' edges. When n/g is
// smaller than nodes, rows are split evenly instead, page boundaries or
// not. Bands differ in size by at most one step; the last one also takes
// the n mod g rows left over.
func Band(n, pageSize, nodes, id int) (lo, hi int) {
	g := pageSize / gcd(n*CellBytes, pageSize)
	steps := n / g
	if steps < nodes {
		g, steps = 1, n
	}
	lo = id * steps / nodes * g
	hi = (id + 1) * steps / nodes * g
	if id == nodes-1 {
		hi = n
	}
	return lo, hi
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// Reference computes iters iterations on an n×n grid in ordinary memory,
// with the same Init and Sweep as the nodes, and returns the final grid.
func Reference(n, iters int) []float64 {
	g := [2][]float64{make([]float64, n*n), make([]float64, n*n)}
	Init(g[0], n, 0, n)
	Init(g[1], n, 0, n)
	for it := 0; it < iters; it++ {
		Sweep(g[(it+1)%2], g[it%2], n, 0, n)
	}
	return g[iters%2]
}

// ErrMismatch reports that a grid differs from the reference.
var ErrMismatch = errors.New("the grid differs from the private computation")

// Check compares got with want, both n×n grids, bit for bit: the
// arithmetic is the same and deterministic, so no tolerance is needed and
// none would hide a lost or stale write. The error wraps ErrMismatch and
// names the first cell that differs.
func Check(got, want []float64, n int) error {
	if len(got) != n*n || len(want) != n*n {
		return fmt.Errorf("%w: %d and %d cells, want %d", ErrMismatch, len(got), len(want), n*n)
	}
	bad, first := 0, -1
	for i := range want {
		if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
			if first < 0 {
				first = i
			}
			bad++
		}
	}
	if bad == 0 {
		return nil
	}
	return fmt.Errorf("%w: %d of %d cells differ, the first at row %d, column %d: %v, want %v",
		ErrMismatch, bad, n*n, first/n, first%n, got[first], want[first])
}
