package lockmgr

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// Test timing: a holder believes 10 ticks, the home enforces 12.
const (
	tHL    = 10
	tHoL   = 12
	tRenew = 3
	tRetry = 2
)

// testConfig is node id of an n-node cluster where every name is homed on
// node home.
func testConfig(id NodeID, n int, home NodeID) Config {
	return Config{ID: id, Nodes: n, Home: func(string) NodeID { return home }, Epoch: 1,
		HolderLeaseTicks: tHL, HomeLeaseTicks: tHoL, RenewTicks: tRenew, RetryTicks: tRetry,
		FreshStart: true, Rand: rand.New(rand.NewPCG(1, uint64(id)))}
}

func mustNew(t testing.TB, cfg Config) *Engine {
	t.Helper()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func tok(epoch uint32, n uint32) uint64 { return uint64(epoch)<<32 | uint64(n) }

// in builds a message from a requester (epoch 1) to home 0.
func in(typ MsgType, from NodeID, name string, client, req uint64) *Message {
	return &Message{Type: typ, From: from, To: 0, Epoch: 1, Space: SpaceLock, Name: name, Client: client, Req: req}
}

// with returns a copy of m changed by f.
func with(m *Message, f func(*Message)) *Message {
	c := *m
	f(&c)
	return &c
}

func lockMsg(from NodeID, name string, mode Mode, client, req uint64, stamp int64) *Message {
	return with(in(MsgLock, from, name, client, req), func(m *Message) { m.Mode, m.Stamp = mode, stamp })
}

// out builds a reply of home 0 (epoch 1) to requester to (epoch 1).
func out(typ MsgType, to NodeID, name string, client, req uint64) Message {
	return Message{Type: typ, From: 0, To: to, Epoch: 1, PeerEpoch: 1, Space: SpaceLock, Name: name, Client: client, Req: req}
}

func grantMsg(to NodeID, name string, mode Mode, client, req, token uint64, stamp int64) Message {
	m := out(MsgGrant, to, name, client, req)
	m.Mode, m.Token, m.Stamp = mode, token, stamp
	return m
}

func fmtMsgs(ms []Message) string {
	var b strings.Builder
	for i := range ms {
		fmt.Fprintf(&b, "\n\t%v", &ms[i])
	}
	if len(ms) == 0 {
		b.WriteString(" none")
	}
	return b.String()
}

func fmtEvents(evs []Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "\n\t%v", ev)
	}
	if len(evs) == 0 {
		b.WriteString(" none")
	}
	return b.String()
}

// expectMsgs checks the messages of Ready exactly.
func expectMsgs(t testing.TB, what string, got, want []Message) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: messages\ngot:%s\nwant:%s", what, fmtMsgs(got), fmtMsgs(want))
	}
}

// evKinds summarises events as "Kind:client:req" strings.
func evKinds(evs []Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, fmt.Sprintf("%v:%d:%d", ev.Kind, ev.Client, ev.Req))
	}
	return out
}

// net is a reliable in-order network between engines, for tests that are
// about protocols rather than single transitions.
type testNet struct {
	t      testing.TB
	engs   []*Engine
	down   map[NodeID]bool
	queue  []Message
	events []Event
	byNode map[NodeID][]Event
}

func newTestNet(t testing.TB, n int, home func(string) NodeID) *testNet {
	c := &testNet{t: t, down: make(map[NodeID]bool), byNode: make(map[NodeID][]Event)}
	for i := range n {
		cfg := testConfig(NodeID(i), n, 0)
		cfg.Home = home
		c.engs = append(c.engs, mustNew(t, cfg))
	}
	return c
}

// collect gathers the outputs of every engine.
func (c *testNet) collect() {
	for i, e := range c.engs {
		if c.down[NodeID(i)] {
			continue
		}
		msgs, evs := e.Ready()
		c.queue = append(c.queue, msgs...)
		c.events = append(c.events, evs...)
		c.byNode[NodeID(i)] = append(c.byNode[NodeID(i)], evs...)
	}
}

// run delivers messages until none are left, through the codec.
func (c *testNet) run() {
	c.t.Helper()
	for c.collect(); len(c.queue) > 0; c.collect() {
		m := c.queue[0]
		c.queue = c.queue[1:]
		if c.down[m.To] || c.down[m.From] {
			continue
		}
		dm, err := UnmarshalMessage(m.AppendBinary(nil))
		if err != nil {
			c.t.Fatalf("decode %v: %v", &m, err)
		}
		if err := c.engs[m.To].Step(dm); err != nil {
			c.t.Fatalf("Step(%v): %v", &m, err)
		}
	}
}

// tick advances every live engine k ticks, running the network after each.
func (c *testNet) tick(k int) {
	for range k {
		for i, e := range c.engs {
			if !c.down[NodeID(i)] {
				e.Tick()
			}
		}
		c.run()
	}
}

// take returns and forgets the events seen so far.
func (c *testNet) take() []Event {
	evs := c.events
	c.events = nil
	return evs
}
