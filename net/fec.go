package net

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/klauspost/reedsolomon"
)

// FEC limits and layout. A data shard, as the Reed-Solomon code sees it, is
// len u16 | content | zero padding; the padding brings every shard of a
// group to the size of the longest, and the length prefix lets a rebuilt
// shard shed it. Only the content travels in a data datagram; parity shards
// travel whole.
const (
	maxFECData      = 64
	maxFECParity    = 32
	shardLenPrefix  = 2
	maxShardContent = MaxMTU
	fecGroupsKept   = 32 // receiver keeps this many recent groups
)

func newRS(data, parity int) (reedsolomon.Encoder, error) {
	return reedsolomon.New(data, parity, reedsolomon.WithMaxGoroutines(1))
}

// fecEncoder groups a peer's outgoing data shards and makes their parity.
type fecEncoder struct {
	data, parity int
	group        uint32
	n            int      // data shards in the open group
	shards       [][]byte // data shards (with length prefix), then parity
	longest      int
	opened       time.Time // when the group's first shard was added
	codecs       map[int]reedsolomon.Encoder
}

func newFECEncoder(data, parity int) *fecEncoder {
	return &fecEncoder{
		data:   data,
		parity: parity,
		shards: make([][]byte, data+parity),
		codecs: make(map[int]reedsolomon.Encoder),
	}
}

// next returns the header for the next data shard.
func (e *fecEncoder) next() fecHeader {
	return fecHeader{group: e.group, index: uint8(e.n), data: uint8(e.data), parity: uint8(e.parity)}
}

// add records a data shard's content; it reports whether the group is full.
func (e *fecEncoder) add(content []byte, now time.Time) bool {
	if e.n == 0 {
		e.opened = now
	}
	s := append(e.shards[e.n][:0], 0, 0)
	binary.BigEndian.PutUint16(s, uint16(len(content)))
	s = append(s, content...)
	e.shards[e.n] = s
	e.longest = max(e.longest, len(s))
	e.n++
	return e.n == e.data
}

// close computes the parity of the open group (possibly short of data
// shards) and starts the next group. emit is called with each parity
// shard's header and bytes.
func (e *fecEncoder) close(emit func(fecHeader, []byte)) error {
	if e.n == 0 {
		return nil
	}
	k := e.n
	rs := e.codecs[k]
	if rs == nil {
		var err error
		if rs, err = newRS(k, e.parity); err != nil {
			return fmt.Errorf("net: fec encoder (%d+%d): %w", k, e.parity, err)
		}
		e.codecs[k] = rs
	}
	shards := make([][]byte, k+e.parity)
	for i := 0; i < k; i++ {
		s := e.shards[i]
		for len(s) < e.longest {
			s = append(s, 0)
		}
		e.shards[i] = s
		shards[i] = s
	}
	for i := 0; i < e.parity; i++ {
		p := e.shards[e.data+i]
		if cap(p) < e.longest {
			p = make([]byte, e.longest)
		}
		p = p[:e.longest]
		e.shards[e.data+i] = p
		shards[k+i] = p
	}
	if err := rs.Encode(shards); err != nil {
		return fmt.Errorf("net: fec encode: %w", err)
	}
	for i := 0; i < e.parity; i++ {
		emit(fecHeader{group: e.group, index: uint8(i), data: uint8(k), parity: uint8(e.parity)}, shards[k+i])
	}
	e.group++
	e.n = 0
	e.longest = 0
	return nil
}

// fecDecoder collects a peer's shards and rebuilds lost data shards.
type fecDecoder struct {
	groups map[uint32]*fecGroup
	newest uint32
	any    bool
	codecs map[[2]int]reedsolomon.Encoder
}

type fecGroup struct {
	k, p   int      // from a parity shard; k == 0 until one arrives
	data   [][]byte // index -> content with length prefix (nil: missing)
	parity [][]byte
	have   int  // shards present
	done   bool // nothing more to rebuild
}

func newFECDecoder() *fecDecoder {
	return &fecDecoder{groups: make(map[uint32]*fecGroup), codecs: make(map[[2]int]reedsolomon.Encoder)}
}

func (d *fecDecoder) group(id uint32) *fecGroup {
	if d.any && int32(id-d.newest) <= -fecGroupsKept {
		return nil // too old
	}
	g := d.groups[id]
	if g == nil {
		g = &fecGroup{}
		d.groups[id] = g
	}
	if !d.any || int32(id-d.newest) > 0 {
		d.newest, d.any = id, true
		for gid := range d.groups {
			if int32(gid-d.newest) <= -fecGroupsKept {
				delete(d.groups, gid)
			}
		}
	}
	return g
}

// addData records a received data shard. It returns rebuilt data shard
// contents (without prefix), if the arrival completed a recoverable set.
func (d *fecDecoder) addData(h fecHeader, content []byte) ([][]byte, error) {
	g := d.group(h.group)
	if g == nil || g.done {
		return nil, nil
	}
	if g.k != 0 && int(h.index) >= g.k {
		g.done = true
		return nil, fmt.Errorf("%w: data shard %d of a fec group of %d", ErrMalformed, h.index, g.k)
	}
	if int(h.index) >= len(g.data) {
		g.data = append(g.data, make([][]byte, int(h.index)+1-len(g.data))...)
	}
	if g.data[h.index] != nil {
		return nil, nil
	}
	s := make([]byte, shardLenPrefix+len(content))
	binary.BigEndian.PutUint16(s, uint16(len(content)))
	copy(s[shardLenPrefix:], content)
	g.data[h.index] = s
	g.have++
	return d.recover(g)
}

// addParity records a received parity shard, like addData.
func (d *fecDecoder) addParity(h fecHeader, shard []byte) ([][]byte, error) {
	g := d.group(h.group)
	if g == nil || g.done {
		return nil, nil
	}
	switch {
	case g.k == 0:
		g.k, g.p = int(h.data), int(h.parity)
		g.parity = make([][]byte, g.p)
		if len(g.data) > g.k {
			g.done = true
			return nil, fmt.Errorf("%w: fec group of %d data shards has shard %d", ErrMalformed, g.k, len(g.data)-1)
		}
	case g.k != int(h.data) || g.p != int(h.parity) || len(shard) != len(g.parity[firstNonNil(g.parity)]):
		g.done = true
		return nil, fmt.Errorf("%w: fec parity shards of one group disagree", ErrMalformed)
	}
	if g.parity[h.index] != nil {
		return nil, nil
	}
	g.parity[h.index] = append([]byte(nil), shard...)
	g.have++
	return d.recover(g)
}

func firstNonNil(s [][]byte) int {
	for i, b := range s {
		if b != nil {
			return i
		}
	}
	return 0
}

func (d *fecDecoder) recover(g *fecGroup) ([][]byte, error) {
	if g.k == 0 {
		return nil, nil
	}
	present := 0
	for _, s := range g.data {
		if s != nil {
			present++
		}
	}
	if present == g.k {
		g.done = true
		return nil, nil
	}
	if g.have < g.k {
		return nil, nil
	}
	g.done = true
	size := len(g.parity[firstNonNil(g.parity)])
	shards := make([][]byte, g.k+g.p)
	for i := 0; i < g.k; i++ {
		if i < len(g.data) && g.data[i] != nil {
			s := g.data[i]
			if len(s) > size {
				return nil, fmt.Errorf("%w: fec data shard longer than its parity", ErrMalformed)
			}
			padded := make([]byte, size)
			copy(padded, s)
			shards[i] = padded
		}
	}
	for i, p := range g.parity {
		shards[g.k+i] = p
	}
	key := [2]int{g.k, g.p}
	rs := d.codecs[key]
	if rs == nil {
		var err error
		if rs, err = newRS(g.k, g.p); err != nil {
			return nil, fmt.Errorf("net: fec decoder (%d+%d): %w", g.k, g.p, err)
		}
		d.codecs[key] = rs
	}
	if err := rs.ReconstructData(shards); err != nil {
		return nil, fmt.Errorf("%w: fec reconstruction: %v", ErrMalformed, err)
	}
	var out [][]byte
	for i := 0; i < g.k; i++ {
		if i < len(g.data) && g.data[i] != nil {
			continue
		}
		s := shards[i]
		n := int(binary.BigEndian.Uint16(s))
		if shardLenPrefix+n > len(s) {
			return out, fmt.Errorf("%w: rebuilt fec shard claims %d bytes", ErrMalformed, n)
		}
		out = append(out, s[shardLenPrefix:shardLenPrefix+n])
	}
	return out, nil
}
