package net

import (
	"math/rand"
	stdnet "net"
	"sync"
	"time"
)

// Faults configures a FaultConn. Probabilities are in [0, 1].
type Faults struct {
	// Seed seeds the decisions; the same seed makes the same decisions for
	// the same sequence of writes.
	Seed int64
	// Loss is the probability that a datagram is dropped.
	Loss float64
	// Duplicate is the probability that a datagram is sent twice.
	Duplicate float64
	// Reorder is the probability that a datagram is held back and sent
	// after the next one (or after ReorderHold, if no other comes).
	Reorder float64
	// ReorderHold bounds how long a held datagram waits; default 5ms.
	ReorderHold time.Duration
	// Delay, if positive, delays each datagram by a uniformly random time
	// in [0, Delay).
	Delay time.Duration
}

// FaultConn wraps a PacketConn and injects faults into what is written:
// loss, duplication, reordering, delay and partitions. Reads pass through.
// Use it through Config.WrapConn.
type FaultConn struct {
	stdnet.PacketConn
	mu          sync.Mutex
	f           Faults
	rng         *rand.Rand
	held        []byte
	heldTo      stdnet.Addr
	heldTimer   *time.Timer
	partitioned map[string]bool // destination address -> cut
	all         bool
	stats       FaultStats
}

// FaultStats counts what a FaultConn did.
type FaultStats struct {
	Written, Dropped, Duplicated, Reordered, Delayed uint64
}

// NewFaultConn wraps c.
func NewFaultConn(c stdnet.PacketConn, f Faults) *FaultConn {
	if f.ReorderHold <= 0 {
		f.ReorderHold = 5 * time.Millisecond
	}
	return &FaultConn{PacketConn: c, f: f, rng: rand.New(rand.NewSource(f.Seed)), partitioned: make(map[string]bool)}
}

// Partition cuts (or, with cut false, restores) the path to addr; with
// addr nil it cuts or restores every path.
func (c *FaultConn) Partition(addr stdnet.Addr, cut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if addr == nil {
		c.all = cut
		if !cut {
			clear(c.partitioned)
		}
		return
	}
	c.partitioned[addr.String()] = cut
}

// SetFaults replaces the fault probabilities (the random sequence goes on).
func (c *FaultConn) SetFaults(f Faults) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.ReorderHold <= 0 {
		f.ReorderHold = 5 * time.Millisecond
	}
	f.Seed = c.f.Seed
	c.f = f
}

// Stats returns what the FaultConn has done so far.
func (c *FaultConn) Stats() FaultStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// WriteTo writes b to addr, subject to the configured faults. It reports
// success for datagrams it drops, as the network would.
func (c *FaultConn) WriteTo(b []byte, addr stdnet.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Written++
	if c.all || c.partitioned[addr.String()] || c.rng.Float64() < c.f.Loss {
		c.stats.Dropped++
		return len(b), nil
	}
	copies := 1
	if c.rng.Float64() < c.f.Duplicate {
		copies = 2
		c.stats.Duplicated++
	}
	if c.held == nil && c.rng.Float64() < c.f.Reorder {
		c.stats.Reordered++
		c.held, c.heldTo = append([]byte(nil), b...), addr
		c.heldTimer = time.AfterFunc(c.f.ReorderHold, c.releaseHeld)
		return len(b), nil
	}
	for range copies {
		c.emit(b, addr)
	}
	if c.held != nil {
		c.heldTimer.Stop()
		c.emit(c.held, c.heldTo)
		c.held = nil
	}
	return len(b), nil
}

func (c *FaultConn) releaseHeld() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held != nil {
		c.emit(c.held, c.heldTo)
		c.held = nil
	}
}

// emit sends now or after a random delay. Called with mu held.
func (c *FaultConn) emit(b []byte, addr stdnet.Addr) {
	if c.f.Delay <= 0 {
		c.PacketConn.WriteTo(b, addr)
		return
	}
	c.stats.Delayed++
	d := time.Duration(c.rng.Int63n(int64(c.f.Delay)))
	cp := append([]byte(nil), b...)
	time.AfterFunc(d, func() { c.PacketConn.WriteTo(cp, addr) })
}
