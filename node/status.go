package node

import (
	"slices"
	"time"

	"github.com/dsmrt/dsm/coherence"
	"github.com/dsmrt/dsm/coherence/rc"
	dsmnet "github.com/dsmrt/dsm/net"
)

// stats are the node's counters beside the pager's (pager.Counters).
type stats struct {
	bytesOut uint64
	attaches uint64
	lat      latencies
	stages   breakdown
	metrics  metricCounts // only the metrics show these (metrics.go)
}

// Breakdown is the fault path split into its stages (pager.Stages), for
// dsmnode status.
type Breakdown struct {
	Send    Percentiles `json:"send"`
	Remote  Percentiles `json:"remote"`
	Install Percentiles `json:"install"`
}

type breakdown struct {
	send, remote, install latencies
}

func (b *breakdown) percentiles() Breakdown {
	return Breakdown{Send: b.send.percentiles(), Remote: b.remote.percentiles(), Install: b.install.percentiles()}
}

// latencies keeps the most recent fault latencies for percentiles.
type latencies struct {
	ring  [8192]time.Duration
	n     uint64
	total uint64
	sum   time.Duration
	hist  durationBuckets // for the metrics' histograms
}

func (l *latencies) add(d time.Duration) {
	l.ring[l.n%uint64(len(l.ring))] = d
	l.n++
	l.total++
	l.sum += d
	l.hist.observe(d)
}

// Percentiles of fault latency over the most recent faults.
type Percentiles struct {
	Count  uint64        `json:"count"`
	Window int           `json:"window"`
	P50    time.Duration `json:"p50_ns"`
	P90    time.Duration `json:"p90_ns"`
	P99    time.Duration `json:"p99_ns"`
	Max    time.Duration `json:"max_ns"`
}

func (l *latencies) percentiles() Percentiles {
	k := int(min(l.n, uint64(len(l.ring))))
	out := Percentiles{Count: l.total, Window: k}
	if k == 0 {
		return out
	}
	s := slices.Clone(l.ring[:k])
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(k-1, int(q*float64(k)))] }
	out.P50, out.P90, out.P99, out.Max = at(0.50), at(0.90), at(0.99), s[k-1]
	return out
}

// Status is what `dsmnode status` shows of a node.
type Status struct {
	Node       int                 `json:"node"`
	Nodes      int                 `json:"nodes"`
	Base       uint64              `json:"base"`
	Size       uint64              `json:"size"`
	PageSize   int                 `json:"page_size"`
	MTU        int                 `json:"mtu"` // the largest datagram the transport sends
	Programs   int                 `json:"programs"`
	Pages      map[string]int      `json:"pages"`
	HomedPages int                 `json:"homed_pages"`
	Faults     map[string]uint64   `json:"faults"`
	Migrations map[string]uint64   `json:"migrations"`
	BytesOut   uint64              `json:"bytes_out"`
	Latency    Percentiles         `json:"fault_latency"`
	FaultTime  time.Duration       `json:"fault_time_ns"` // total time threads waited in faults
	Stages     Breakdown           `json:"fault_stages"`  // where remote faults spend their time
	Engine     coherence.Stats     `json:"engine"`
	Peers      []dsmnet.PeerStatus `json:"peers"`
	Locks      []LockInfo          `json:"locks,omitempty"`
	// RC is the release-consistent area's activity, when the cluster
	// keeps one.
	RC *RCStatus `json:"rc,omitempty"`
}

// RCStatus is what the release-consistent engine did on this node.
type RCStatus struct {
	Pages      uint64   `json:"pages"`    // pages in the area
	Written    int      `json:"written"`  // pages written since the last release or acquire
	Releases   uint64   `json:"releases"` // releases and acquires the engine ran
	Acquires   uint64   `json:"acquires"`
	Queued     int      `json:"queued"` // operations waiting for the engine
	Engine     rc.Stats `json:"engine"`
	RacesFound int      `json:"races_found"` // data races this node, as a home, found
	// Prefetched counts the pages prefetch hints asked for or made
	// writable ahead of a write.
	Prefetched uint64 `json:"prefetched"`
}

func (n *Node) status() Status {
	c := n.pg.Counters()
	st := Status{
		Node: n.cfg.ID, Nodes: n.cfg.Nodes, Base: n.cfg.Base, Size: n.cfg.Size, PageSize: n.ps, MTU: n.tr.MTU(),
		Programs: len(n.progs),
		Pages:    map[string]int{"invalid": 0, "shared": 0, "exclusive": 0},
		Faults: map[string]uint64{
			"read": c.ReadFaults, "write": c.WriteFaults, "write_protect": c.WPFaults,
		},
		Migrations: map[string]uint64{
			"in": c.MigrationsIn, "out": c.MigrationsOut,
			"installs": c.Installs, "drops": c.Drops, "holds": c.Holds,
			"read_ahead": c.ReadAheads,
			"prefetch":   c.Prefetches,
		},
		BytesOut:  n.stats.bytesOut,
		Latency:   n.stats.lat.percentiles(),
		FaultTime: n.stats.lat.sum,
		Stages:    n.stats.stages.percentiles(),
		Engine:    n.eng.Stats(),
		Peers:     n.tr.Peers(),
		Locks:     n.lockInfo(),
	}
	if rs := n.rcs; rs != nil {
		st.RC = &RCStatus{Pages: uint64(rs.hi - rs.lo), Written: len(rs.dirty), Releases: rs.releases, Acquires: rs.acquires,
			Queued: len(rs.queue), Engine: rs.eng.Stats(), RacesFound: rs.races, Prefetched: rs.prefetched}
	}
	for i, s := range n.pg.PhysStates() {
		switch s {
		case coherence.Invalid:
			st.Pages["invalid"]++
		case coherence.Shared:
			st.Pages["shared"]++
		case coherence.Exclusive:
			st.Pages["exclusive"]++
		}
		if int(n.Home(coherence.PageID(i))) == n.cfg.ID {
			st.HomedPages++
		}
	}
	return st
}
