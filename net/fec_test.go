package net

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"
)

type fecShard struct {
	h       fecHeader
	b       []byte
	parity  bool
	content []byte // data shards only
}

// encodeGroup feeds contents to an encoder and returns every shard it
// would send, closing the group early if it is short.
func encodeGroup(t *testing.T, e *fecEncoder, contents [][]byte) []fecShard {
	t.Helper()
	var out []fecShard
	for _, c := range contents {
		h := e.next()
		full := e.add(c, time.Now())
		out = append(out, fecShard{h: h, b: append([]byte(nil), c...), content: c})
		if full {
			break
		}
	}
	if err := e.close(func(h fecHeader, b []byte) {
		out = append(out, fecShard{h: h, b: append([]byte(nil), b...), parity: true})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFECRecovery(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	content := func(n int) []byte {
		b := make([]byte, n)
		rng.Read(b)
		return b
	}
	tests := []struct {
		data, parity int
		sizes        []int
		lose         []int // indexes into the shard list
		recovered    int
	}{
		{3, 2, []int{100, 1400, 7}, []int{0, 2}, 2},
		{3, 2, []int{100, 1400, 7}, []int{1, 3}, 1},
		{3, 2, []int{100, 1400, 7}, []int{0, 1, 2}, 0}, // too many lost
		{3, 2, []int{100, 1400, 7}, nil, 0},            // nothing lost
		{4, 1, []int{50, 60}, []int{1}, 1},             // short group
		{1, 1, []int{9000}, []int{0}, 1},
	}
	for i, tc := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			e := newFECEncoder(tc.data, tc.parity)
			var contents [][]byte
			for _, n := range tc.sizes {
				contents = append(contents, content(n))
			}
			shards := encodeGroup(t, e, contents)
			if want := len(tc.sizes) + tc.parity; len(shards) != want {
				t.Fatalf("%d shards, want %d", len(shards), want)
			}
			d := newFECDecoder()
			var got [][]byte
			for j, s := range shards {
				if slices.Contains(tc.lose, j) {
					continue
				}
				var r [][]byte
				var err error
				if s.parity {
					r, err = d.addParity(s.h, s.b)
				} else {
					r, err = d.addData(s.h, s.b)
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, r...)
			}
			if len(got) != tc.recovered {
				t.Fatalf("recovered %d shards, want %d", len(got), tc.recovered)
			}
			for _, g := range got {
				if !slices.ContainsFunc(contents, func(c []byte) bool { return bytes.Equal(c, g) }) {
					t.Fatalf("recovered shard of %d bytes matches no data shard", len(g))
				}
			}
		})
	}
}

func TestFECDecoderRejectsInconsistentGroups(t *testing.T) {
	d := newFECDecoder()
	if _, err := d.addParity(fecHeader{group: 1, index: 0, data: 2, parity: 2}, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.addParity(fecHeader{group: 1, index: 1, data: 3, parity: 2}, make([]byte, 10)); !errors.Is(err, ErrMalformed) {
		t.Errorf("parity disagreeing on the group size: %v", err)
	}
	if _, err := d.addParity(fecHeader{group: 2, index: 0, data: 2, parity: 1}, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.addData(fecHeader{group: 2, index: 0, data: 2, parity: 1}, make([]byte, 100)); !errors.Is(err, ErrMalformed) {
		t.Errorf("data shard longer than the parity: %v", err)
	}
	// Old groups are forgotten.
	d.addData(fecHeader{group: 1000, index: 0, data: 2, parity: 1}, []byte("x"))
	if g := d.group(1000 - fecGroupsKept); g != nil {
		t.Error("a group older than the window is still kept")
	}
	if len(d.groups) > fecGroupsKept {
		t.Errorf("%d groups kept", len(d.groups))
	}
}
