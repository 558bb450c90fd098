package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/dht"
	dsmnet "github.com/dsmrt/dsm/net"
	"github.com/dsmrt/dsm/node"
	"github.com/dsmrt/dsm/uffd"
)

// firstPage is where the pages a run measures start; the pages below are
// left alone.
const firstPage = 16

// addLatency records a latency figure and keeps its samples for the plots.
func (s *suite) addLatency(f Figure, samples []int64) {
	f.Latency = summarize(samples)
	if f.Compare == "" && f.Part != "limits" {
		f.Compare = cmpLatency
	}
	if s.plots.samples == nil {
		s.plots.samples = map[string][]int64{}
	}
	s.plots.samples[f.Key] = samples
	s.res.add(f)
}

// Kinds of limits measured by this package rather than by package uffd or
// package net.
const (
	limitUffd  = "uffd"  // a local userfaultfd fault
	limitChain = "chain" // the remote read fault chain (chain.go)
)

// limitKinds are the machine's limits, in the order they are measured and
// shown.
var limitKinds = []struct{ kind, key, name, note string }{
	// The chain is the limit the fault figures' ratios use.
	{limitChain, keyLimitChain, "remote read fault chain: userfaultfd → UDP request → 4 KiB UDP reply → UFFDIO_COPY", chainNote},
	{limitUffd, "limit/uffd_local_fault", "local userfaultfd fault (MISSING, UFFDIO_COPY, resolver in another process)", "time of the faulting load"},
	{dsmnet.RoundTripUDP, "limit/udp_rtt", "UDP round trip, 64 B request / 4 KiB reply, loopback", "raw datagrams; not used in the ratios"},
	{dsmnet.RoundTripKCP, "limit/kcp_rtt", "KCP round trip, 64 B request / 4 KiB reply, loopback", "our transport (net.Transport), encrypted; with the local fault, the yardstick of the × KCP limit column"},
	// The same between two processes, as node daemons are: shown beside
	// the in-process limits, which the KCP ratios keep using.
	{dsmnet.RoundTripUDP2Proc, "limit/udp_rtt_2proc", "UDP round trip between two processes, 64 B request / 4 KiB reply, loopback", "raw datagrams; the echo server is a second process; not used in the ratios"},
	{dsmnet.RoundTripKCP2Proc, "limit/kcp_rtt_2proc", "KCP round trip between two processes, 64 B request / 4 KiB reply, loopback", "our transport, the echo server a second process; not used in the ratios"},
}

// limitRun is one measurement of every limit.
type limitRun struct {
	when      string
	samples   map[string][]int64 // by limitKinds[].kind
	chainCost *FaultCost         // what the chain's processes spent
}

// limits measures the machine's limits: the remote read fault chain, a
// local userfaultfd fault, and 4 KiB round trips over raw UDP and over our
// KCP transport. The suite measures them again at the end (measureLimits)
// and keeps, for each, the measurement with the lower median: a machine
// disturbed by other work for a moment should not flatter the figures
// compared with it.
func (s *suite) limits(ctx context.Context) error {
	return s.measureLimits(ctx, "start")
}

func (s *suite) measureLimits(ctx context.Context, when string) error {
	n := s.cfg.LimitCount
	run := limitRun{when: when, samples: map[string][]int64{}}
	for _, k := range limitKinds {
		var d []time.Duration
		var err error
		switch k.kind {
		case limitChain:
			s.prog.step("remote fault chain (" + when + ")")
			d, run.chainCost, err = measureChain(ctx, n)
		case limitUffd:
			s.prog.step("local userfaultfd fault (" + when + ")")
			d, err = uffd.MeasureLocalFault(n)
		default:
			s.prog.step(k.kind + " round trips (" + when + ")")
			d, err = dsmnet.MeasureRoundTrip(ctx, k.kind, n)
		}
		if err != nil {
			return fmt.Errorf("%s (%s of the run): %w", k.name, when, err)
		}
		run.samples[k.kind] = durationsNs(d)
	}
	s.limitRuns = append(s.limitRuns, run)
	return nil
}

// settleLimits picks, for each limit, the measurement with the lower
// median, and records the limits and their figures.
func (s *suite) settleLimits() {
	if len(s.limitRuns) == 0 {
		return
	}
	var figs []Figure
	for _, k := range limitKinds {
		best, bestStat := -1, Stat{}
		var all []string
		lim := LimitMeasurement{Limit: k.key}
		for i, r := range s.limitRuns {
			st := summarize(r.samples[k.kind])
			lim.Runs = append(lim.Runs, LimitRun{When: r.when, Stat: st})
			all = append(all, r.when+" "+fmtNs(st.Median))
			if best < 0 || st.Median < bestStat.Median {
				best, bestStat = i, st
			}
		}
		s.res.Limits.Measurements = append(s.res.Limits.Measurements, lim)
		switch k.kind {
		case limitChain:
			s.res.Limits.Chain = bestStat
		case limitUffd:
			s.res.Limits.UffdFault = bestStat
		case dsmnet.RoundTripUDP:
			s.res.Limits.UDP = bestStat
		case dsmnet.RoundTripKCP:
			s.res.Limits.KCP = bestStat
		}
		note := k.note
		if len(s.limitRuns) > 1 {
			note += fmt.Sprintf("; the lower median of %d measurements (%s): the %s one", len(s.limitRuns), strings.Join(all, ", "), s.limitRuns[best].when)
		}
		samples := s.limitRuns[best].samples[k.kind]
		if s.plots.samples == nil {
			s.plots.samples = map[string][]int64{}
		}
		s.plots.samples[k.key] = samples
		f := Figure{Key: k.key, Part: "limits", Name: k.name, Note: note, Latency: bestStat}
		if c := s.limitRuns[best].chainCost; k.kind == limitChain && c != nil {
			// The floor of the per-fault costs too: CPU of A and B (their
			// start included), switches of all three processes.
			f.setCost(c) // an error leaves the figure without costs
		}
		figs = append(figs, f)
	}
	s.res.Figures = append(figs, s.res.Figures...)
}

// homeNames describes the home classes of a read run.
var homeNames = map[string]string{
	"home=reader": "page homed on the reader",
	"home=writer": "page homed on the writer",
	"home=other":  "page homed on a third node",
}

// addRead records the figures of a read run: all faults, then one figure
// per home class.
func (s *suite) addRead(part, key, fullName string, nodes int, out runOutcome, params map[string]any) error {
	r, ok := out.byNode(0)
	if !ok || len(r.Samples) == 0 {
		return fmt.Errorf("%s: the reader reported no samples", key)
	}
	if r.Checked != len(r.Samples) {
		return fmt.Errorf("%s: the reader verified %d of the %d pages it read", key, r.Checked, len(r.Samples))
	}
	f := Figure{Key: key, Part: part, Name: fullName, Nodes: nodes, Params: params, Daemon: out.daemonLatency(0)}
	f.BytesPerPage = float64(out.delta.bytesOut) / float64(len(r.Samples))
	if err := out.setCost(&f); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	s.addLatency(f, r.Samples)
	if len(r.Class) != len(r.Samples) {
		return fmt.Errorf("%s: %d samples but %d home classes", key, len(r.Samples), len(r.Class))
	}
	groups := make([][]int64, len(homeClasses))
	for i, c := range r.Class {
		if int(c) >= len(groups) {
			return fmt.Errorf("%s: home class %d out of range", key, c)
		}
		groups[c] = append(groups[c], r.Samples[i])
	}
	for c, g := range groups {
		if len(g) == 0 {
			continue
		}
		name := homeClasses[c]
		s.addLatency(Figure{Key: key + "/" + name, Part: part, Name: fullName + ", " + homeNames[name], Nodes: nodes, Params: params}, g)
	}
	return nil
}

// daemonLatency is node id's daemon's own fault latency over the run, or
// nil when its window of recent faults reaches back before the run. In
// every mode the measuring node takes only the faults it measures (and the
// few of the setup), so these are the same faults seen from the daemon.
func (o runOutcome) daemonLatency(id int) *DaemonLatency {
	if id >= len(o.status) || id >= len(o.faults) {
		return nil
	}
	l := o.status[id].Latency
	if l.Window == 0 || uint64(l.Window) > o.faults[id] {
		return nil
	}
	return &DaemonLatency{Window: l.Window, Median: float64(l.P50), P99: float64(l.P99)}
}

// setCost gives f the cost of node 0's faults, when the run's spec asked
// for it (spec.Daemons).
func (o runOutcome) setCost(f *Figure) error {
	if len(o.spec.Daemons) == 0 {
		return nil
	}
	r, _ := o.byNode(0)
	return f.setCost(r.Cost)
}

func readParams(sp spec, extra map[string]any) map[string]any {
	p := map[string]any{"content": sp.Content, "pages": sp.Pages, "rounds": sp.Rounds}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

// readFault: node 1 writes pages, node 0 reads each (a remote read fault),
// round after round.
func (s *suite) readFault(ctx context.Context) error {
	return s.withCluster(ctx, "2 nodes", 2, nil, func(c *cluster.Cluster, logs *tailBuffer) error {
		daemons, err := daemonRefs(c)
		if err != nil {
			return err
		}
		sp := spec{Mode: modeRead, Tag: "read", First: firstPage, Pages: s.cfg.ReadPages, Rounds: s.cfg.ReadRounds, Content: s.cfg.Content, Daemons: daemons}
		out, err := s.runWorkers(ctx, c, logs, sp)
		if err != nil {
			return err
		}
		return s.addRead("readfault", "read_fault", "remote read fault ("+sp.Content+" pages)", 2, out, readParams(sp, nil))
	})
}

// ownerRun runs the ownership write fault on c and records it under key;
// with daemons, it measures what the faults cost them (see FaultCost).
func (s *suite) ownerRun(ctx context.Context, c *cluster.Cluster, logs *tailBuffer, part, key string, first, pages int, daemons []daemonRef) error {
	sp := spec{Mode: modeOwner, Tag: key, First: first, Pages: pages, Daemons: daemons}
	out, err := s.runWorkers(ctx, c, logs, sp)
	if err != nil {
		return err
	}
	r, ok := out.byNode(0)
	if !ok || len(r.Samples) == 0 {
		return fmt.Errorf("%s: the writer reported no samples", key)
	}
	f := Figure{Key: key, Part: part, Nodes: len(c.Daemons), Daemon: out.daemonLatency(0),
		Name:   "write fault taking ownership (first write, never-touched page homed elsewhere)",
		Params: map[string]any{"pages": pages},
		Note:   "the home grants a zero page: no data travels"}
	if err := out.setCost(&f); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	s.addLatency(f, r.Samples)
	return nil
}

func (s *suite) ownerWrite(ctx context.Context) error {
	return s.withCluster(ctx, "2 nodes", 2, nil, func(c *cluster.Cluster, logs *tailBuffer) error {
		daemons, err := daemonRefs(c)
		if err != nil {
			return err
		}
		return s.ownerRun(ctx, c, logs, "ownerwrite", "write_fault_owner", firstPage, s.cfg.OwnerPages, daemons)
	})
}

// invalidate: node 0 writes pages that k other nodes hold read-only.
func (s *suite) invalidate(ctx context.Context) error {
	n := s.cfg.InvalidateNodes
	return s.withCluster(ctx, strconv.Itoa(n)+" nodes", n, nil, func(c *cluster.Cluster, logs *tailBuffer) error {
		first := firstPage
		for k := 1; k < n; k++ {
			s.prog.step(fmt.Sprintf("%d nodes, k=%d", n, k))
			sp := spec{Mode: modeInvalidate, Tag: "k" + strconv.Itoa(k), K: k, First: first, Pages: s.cfg.InvPages, Rounds: s.cfg.InvRounds}
			_, first = pagesNotHomedOn(n, 0, first, sp.Pages)
			out, err := s.runWorkers(ctx, c, logs, sp)
			if err != nil {
				return err
			}
			r, ok := out.byNode(0)
			if !ok || len(r.Samples) == 0 {
				return fmt.Errorf("k=%d: the writer reported no samples", k)
			}
			s.addLatency(Figure{Key: fmt.Sprintf("write_fault_invalidate/nodes=%d/k=%d", n, k), Part: "invalidate", Nodes: n, Daemon: out.daemonLatency(0),
				Name:   fmt.Sprintf("write fault invalidating %d reader(s)", k),
				Params: map[string]any{"k": k, "pages": sp.Pages, "rounds": sp.Rounds},
				Note:   "upgrade of the writer's read-only copy; pages homed on nodes other than the writer"}, r.Samples)
		}
		return nil
	})
}

// scan: node 0 reads a region node 1 wrote, start to end, at each
// read-ahead depth: depth d has the reader's daemon ask for d-1 pages ahead
// of a sequential read fault (node.Config.ReadAhead), so depth 1 is no
// read-ahead.
func (s *suite) scan(ctx context.Context) error {
	for _, depth := range s.cfg.ScanDepths {
		ahead := depth - 1
		if ahead == 0 {
			ahead = -1 // none (0 would mean the daemon's default)
		}
		tune := func(c *node.Config) { c.ReadAhead = ahead }
		err := s.withCluster(ctx, "2 nodes, depth "+strconv.Itoa(depth), 2, tune, func(c *cluster.Cluster, logs *tailBuffer) error {
			daemons, err := daemonRefs(c)
			if err != nil {
				return err
			}
			sp := spec{Mode: modeScan, Tag: "scan", Depth: depth, First: firstPage, Pages: s.cfg.ScanPages, Rounds: s.cfg.ScanRounds, Content: s.cfg.Content, Daemons: daemons}
			out, err := s.runWorkers(ctx, c, logs, sp)
			if err != nil {
				return err
			}
			r, ok := out.byNode(0)
			if !ok || r.Elapsed <= 0 || r.Ops == 0 {
				return fmt.Errorf("depth %d: the reader reported no scan", depth)
			}
			secs := float64(r.Elapsed) / 1e9
			f := Figure{Key: fmt.Sprintf("scan/depth=%d", depth), Part: "scan", Nodes: 2, Daemon: out.daemonLatency(0),
				Name:        fmt.Sprintf("sequential scan, read-ahead depth %d (%s pages, %d MiB)", depth, sp.Content, sp.Pages*s.ps>>20),
				Params:      readParams(sp, map[string]any{"depth": depth}),
				Compare:     cmpThroughput,
				PagesPerSec: float64(r.Ops) / secs,
				MBPerSec:    float64(r.Ops) * float64(s.ps) / secs / 1e6,
				Note:        scanNote(depth),
			}
			if err := out.setCost(&f); err != nil {
				return fmt.Errorf("depth %d: %w", depth, err)
			}
			s.addLatency(f, r.Samples)
			s.plots.scan = append(s.plots.scan, scanPoint{depth: depth, mbps: f.MBPerSec})
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// pagesHomedOn returns the first n pages from first on homed on node.
func pagesHomedOn(nodes, node, first, n int) []int {
	ring := dht.ClusterRing(nodes)
	var out []int
	for p := first; len(out) < n; p++ {
		if int(ring.Home(dht.PageKey(uint32(p)))) == node {
			out = append(out, p)
		}
	}
	return out
}

// pingPong: two nodes take turns writing one page, then both hammer one.
func (s *suite) pingPong(ctx context.Context) error {
	return s.withCluster(ctx, "2 nodes", 2, nil, func(c *cluster.Cluster, logs *tailBuffer) error {
		pages := pagesHomedOn(2, 0, firstPage, 2)
		s.prog.step("2 nodes, turns")
		sp := spec{Mode: modeTurns, Tag: "turns", First: pages[0], Iters: s.cfg.Turns}
		out, err := s.runWorkers(ctx, c, logs, sp)
		if err != nil {
			return err
		}
		var writes []int64
		var elapsed int64
		for _, r := range out.results {
			writes = append(writes, r.Samples...)
			elapsed = max(elapsed, r.Elapsed)
		}
		r0, _ := out.byNode(0)
		if len(r0.Cycles) == 0 || elapsed <= 0 {
			return fmt.Errorf("turns: node 0 reported no cycles")
		}
		handovers := make([]int64, len(r0.Cycles))
		for i, c := range r0.Cycles {
			handovers[i] = c / 2
		}
		secs := float64(elapsed) / 1e9
		params := map[string]any{"turns_per_node": sp.Iters, "page_home": "node 0"}
		s.addLatency(Figure{Key: "pingpong/turns/handover", Part: "pingpong", Nodes: 2,
			Name: "ping-pong by turns: one handover (half a cycle of node 0)", Params: params,
			MigrationsPerSec: float64(out.delta.migrations) / secs, Migrations: out.delta.migrations,
			Note: "a handover: the waiting node's read fault, then its write upgrade"}, handovers)
		s.addLatency(Figure{Key: "pingpong/turns/write", Part: "pingpong", Nodes: 2,
			Name: "ping-pong by turns: the write of a turn (both nodes)", Params: params,
			Note: "an upgrade that invalidates the other node's copy"}, writes)

		s.prog.step("2 nodes, hammer")
		sp = spec{Mode: modeHammer, Tag: "hammer", First: pages[1], Duration: s.cfg.HammerTime}
		out, err = s.runWorkers(ctx, c, logs, sp)
		if err != nil {
			return err
		}
		h := newHist()
		var ops uint64
		elapsed = 0
		for _, r := range out.results {
			if r.Hist == nil {
				return fmt.Errorf("hammer: node %d sent no histogram", r.Node)
			}
			if err := h.merge(r.Hist); err != nil {
				return fmt.Errorf("hammer: node %d: %w", r.Node, err)
			}
			ops += uint64(r.Ops)
			elapsed = max(elapsed, r.Elapsed)
		}
		if r0, _ := out.byNode(0); r0.Final != ops {
			return fmt.Errorf("hammer: the word is %d after %d increments: increments were lost", r0.Final, ops)
		}
		if elapsed <= 0 || h.N == 0 {
			return fmt.Errorf("hammer: no increments")
		}
		secs = float64(elapsed) / 1e9
		s.res.add(Figure{Key: "pingpong/hammer", Part: "pingpong", Nodes: 2,
			Name:             "ping-pong hammered: each increment (both nodes at once)",
			Params:           map[string]any{"seconds": s.cfg.HammerTime.Seconds(), "page_home": "node 0"},
			Latency:          h.stat(),
			Compare:          cmpMigrations,
			MigrationsPerSec: float64(out.delta.migrations) / secs, Migrations: out.delta.migrations,
			Note: fmt.Sprintf("%s per increment on average (time / increments of a node); %.3f migrations per 100 increments",
				fmtNs(float64(2*elapsed)/float64(ops)), 100*float64(out.delta.migrations)/float64(ops)),
		})
		return nil
	})
}

// size: read and ownership faults on clusters of each size.
func (s *suite) size(ctx context.Context) error {
	for _, n := range s.cfg.Sizes {
		err := s.withCluster(ctx, strconv.Itoa(n)+" nodes", n, nil, func(c *cluster.Cluster, logs *tailBuffer) error {
			sp := spec{Mode: modeRead, Tag: "size", First: firstPage, Pages: s.cfg.SizePages, Rounds: s.cfg.SizeRounds, Content: s.cfg.Content}
			out, err := s.runWorkers(ctx, c, logs, sp)
			if err != nil {
				return err
			}
			key := fmt.Sprintf("size/nodes=%d", n)
			if err := s.addRead("size", key+"/read_fault", fmt.Sprintf("remote read fault, %d nodes (%s pages)", n, sp.Content), n, out, readParams(sp, nil)); err != nil {
				return err
			}
			if err := s.ownerRun(ctx, c, logs, "size", key+"/write_fault_owner", firstPage+sp.Pages, s.cfg.SizeOwnerPages, nil); err != nil {
				return err
			}
			s.plots.size = append(s.plots.size, n)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// content: the read fault for each kind of page content, with and without
// compression.
func (s *suite) content(ctx context.Context) error {
	for _, compress := range []bool{true, false} {
		mode := "compress"
		if !compress {
			mode = "nocompress"
		}
		tune := func(c *node.Config) { c.NoCompress = !compress }
		err := s.withCluster(ctx, "2 nodes, "+mode, 2, tune, func(c *cluster.Cluster, logs *tailBuffer) error {
			first := firstPage
			for _, kind := range []string{contentZero, contentText, contentRandom} {
				s.prog.step(fmt.Sprintf("2 nodes, %s, %s pages", mode, kind))
				sp := spec{Mode: modeRead, Tag: kind, First: first, Pages: s.cfg.ContentPages, Rounds: s.cfg.ContentRounds, Content: kind}
				first += sp.Pages
				out, err := s.runWorkers(ctx, c, logs, sp)
				if err != nil {
					return err
				}
				r, ok := out.byNode(0)
				if !ok || len(r.Samples) == 0 {
					return fmt.Errorf("%s: the reader reported no samples", kind)
				}
				s.addLatency(Figure{Key: "content/" + kind + "/" + mode, Part: "content", Nodes: 2, Daemon: out.daemonLatency(0),
					Name:         fmt.Sprintf("remote read fault, %s pages, %s", kind, map[bool]string{true: "compressed (s2)", false: "uncompressed"}[compress]),
					Params:       readParams(sp, map[string]any{"compress": compress}),
					BytesPerPage: float64(out.delta.bytesOut) / float64(len(r.Samples)),
				}, r.Samples)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func lossName(l float64) string { return strconv.FormatFloat(l*100, 'f', -1, 64) + "%" }

// loss: the read fault with packet loss injected into every node's
// socket, with and without forward error correction.
func (s *suite) loss(ctx context.Context) error {
	fecName := fmt.Sprintf("fec%d+%d", s.cfg.FECData, s.cfg.FECParity)
	for _, l := range s.cfg.Losses {
		for _, fec := range []bool{false, true} {
			mode := "nofec"
			if fec {
				mode = fecName
			}
			tune := func(c *node.Config) {
				c.Loss = l
				if fec {
					c.FECData, c.FECParity = s.cfg.FECData, s.cfg.FECParity
				}
			}
			label := "2 nodes, loss " + lossName(l) + ", " + mode
			err := s.withCluster(ctx, label, 2, tune, func(c *cluster.Cluster, logs *tailBuffer) error {
				sp := spec{Mode: modeRead, Tag: "loss", First: firstPage, Pages: s.cfg.LossPages, Rounds: s.cfg.LossRounds, Content: s.cfg.Content}
				out, err := s.runWorkers(ctx, c, logs, sp)
				if err != nil {
					return err
				}
				r, ok := out.byNode(0)
				if !ok || len(r.Samples) == 0 {
					return fmt.Errorf("the reader reported no samples")
				}
				fecDesc := "no FEC"
				if fec {
					fecDesc = fmt.Sprintf("FEC %d data + %d parity", s.cfg.FECData, s.cfg.FECParity)
				}
				s.addLatency(Figure{Key: "loss/" + lossName(l) + "/" + mode, Part: "loss", Nodes: 2, Daemon: out.daemonLatency(0),
					Name:         fmt.Sprintf("remote read fault, %s loss, %s", lossName(l), fecDesc),
					Params:       readParams(sp, map[string]any{"loss": l, "fec": fec}),
					BytesPerPage: float64(out.delta.bytesOut) / float64(len(r.Samples)),
				}, r.Samples)
				s.plots.loss = append(s.plots.loss, labelled{"loss/" + lossName(l) + "/" + mode, "loss " + lossName(l) + ", " + fecDesc})
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func scanNote(depth int) string {
	if depth == 1 {
		return "no read-ahead: one fault per page"
	}
	return fmt.Sprintf("the reader's daemon asks for %d pages ahead of a sequential read fault", depth-1)
}
