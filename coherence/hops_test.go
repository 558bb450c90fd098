package coherence

import (
	"container/heap"
	"fmt"
	"testing"
)

// hopTicks is the one-way latency of the ideal network of pingPong, in
// ticks of its clock: every message between two nodes takes exactly that.
const hopTicks = 10

// pingPongConfig is one run of pingPong.
type pingPongConfig struct {
	nodes            int      // page 0's home is node 0
	contenders       []NodeID // the nodes whose programs write page 0 without pause
	hold, noPipeline bool
	holdTicks        int // the daemons' minimum hold, in ticks, from the install
	migrations       int // stop after this many ownership migrations
}

// pingPongResult is what pingPong measured, over the migrations after the
// first few (the warm-up).
type pingPongResult struct {
	migrations int     // writable installs at contenders, measured
	hops       float64 // one-way network hops from one migration to the next, on average
	latency    float64 // hops from a write fault to its install, on average
	msgs       float64 // messages on the wire per migration
	wasted     int     // installs the program got no write in (the page left in the same batch)
}

// ppEvent is a message arriving or a hold ending at a node.
type ppEvent struct {
	at, seq int
	node    NodeID
	msg     *Message // nil: EndHold(0)
}

type ppQueue []ppEvent

func (q ppQueue) Len() int { return len(q) }
func (q ppQueue) Less(i, j int) bool {
	return q[i].at < q[j].at || (q[i].at == q[j].at && q[i].seq < q[j].seq)
}
func (q ppQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *ppQueue) Push(x any)   { *q = append(*q, x.(ppEvent)) }
func (q *ppQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}

// pingPong runs a contended page on an ideal network, event by event: each
// contender's program writes page 0 whenever it may and faults again the
// moment it loses it; every message takes hopTicks; daemons apply outputs
// and answer ActHold at once or when the hold after the install has passed.
func pingPong(t testing.TB, cfg pingPongConfig) pingPongResult {
	t.Helper()
	const warmup = 10
	type node struct {
		eng       *Engine
		contender bool
		writable  bool
		faulting  bool
		faultAt   int
		installAt int
	}
	var (
		nodes []*node
		q     ppQueue
		seq   int
		now   int
		res   pingPongResult
		page  = make([]byte, 8)

		migrations, sent        int
		firstAt, lastAt, sentAt int
		latSum                  int
	)
	for i := range cfg.nodes {
		e, err := New(Config{ID: NodeID(i), Nodes: cfg.nodes, Pages: 1, Hold: cfg.hold, NoPipeline: cfg.noPipeline})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, &node{eng: e})
	}
	for _, c := range cfg.contenders {
		nodes[c].contender = true
	}
	push := func(at int, n NodeID, m *Message) {
		seq++
		heap.Push(&q, ppEvent{at: at, seq: seq, node: n, msg: m})
	}
	// settle applies node n's outputs and lets its program run, until
	// nothing changes.
	settle := func(n NodeID) {
		nd := nodes[n]
		for {
			var endNow, installed bool
			for _, o := range nd.eng.Ready() {
				if m := o.Msg; m != nil {
					if m.NeedData {
						m = nd.eng.Fill(m, page, nil)
					}
					sent++
					push(now+hopTicks, m.To, m.Clone()) // in flight past Advance
					continue
				}
				switch a := o.Act; a.Kind {
				case ActInstall, ActUnprotect:
					nd.writable = a.Writable || a.Kind == ActUnprotect
					nd.installAt = now
					if nd.contender && nd.writable {
						installed = true
						migrations++
						if migrations == warmup {
							firstAt, sentAt = now, sent
						}
						if migrations > warmup {
							lastAt = now
							latSum += now - nd.faultAt
						}
					}
				case ActProtect:
					nd.writable = false
				case ActDrop:
					nd.writable = false
				case ActHold:
					if due := nd.installAt + cfg.holdTicks; due > now {
						push(due, n, nil)
					} else {
						endNow = true
					}
				}
			}
			nd.eng.Advance()
			switch {
			case endNow:
				nd.eng.EndHold(0)
				continue
			case nd.contender && nd.writable:
				nd.faulting = false // the program writes
			case nd.contender && !nd.writable && !nd.faulting:
				if installed {
					res.wasted++
				}
				nd.faulting, nd.faultAt = true, now
				if err := nd.eng.Fault(0, Write); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if !nd.eng.HasReady() {
				return
			}
		}
	}
	for _, c := range cfg.contenders {
		settle(c)
	}
	for migrations < warmup+cfg.migrations {
		if q.Len() == 0 {
			t.Fatalf("%+v: the page stopped moving after %d migrations", cfg, migrations)
		}
		ev := heap.Pop(&q).(ppEvent)
		now = ev.at
		if ev.msg == nil {
			nodes[ev.node].eng.EndHold(0)
		} else if err := nodes[ev.node].eng.Step(ev.msg); err != nil {
			t.Fatal(err)
		}
		settle(ev.node)
	}
	for _, nd := range nodes {
		if a := nd.eng.Stats().Anomalies; a > 0 {
			t.Fatalf("%+v: %d anomalies", cfg, a)
		}
	}
	res.migrations = migrations - warmup
	res.hops = float64(lastAt-firstAt) / float64(res.migrations) / hopTicks
	res.latency = float64(latSum) / float64(res.migrations) / hopTicks
	res.msgs = float64(sent-sentAt) / float64(res.migrations)
	return res
}

// TestPipeliningShortensMigrations measures a page that two programs write
// without pause (false sharing), on an ideal network, and checks what
// pipelining and the minimum hold promise: a migration takes 3 one-way hops
// without them (the new owner's confirmation reaches the home, the home
// forwards the next request to it, it sends the page) but at most 2 with
// pipelining when the home is a third node, and 1 plus the hold when the
// home is one of the two writers; and no program loses a page it was given
// before it wrote.
func TestPipeliningShortensMigrations(t *testing.T) {
	const holdTicks = 3 // 0.3 hops
	type mode struct {
		name             string
		hold, noPipeline bool
	}
	modes := []mode{
		{"before (no hold, no pipelining)", false, false},
		{"hold, no pipelining", true, true},
		{"hold and pipelining", true, false},
	}
	shapes := []struct {
		name       string
		nodes      int
		contenders []NodeID
		// the most hops per migration each mode may take
		maxHops [3]float64
		minHops float64 // the least the protocol without pipelining takes
	}{
		{"home on a third node", 3, []NodeID{1, 2}, [3]float64{3, 3, 2}, 3},
		{"home on one of the writers", 2, []NodeID{0, 1}, [3]float64{2, 2 + holdTicks/2.0/hopTicks, 1 + float64(holdTicks)/hopTicks}, 2},
	}
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			var got [3]pingPongResult
			for i, m := range modes {
				got[i] = pingPong(t, pingPongConfig{nodes: sh.nodes, contenders: sh.contenders,
					hold: m.hold, noPipeline: m.noPipeline, holdTicks: holdTicks, migrations: 200})
				r := got[i]
				t.Logf("%-32s %.2f hops/migration, fault->install %.2f hops, %.2f msgs/migration, %d wasted installs",
					m.name, r.hops, r.latency, r.msgs, r.wasted)
				if r.hops > sh.maxHops[i]+1e-9 {
					t.Errorf("%s: %.2f hops per migration, want at most %.2f", m.name, r.hops, sh.maxHops[i])
				}
				if m.hold && r.wasted > 0 {
					t.Errorf("%s: %d installs lost the page before the program wrote", m.name, r.wasted)
				}
			}
			if got[0].hops < sh.minHops-1e-9 {
				t.Errorf("without pipelining: %.2f hops per migration, the protocol cannot take fewer than %.2f", got[0].hops, sh.minHops)
			}
			if got[2].hops >= got[1].hops || got[2].latency >= got[1].latency {
				t.Errorf("pipelining did not shorten migrations: %+v without, %+v with", got[1], got[2])
			}
		})
	}
}

// BenchmarkContendedPage reports, for a page two programs write without
// pause on an ideal network, the one-way hops per migration, the fault to
// install latency in hops and the messages per migration, with and without
// pipelining; ns/op is the engines' own cost of one migration.
func BenchmarkContendedPage(b *testing.B) {
	for _, home := range []struct {
		name       string
		nodes      int
		contenders []NodeID
	}{{"remote-home", 3, []NodeID{1, 2}}, {"home-writes", 2, []NodeID{0, 1}}} {
		for _, m := range []struct {
			name             string
			hold, noPipeline bool
		}{{"before", false, false}, {"hold", true, true}, {"pipelined", true, false}} {
			b.Run(fmt.Sprintf("%s/%s", home.name, m.name), func(b *testing.B) {
				var r pingPongResult
				for b.Loop() {
					r = pingPong(b, pingPongConfig{nodes: home.nodes, contenders: home.contenders,
						hold: m.hold, noPipeline: m.noPipeline, holdTicks: 3, migrations: 100})
				}
				b.ReportMetric(r.hops, "hops/migration")
				b.ReportMetric(r.latency, "fault-hops")
				b.ReportMetric(r.msgs, "msgs/migration")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*(r.migrations+10)), "ns/migration")
			})
		}
	}
}
