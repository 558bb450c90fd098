package seedrun

import (
	"errors"
	"fmt"
	"io"
	"testing"
)

func TestRunFindsTheSmallestFailingSeed(t *testing.T) {
	tests := []struct {
		name     string
		first    uint64
		n        int
		fails    func(uint64) bool
		wantSeed uint64
		wantRuns int // at least this many results added
	}{
		{"none fails", 1, 500, func(uint64) bool { return false }, 0, 500},
		{"one fails", 1, 500, func(s uint64) bool { return s == 321 }, 321, 321},
		{"several fail", 1, 500, func(s uint64) bool { return s%97 == 0 }, 97, 97},
		{"from another first", 1000, 50, func(s uint64) bool { return s >= 1040 }, 1040, 40},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			added := 0
			seed, err := Run(tc.first, tc.n, func(s uint64) (uint64, error) {
				if s < tc.first || s >= tc.first+uint64(tc.n) {
					t.Errorf("seed %d outside %d+%d", s, tc.first, tc.n)
				}
				if tc.fails(s) {
					return s, fmt.Errorf("seed %d: %w", s, errBoom)
				}
				return s, nil
			}, func(uint64) { added++ })
			if seed != tc.wantSeed || (tc.wantSeed == 0) != (err == nil) || (err != nil && !errors.Is(err, errBoom)) {
				t.Fatalf("got seed %d, %v; want seed %d", seed, err, tc.wantSeed)
			}
			if added < tc.wantRuns {
				t.Fatalf("%d results added, want at least %d", added, tc.wantRuns)
			}
		})
	}
}

var errBoom = errors.New("boom")

func TestTraceTail(t *testing.T) {
	got := TraceTail(func(w io.Writer) {
		for i := range 5 {
			fmt.Fprintf(w, "line %d\n", i)
		}
	}, 2)
	if got != "line 3\nline 4" {
		t.Fatalf("got %q", got)
	}
}
