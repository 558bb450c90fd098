package node

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/dsmrt/dsm/coherence"
)

// Release-consistent pages are homed by the DHT, like the others, unless a
// program asked for an allocation's pages to be homed in blocks
// (dsm.BlockHomes): node i is then the home of the i-th N-th of the
// range's pages, which is where a program that splits an array into bands,
// one per node, writes them. Every daemon must use the same homes, so the
// daemon a program asks tells every peer (an announcement each must
// acknowledge) before the program's allocation returns; no node's program
// can touch the pages before its own allocation returns, and a pointer to
// them stored by another node was stored after that node's allocation
// returned.

// homeRange is a run of release-consistent pages homed in blocks of whole
// units of unit pages.
type homeRange struct{ lo, hi, unit coherence.PageID }

// announcement is a home range being told to the peers.
type announcement struct {
	rng     homeRange
	waiting map[uint16]bool // peers that have not acknowledged
	sentAt  time.Time
	refused string // a peer's reason, when one refused
	done    func(error)
}

// protoRCHomes starts the messages that announce home ranges: kind (1
// announce, 2 acknowledge, 3 refuse), sequence number, first page, end,
// pages per unit.
const protoRCHomes = 5

const (
	homesAnnounce = 1
	homesAck      = 2
	homesRefuse   = 3
)

// rcHome returns the home of release-consistent page p.
func (n *Node) rcHome(p coherence.PageID) coherence.NodeID {
	r, ok := n.homeRangeOf(p)
	if !ok {
		return n.Home(p)
	}
	return r.home(p, n.cfg.Nodes)
}

// home returns the node that homes page p of r among nodes: of U units,
// node i homes units ⌊i·U/N⌋ up to ⌊(i+1)·U/N⌋, the split a band
// decomposition of U rows makes (dsm.BlockHomesOf); unit k's node is then
// the largest i with ⌊i·U/N⌋ <= k, which is ⌊((k+1)·N - 1)/U⌋.
func (r homeRange) home(p coherence.PageID, nodes int) coherence.NodeID {
	u := uint64(r.hi-r.lo+r.unit-1) / uint64(r.unit)
	k := uint64(p-r.lo) / uint64(r.unit)
	return coherence.NodeID(min(((k+1)*uint64(nodes)-1)/u, uint64(nodes-1)))
}

// homeRangeOf returns the range homed in blocks that holds page p, if one
// does.
func (n *Node) homeRangeOf(p coherence.PageID) (homeRange, bool) {
	rs := n.rcs
	i, found := slices.BinarySearchFunc(rs.homes, p, func(r homeRange, p coherence.PageID) int {
		switch {
		case r.hi <= p:
			return -1
		case r.lo > p:
			return 1
		}
		return 0
	})
	if !found {
		return homeRange{}, false
	}
	return rs.homes[i], true
}

// addHomeRange records r; the same range again is fine, an overlapping
// other one is refused.
func (n *Node) addHomeRange(r homeRange) error {
	rs := n.rcs
	if r.lo < rs.lo || r.hi > rs.hi || r.lo >= r.hi {
		return fmt.Errorf("pages %d..%d are not in the release-consistent area (pages %d..%d)", r.lo, r.hi-1, rs.lo, rs.hi-1)
	}
	if r.unit == 0 {
		return fmt.Errorf("pages %d..%d: blocks of units of 0 pages", r.lo, r.hi-1)
	}
	for _, x := range rs.homes {
		if x == r {
			return nil
		}
		if x.lo < r.hi && r.lo < x.hi {
			return fmt.Errorf("pages %d..%d overlap pages %d..%d, homed in other blocks", r.lo, r.hi-1, x.lo, x.hi-1)
		}
	}
	i, _ := slices.BinarySearchFunc(rs.homes, r.lo, func(x homeRange, p coherence.PageID) int { return int(x.lo) - int(p) })
	rs.homes = slices.Insert(rs.homes, i, r)
	return nil
}

// homeBlocksRequest serves a program's dsm.BlockHomes: it records the
// range and returns once every peer has too.
func (n *Node) homeBlocksRequest(ctx context.Context, off, size, unit uint64) error {
	if size == 0 || off+size > n.cfg.Size {
		return fmt.Errorf("home blocks: [%d, +%d) is not in the region of %d bytes", off, size, n.cfg.Size)
	}
	ps := uint64(n.ps)
	if unit == 0 {
		unit = ps
	}
	if unit%ps != 0 {
		return fmt.Errorf("home blocks: a unit of %d bytes is not a multiple of the page size (%d)", unit, ps)
	}
	done := make(chan error, 1)
	err := n.do(ctx, func() {
		if n.rcs == nil {
			done <- errNoRC
			return
		}
		r := homeRange{coherence.PageID(off / ps), coherence.PageID((off + size + ps - 1) / ps), coherence.PageID(unit / ps)}
		if err := n.addHomeRange(r); err != nil {
			done <- err
			return
		}
		rs := n.rcs
		rs.nextAnnounce++
		a := &announcement{rng: r, waiting: map[uint16]bool{}, sentAt: time.Now(), done: func(err error) { done <- err }}
		for id := range n.cfg.Nodes {
			if id != n.cfg.ID {
				a.waiting[uint16(id)] = true
			}
		}
		if len(a.waiting) == 0 {
			done <- nil
			return
		}
		rs.announcing[rs.nextAnnounce] = a
		for peer := range a.waiting {
			n.sendHomes(peer, homesAnnounce, rs.nextAnnounce, r)
		}
	})
	if err != nil {
		return err
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n *Node) sendHomes(peer uint16, kind byte, seq uint64, r homeRange) {
	b := []byte{protoRCHomes, kind}
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = binary.LittleEndian.AppendUint32(b, uint32(r.lo))
	b = binary.LittleEndian.AppendUint32(b, uint32(r.hi))
	b = binary.LittleEndian.AppendUint32(b, uint32(r.unit))
	if err := n.tr.Send(peer, b); err != nil {
		n.log.Debug("home range send failed", "to", peer, "err", err)
	}
}

// onHomesMessage takes an announcement or its answer.
func (n *Node) onHomesMessage(from uint16, b []byte) {
	if len(b) != 1+8+4+4+4 {
		n.log.Warn("malformed home range message dropped", "peer", from, "bytes", len(b))
		return
	}
	kind, seq := b[0], binary.LittleEndian.Uint64(b[1:])
	r := homeRange{coherence.PageID(binary.LittleEndian.Uint32(b[9:])), coherence.PageID(binary.LittleEndian.Uint32(b[13:])), coherence.PageID(binary.LittleEndian.Uint32(b[17:]))}
	if n.rcs == nil {
		n.log.Warn("home range announced, but this node keeps no release-consistent area (rc_size differs?)", "peer", from)
		return
	}
	switch kind {
	case homesAnnounce:
		if err := n.addHomeRange(r); err != nil {
			n.log.Warn("home range refused", "peer", from, "err", err)
			n.sendHomes(from, homesRefuse, seq, r)
			return
		}
		n.sendHomes(from, homesAck, seq, r)
	case homesAck, homesRefuse:
		a := n.rcs.announcing[seq]
		if a == nil || a.rng != r || !a.waiting[from] {
			return // a duplicate
		}
		delete(a.waiting, from)
		if kind == homesRefuse {
			a.refused = fmt.Sprintf("node %d refused pages %d..%d: another distribution overlaps them there", from, r.lo, r.hi-1)
		}
		if len(a.waiting) == 0 {
			delete(n.rcs.announcing, seq)
			if a.refused != "" {
				a.done(fmt.Errorf("%s", a.refused))
			} else {
				a.done(nil)
			}
		}
	default:
		n.log.Warn("home range message of unknown kind dropped", "peer", from, "kind", kind)
	}
}

// tickHomes announces again to the peers that have not answered.
func (n *Node) tickHomes(now time.Time) {
	for seq, a := range n.rcs.announcing {
		if now.Sub(a.sentAt) < 3*time.Duration(n.cfg.Tick) {
			continue
		}
		a.sentAt = now
		for peer := range a.waiting {
			n.sendHomes(peer, homesAnnounce, seq, a.rng)
		}
	}
}
