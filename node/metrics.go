package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dsmrt/dsm/coherence"
	"github.com/dsmrt/dsm/coherence/rc"
	"github.com/dsmrt/dsm/lockmgr"
)

// Prometheus metrics (Config.Metrics). The daemon's counters already live
// in its stats, updated under n.mu by the event loop: a scrape copies them
// under n.mu (a collector, not instruments updated on the fault path) and
// turns them into metrics after releasing it, so the loop waits for a scrape
// only as long as a copy of a few hundred words and of the page states
// takes. The histograms are kept the same way: a bucket count per duration
// bound, incremented under n.mu where the duration is measured.
//
// Each node has a registry of its own, not the global one, so that several
// nodes in one process (tests) do not collide; every metric of the node
// carries its id in the label "node".

// durationBounds are the upper bounds of the daemon's duration histograms,
// a 1-2-5 series: a fault served without a message takes about 10 µs, a
// remote one on loopback about 100 µs, and a fault behind a slow or down
// peer, or a lock waited for behind another holder's lease, seconds.
var durationBounds = [...]time.Duration{
	10 * time.Microsecond, 20 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 200 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second,
}

// durationBuckets counts durations by the first bound of durationBounds
// they do not exceed. A duration above the last bound is in no bucket: it
// counts only in the total kept next to the buckets (the +Inf bucket).
type durationBuckets [len(durationBounds)]uint64

func (b *durationBuckets) observe(d time.Duration) {
	for i := range durationBounds {
		if d <= durationBounds[i] {
			b[i]++
			return
		}
	}
}

// durationHist is a histogram of durations: buckets, count and sum.
type durationHist struct {
	buckets durationBuckets
	count   uint64
	sum     time.Duration
}

func (h *durationHist) observe(d time.Duration) {
	h.buckets.observe(d)
	h.count++
	h.sum += d
}

// Lock wait outcomes: how a request that waited was answered.
const (
	lockGranted = iota // a lock, read lock or election won
	lockBarrier        // a barrier completed
	lockRefused        // refused (a barrier lost, a request canceled, ...)
	lockOutcomes
)

var lockOutcomeNames = [lockOutcomes]string{"granted", "barrier", "refused"}

// metricCounts are the counters only the metrics show. Like the rest of
// stats, they are updated under n.mu.
type metricCounts struct {
	// Faulting threads woken, by whether an answer (the page, or the
	// right to write it) came from another node.
	resolvedLocal, resolvedRemote uint64
	// How long the lock requests of programs waited for their answer, by
	// outcome, as this daemon saw them.
	lockWaits [lockOutcomes]durationHist
}

// countResolved counts the k faulting threads woken on a page, which did or
// did not need an answer from another node.
func (m *metricCounts) countResolved(k int, remote bool) {
	if remote {
		m.resolvedRemote += uint64(k)
	} else {
		m.resolvedLocal += uint64(k)
	}
}

// lockWaited records that a program's lock request waited d for its
// answer, an event of kind k.
func (m *metricCounts) lockWaited(k lockmgr.EventKind, d time.Duration) {
	switch k {
	case lockmgr.Granted:
		m.lockWaits[lockGranted].observe(d)
	case lockmgr.BarrierDone:
		m.lockWaits[lockBarrier].observe(d)
	case lockmgr.Refused:
		m.lockWaits[lockRefused].observe(d)
	}
}

// checkMetricsAddr checks the syntax of a metrics address (Config.Metrics),
// so that a mistake is reported before anything starts.
func checkMetricsAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = net.LookupPort("tcp", port)
	}
	if err != nil {
		return fmt.Errorf("metrics address %q: give host:port, such as 127.0.0.1:9100: %w", addr, err)
	}
	return nil
}

// metricsServer is the HTTP server of a node's metrics.
type metricsServer struct {
	ln  net.Listener
	srv *http.Server
}

// listenMetrics binds the metrics address, if there is one, and prepares the
// server that Run starts.
func (n *Node) listenMetrics() error {
	addr := n.cfg.Metrics
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics on %s: %w", addr, err)
	}
	reg := prometheus.NewRegistry()
	// The process and its Go runtime: one daemon per process outside tests.
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	prometheus.WrapRegistererWith(prometheus.Labels{"node": strconv.Itoa(n.cfg.ID)}, reg).MustRegister(&collector{n: n})
	errLog := slog.NewLogLogger(n.log.Handler(), slog.LevelWarn)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: errLog,
		// Scrapes wait for n.mu one after the other anyway: a pile of
		// them (a misconfigured scraper) would only keep the loop waiting.
		MaxRequestsInFlight: 2,
	}))
	n.metrics = &metricsServer{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          errLog,
	}}
	return nil
}

// MetricsAddr returns the address the node serves its metrics on, or nil
// when Config.Metrics is empty. With a port of 0 in Config.Metrics, it
// tells which port was chosen.
func (n *Node) MetricsAddr() net.Addr {
	if n.metrics == nil {
		return nil
	}
	return n.metrics.ln.Addr()
}

// serveMetrics starts serving the metrics, if they are on, until
// stopMetrics.
func (n *Node) serveMetrics() {
	m := n.metrics
	if m == nil {
		return
	}
	n.log.Info("serving metrics", "url", "http://"+m.ln.Addr().String()+"/metrics")
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := m.srv.Serve(m.ln); !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("metrics server stopped", "err", err)
		}
	}()
}

// stopMetrics stops the metrics server and waits a moment for the scrapes
// in progress, which need n.mu: it must not be held.
func (n *Node) stopMetrics() {
	m := n.metrics
	if m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.srv.Shutdown(ctx); err != nil {
		m.srv.Close()
	}
}

// Descriptions of the metrics. The label "node" is added to all of them
// when the collector is registered.
var (
	descFaults = prometheus.NewDesc("dsm_faults_total",
		"Page faults of attached programs served by this node, by kind: read, write (to a page not present) or write_protect (to a page present read-only).",
		[]string{"kind"}, nil)
	descResolved = prometheus.NewDesc("dsm_faults_resolved_total",
		"Faulting threads woken, by source: remote when the page, or the right to write it, came from another node, local otherwise.",
		[]string{"source"}, nil)
	descFaultsWaiting = prometheus.NewDesc("dsm_faults_waiting",
		"Faults read and not yet resolved.", nil, nil)
	descFaultLatency = prometheus.NewDesc("dsm_fault_latency_seconds",
		"Time from reading a page fault to waking its thread.", nil, nil)
	descFaultStage = prometheus.NewDesc("dsm_fault_stage_seconds",
		"Where remote faults spend their time: from the fault to the first request sent (send), from there to the answer (remote), from the answer to the thread woken (install).",
		[]string{"stage"}, nil)
	descPages = prometheus.NewDesc("dsm_pages",
		"Pages of the region on this node, by state.", []string{"state"}, nil)
	descMigrations = prometheus.NewDesc("dsm_migrations_total",
		"Pages that arrived with data written on another node (in), and pages this node wrote and handed to another (out).",
		[]string{"direction"}, nil)
	descInstalls = prometheus.NewDesc("dsm_page_installs_total",
		"Pages installed in the region (with data or zero).", nil, nil)
	descDrops = prometheus.NewDesc("dsm_page_drops_total",
		"Pages dropped from the region (invalidated or handed away).", nil, nil)
	descHolds = prometheus.NewDesc("dsm_page_holds_total",
		"Requests for a page served only after the minimum hold of a local fault.", nil, nil)
	descReadAhead = prometheus.NewDesc("dsm_read_ahead_pages_total",
		"Pages asked for ahead of a sequential reader.", nil, nil)
	descPrefetch = prometheus.NewDesc("dsm_prefetch_pages_total",
		"Pages asked for (or, release-consistent, made writable) on a program's prefetch hint (Region.Prefetch).", nil, nil)
	descRCOps = prometheus.NewDesc("dsm_rc_operations_total",
		"Releases and acquires of release-consistent memory the engine ran.", []string{"op"}, nil)
	descRCDiffs = prometheus.NewDesc("dsm_rc_diffs_total",
		"Diffs of written release-consistent pages, by where their home is.", []string{"home"}, nil)
	descRCDiffBytes = prometheus.NewDesc("dsm_rc_diff_bytes_total",
		"Changed bytes the diffs carried.", nil, nil)
	descRCFetches = prometheus.NewDesc("dsm_rc_fetches_total",
		"Copies of release-consistent pages asked for (from a home, or this node's own master).", nil, nil)
	descRCInvalidations = prometheus.NewDesc("dsm_rc_invalidations_total",
		"Copies an acquire dropped.", nil, nil)
	descRCShares = prometheus.NewDesc("dsm_rc_shared_pages_total",
		"Pages written in place by this home that another node asked for (tracked from then on).", nil, nil)
	descRCPayloadNotices = prometheus.NewDesc("dsm_rc_payload_notices_total",
		"Writers whose notices an acquire took from the lock's or barrier's payload, without asking them.", nil, nil)
	descRCRaces = prometheus.NewDesc("dsm_rc_races_total",
		"Data races this node, as a home, found.", nil, nil)
	descCoherenceBytes = prometheus.NewDesc("dsm_coherence_sent_bytes_total",
		"Bytes of coherence messages (pages included) handed to the transport.", nil, nil)
	descRequests = prometheus.NewDesc("dsm_coherence_requests_total",
		"Coherence requests sent (first transmissions).", nil, nil)
	descCoherenceRetransmits = prometheus.NewDesc("dsm_coherence_retransmits_total",
		"Coherence requests, confirmations, hand-overs and queries sent again.", nil, nil)
	descAnomalies = prometheus.NewDesc("dsm_coherence_anomalies_total",
		"Situations the coherence protocol rules out, survived: a bug if not zero.", nil, nil)
	descPrograms = prometheus.NewDesc("dsm_programs_attached",
		"Programs attached to this node.", nil, nil)
	descAttaches = prometheus.NewDesc("dsm_attaches_total",
		"Programs that attached since the daemon started.", nil, nil)
	descLockWait = prometheus.NewDesc("dsm_lock_wait_seconds",
		"How long lock requests of programs (lock, read lock, election, barrier) waited for their answer, by outcome: granted, barrier (completed) or refused.",
		[]string{"outcome"}, nil)
	descLocksWaiting = prometheus.NewDesc("dsm_lock_requests_waiting",
		"Lock requests of programs waiting for their answer.", nil, nil)
	descPeersUp = prometheus.NewDesc("dsm_peers_up",
		"Peers with a session up.", nil, nil)
	descPeerUp = prometheus.NewDesc("dsm_peer_up",
		"1 if the session with the peer is up, 0 otherwise.", []string{"peer"}, nil)
	descPeerRTT = prometheus.NewDesc("dsm_peer_rtt_seconds",
		"Last ping round trip to the peer.", []string{"peer"}, nil)
	descPeerSessions = prometheus.NewDesc("dsm_peer_sessions_total",
		"Handshakes completed with the peer.", []string{"peer"}, nil)
	descSentBytes = prometheus.NewDesc("dsm_transport_sent_bytes_total",
		"Bytes of datagrams sent to the peer.", []string{"peer"}, nil)
	descReceivedBytes = prometheus.NewDesc("dsm_transport_received_bytes_total",
		"Bytes of datagrams received from the peer.", []string{"peer"}, nil)
	descSentDatagrams = prometheus.NewDesc("dsm_transport_sent_datagrams_total",
		"Datagrams sent to the peer.", []string{"peer"}, nil)
	descReceivedDatagrams = prometheus.NewDesc("dsm_transport_received_datagrams_total",
		"Datagrams received from the peer.", []string{"peer"}, nil)
	descRetransmits = prometheus.NewDesc("dsm_transport_retransmits_total",
		"Transport (KCP) data segments sent to the peer more than once.", []string{"peer"}, nil)
	descAuthFailures = prometheus.NewDesc("dsm_transport_auth_failures_total",
		"Datagrams from the peer's address that failed authentication.", []string{"peer"}, nil)
	descDropped = prometheus.NewDesc("dsm_transport_dropped_datagrams_total",
		"Authenticated datagrams from the peer dropped as stale, replayed, duplicated or malformed.", []string{"peer"}, nil)
	descFECRecovered = prometheus.NewDesc("dsm_transport_fec_recovered_total",
		"Datagrams from the peer rebuilt from parity.", []string{"peer"}, nil)
	descUnattributed = prometheus.NewDesc("dsm_transport_unattributed_datagrams_total",
		"Datagrams no peer could be charged with, by reason.", []string{"reason"}, nil)
)

// collector turns a node's counters into metrics at scrape time.
type collector struct {
	n *Node

	mu   sync.Mutex        // one scrape at a time: phys is their scratch
	phys []coherence.State // copy of n.phys, counted outside n.mu
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descFaults, descResolved, descFaultsWaiting, descFaultLatency, descFaultStage,
		descPages, descMigrations, descInstalls, descDrops, descHolds, descReadAhead, descPrefetch,
		descRCOps, descRCDiffs, descRCDiffBytes, descRCFetches, descRCInvalidations, descRCShares,
		descRCPayloadNotices, descRCRaces,
		descCoherenceBytes, descRequests, descCoherenceRetransmits, descAnomalies,
		descPrograms, descAttaches, descLockWait, descLocksWaiting,
		descPeersUp, descPeerUp, descPeerRTT, descPeerSessions,
		descSentBytes, descReceivedBytes, descSentDatagrams, descReceivedDatagrams,
		descRetransmits, descAuthFailures, descDropped, descFECRecovered, descUnattributed,
	} {
		ch <- d
	}
}

// latencyHist copies the histogram kept with l.
func latencyHist(l *latencies) durationHist {
	return durationHist{buckets: l.hist, count: l.total, sum: l.sum}
}

// metricsSnapshot is what a scrape copies from the node under n.mu.
type metricsSnapshot struct {
	readFaults, writeFaults, wpFaults uint64
	resolvedLocal, resolvedRemote     uint64
	faultsWaiting                     int
	lat, send, remote, install        durationHist
	lockWaits                         [lockOutcomes]durationHist
	locksWaiting                      int
	migrationsIn, migrationsOut       uint64
	installs, drops, holds            uint64
	readAheads, prefetches, bytesOut  uint64
	programs                          int
	attaches                          uint64
	eng                               coherence.Stats
	// The release-consistent area's, when the cluster keeps one.
	rc                 *rc.Stats
	releases, acquires uint64
	races              int
}

// snapshot copies the node's counters, and its page states into c.phys.
// It holds n.mu for as long as that takes and no longer.
func (c *collector) snapshot() metricsSnapshot {
	n := c.n
	n.mu.Lock()
	defer n.mu.Unlock()
	s := &n.stats
	pc := n.pg.Counters()
	out := metricsSnapshot{
		readFaults: pc.ReadFaults, writeFaults: pc.WriteFaults, wpFaults: pc.WPFaults,
		resolvedLocal: s.metrics.resolvedLocal, resolvedRemote: s.metrics.resolvedRemote,
		lat: latencyHist(&s.lat), send: latencyHist(&s.stages.send),
		remote: latencyHist(&s.stages.remote), install: latencyHist(&s.stages.install),
		lockWaits: s.metrics.lockWaits, locksWaiting: len(n.locks.pending),
		migrationsIn: pc.MigrationsIn, migrationsOut: pc.MigrationsOut,
		installs: pc.Installs, drops: pc.Drops, holds: pc.Holds,
		readAheads: pc.ReadAheads, prefetches: pc.Prefetches, bytesOut: s.bytesOut,
		programs: len(n.progs), attaches: s.attaches,
		eng: n.eng.Stats(),
	}
	if rs := n.rcs; rs != nil {
		st := rs.eng.Stats()
		out.rc, out.releases, out.acquires, out.races = &st, rs.releases, rs.acquires, rs.races
		out.prefetches += rs.prefetched
	}
	out.faultsWaiting = n.pg.Waiting()
	c.phys = append(c.phys[:0], n.pg.PhysStates()...)
	return out
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.snapshot()
	// The transport keeps its counters under locks of its own.
	peers := c.n.tr.Peers()
	trs := c.n.tr.Stats()

	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	hist := func(d *prometheus.Desc, h durationHist, labels ...string) {
		buckets := make(map[float64]uint64, len(durationBounds))
		var cum uint64
		for i, b := range durationBounds {
			cum += h.buckets[i]
			buckets[b.Seconds()] = cum
		}
		ch <- prometheus.MustNewConstHistogram(d, h.count, h.sum.Seconds(), buckets, labels...)
	}

	counter(descFaults, s.readFaults, "read")
	counter(descFaults, s.writeFaults, "write")
	counter(descFaults, s.wpFaults, "write_protect")
	counter(descResolved, s.resolvedLocal, "local")
	counter(descResolved, s.resolvedRemote, "remote")
	gauge(descFaultsWaiting, float64(s.faultsWaiting))
	hist(descFaultLatency, s.lat)
	hist(descFaultStage, s.send, "send")
	hist(descFaultStage, s.remote, "remote")
	hist(descFaultStage, s.install, "install")

	var pages [3]int
	for _, st := range c.phys {
		if int(st) < len(pages) {
			pages[st]++
		}
	}
	gauge(descPages, float64(pages[coherence.Invalid]), "invalid")
	gauge(descPages, float64(pages[coherence.Shared]), "shared")
	gauge(descPages, float64(pages[coherence.Exclusive]), "exclusive")
	counter(descMigrations, s.migrationsIn, "in")
	counter(descMigrations, s.migrationsOut, "out")
	counter(descInstalls, s.installs)
	counter(descDrops, s.drops)
	counter(descHolds, s.holds)
	counter(descReadAhead, s.readAheads)
	counter(descPrefetch, s.prefetches)
	if r := s.rc; r != nil {
		counter(descRCOps, s.releases, "release")
		counter(descRCOps, s.acquires, "acquire")
		counter(descRCDiffs, uint64(r.Diffs-r.RemoteDiffs), "local")
		counter(descRCDiffs, uint64(r.RemoteDiffs), "remote")
		counter(descRCDiffBytes, uint64(r.DiffBytes))
		counter(descRCFetches, uint64(r.Fetches))
		counter(descRCInvalidations, uint64(r.Invalidations))
		counter(descRCShares, uint64(r.Shares))
		counter(descRCPayloadNotices, uint64(r.PayloadNotices))
		counter(descRCRaces, uint64(s.races))
	}
	counter(descCoherenceBytes, s.bytesOut)
	counter(descRequests, s.eng.Requests)
	counter(descCoherenceRetransmits, s.eng.Retransmits)
	counter(descAnomalies, s.eng.Anomalies)

	gauge(descPrograms, float64(s.programs))
	counter(descAttaches, s.attaches)
	for i, h := range s.lockWaits {
		hist(descLockWait, h, lockOutcomeNames[i])
	}
	gauge(descLocksWaiting, float64(s.locksWaiting))

	up := 0
	for _, p := range peers {
		id := strconv.Itoa(int(p.ID))
		v := 0.0
		if p.Up {
			up++
			v = 1
		}
		gauge(descPeerUp, v, id)
		if p.RTT > 0 {
			gauge(descPeerRTT, p.RTT.Seconds(), id)
		}
		counter(descPeerSessions, p.Sessions, id)
		counter(descSentBytes, p.BytesOut, id)
		counter(descReceivedBytes, p.BytesIn, id)
		counter(descSentDatagrams, p.PacketsOut, id)
		counter(descReceivedDatagrams, p.PacketsIn, id)
		counter(descRetransmits, p.Retransmits, id)
		counter(descAuthFailures, p.AuthFailures, id)
		counter(descDropped, p.Dropped, id)
		counter(descFECRecovered, p.FECRecovered, id)
	}
	gauge(descPeersUp, float64(up))
	unattributed := []struct {
		reason string
		v      uint64
	}{
		{"unknown_sender", trs.UnknownSender}, {"misaddressed", trs.Misaddressed},
		{"malformed", trs.Malformed}, {"impostor", trs.Impostor},
	}
	for _, u := range unattributed {
		counter(descUnattributed, u.v, u.reason)
	}
}
