package lockmgr

import "slices"

// LeaderInfo is who leads an election, as far as a node knows.
type LeaderInfo struct {
	Node   NodeID
	Client uint64
	Token  uint64 // the leader's fencing token
	Age    int64  // ticks since the node learned it (0: authoritative)
}

// leaderEntry is a node's last news of an election.
type leaderEntry struct {
	info    LeaderInfo
	learned int64
	asked   int64
}

// Leader reports the leader of election name as last known: a local client
// that believes it leads, the home's own record when the election is homed
// here, otherwise the last news from the home (Age says how old). When the
// news is older than RenewTicks, Leader also queues a query to the home, so
// a later call knows better; it never blocks. ok is false when no leader is
// known.
func (e *Engine) Leader(name string) (info LeaderInfo, ok bool) {
	defer e.drain()
	lk := lockKey{SpaceElection, name}
	for k := range e.reqs {
		if k.lk == lk {
			if tok, held := e.holding(lk, k.client); held {
				return LeaderInfo{Node: e.id, Client: k.client, Token: tok}, true
			}
		}
	}
	home, err := e.home(name)
	if err != nil || name == "" || len(name) > MaxNameLen {
		return LeaderInfo{}, false
	}
	if home == e.id {
		if l := e.locks[lk]; l != nil && len(l.holders) > 0 {
			h := l.holders[0]
			return LeaderInfo{Node: h.ck.node, Client: h.ck.client, Token: h.token}, true
		}
		return LeaderInfo{}, false
	}
	ent := e.leaders[name]
	if ent == nil {
		ent = &leaderEntry{learned: -1 << 62, asked: -1 << 62}
		e.leaders[name] = ent
	}
	if e.now-ent.learned >= int64(e.cfg.RenewTicks) && e.now-ent.asked >= int64(e.cfg.RetryTicks) {
		ent.asked = e.now
		e.send(Message{Type: MsgQuery, To: home, Space: SpaceElection, Name: name})
	}
	if ent.info.Token == 0 {
		return LeaderInfo{}, false
	}
	info = ent.info
	info.Age = e.now - ent.learned
	return info, true
}

// onLeader records news of an election.
func (e *Engine) onLeader(m *Message) {
	if m.Space != SpaceElection {
		return
	}
	ent := e.leaders[m.Name]
	if ent == nil {
		ent = &leaderEntry{asked: -1 << 62}
		e.leaders[m.Name] = ent
	}
	if m.Token != 0 && m.Token < ent.info.Token {
		return // older news than what we have
	}
	ent.info = LeaderInfo{Node: m.Holder, Client: m.Client, Token: m.Token}
	ent.learned = e.now
}

// HolderStatus is a holder of a lock, as its home sees it.
type HolderStatus struct {
	Node      NodeID
	Epoch     uint32 // the incarnation of Node
	Client    uint64
	Req       uint64
	Token     uint64
	Mode      Mode
	LeaseLeft int64 // ticks until the home drops the holder unless renewed
}

// WaiterStatus is a queued request, as its home sees it.
type WaiterStatus struct {
	Node   NodeID
	Epoch  uint32
	Client uint64
	Req    uint64
	Mode   Mode
}

// LockStatus is the state of a lock or election homed on this node.
type LockStatus struct {
	Space   Space
	Name    string
	Mode    Mode // how it is held now (0: free)
	Holders []HolderStatus
	Waiters []WaiterStatus // in grant order
}

// Locks returns the locks and elections homed on this node that are held or
// waited for, sorted by space and name.
func (e *Engine) Locks() []LockStatus {
	keys := sortedKeys(e.locks)
	out := make([]LockStatus, 0, len(keys))
	for _, lk := range keys {
		l := e.locks[lk]
		s := LockStatus{Space: lk.space, Name: lk.name}
		for _, h := range l.holders {
			s.Mode = h.mode
			s.Holders = append(s.Holders, HolderStatus{Node: h.ck.node, Epoch: h.ck.epoch, Client: h.ck.client,
				Req: h.req, Token: h.token, Mode: h.mode, LeaseLeft: h.expires - e.now})
		}
		for _, w := range l.queue {
			s.Waiters = append(s.Waiters, WaiterStatus{Node: w.ck.node, Epoch: w.ck.epoch, Client: w.ck.client, Req: w.req, Mode: w.mode})
		}
		out = append(out, s)
	}
	return out
}

// BarrierStatus is the state of a barrier homed on this node.
type BarrierStatus struct {
	Name       string
	Count      int    // participants of the current generation
	Arrived    int    // how many have arrived in it
	Generation uint64 // the current generation
}

// Barriers returns the barriers homed on this node, sorted by name.
func (e *Engine) Barriers() []BarrierStatus {
	names := make([]string, 0, len(e.barriers))
	for n := range e.barriers {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]BarrierStatus, 0, len(names))
	for _, n := range names {
		b := e.barriers[n]
		out = append(out, BarrierStatus{Name: n, Count: int(b.count), Arrived: len(b.arrived), Generation: b.gen})
	}
	return out
}
