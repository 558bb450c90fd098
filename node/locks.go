package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/dsmrt/dsm/coherence"
	"github.com/dsmrt/dsm/dht"
	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/lockmgr"
)

// LockTick is the period of the lock manager's clock: its leases are
// counted in these ticks (lockmgr.DefaultConfig: a holder believes 2 s, the
// home enforces 2.5 s, renewals every 500 ms).
const LockTick = 10 * time.Millisecond

// LockInfo is a lock homed on this node, as dsmnode status shows it.
type LockInfo struct {
	Name    string   `json:"name"`
	Kind    string   `json:"kind"`
	Mode    string   `json:"mode,omitempty"`
	Holders []string `json:"holders"`
	Waiters int      `json:"waiters"`
	Token   uint64   `json:"token"`
	Lease   string   `json:"lease_left,omitempty"`
}

// String is the one-line form status prints.
func (l LockInfo) String() string {
	return fmt.Sprintf("%s %s holders %v, %d waiting, token %#x, lease left %s", l.Kind, l.Mode, l.Holders, l.Waiters, l.Token, l.Lease)
}

// pendingLock is a program's request waiting for its event.
type pendingLock struct {
	conn *net.UnixConn
	id   uint64
}

type lockKey struct {
	client, req uint64
}

// lockState is the node's half of the lock manager.
type lockState struct {
	eng      *lockmgr.Engine
	pending  map[lockKey]pendingLock
	clients  map[int]map[uint64]bool // program id -> its client ids
	lastTick time.Time
}

func (n *Node) initLocks(fresh bool) error {
	ring := dht.ClusterRing(n.cfg.Nodes)
	home := func(name string) lockmgr.NodeID { return ring.HomeOfString(name) }
	cfg := lockmgr.DefaultConfig(lockmgr.NodeID(n.cfg.ID), n.cfg.Nodes, home, uint32(time.Now().Unix()))
	cfg.FreshStart = fresh
	eng, err := lockmgr.New(cfg)
	if err != nil {
		return fmt.Errorf("lock manager: %w", err)
	}
	n.locks = lockState{eng: eng, pending: map[lockKey]pendingLock{}, clients: map[int]map[uint64]bool{}, lastTick: time.Now()}
	return nil
}

// lockRequest serves one lock request from a program. Requests that wait
// (lock, rlock, barrier, campaign) are answered when the engine's event
// comes.
func (n *Node) lockRequest(ctx context.Context, c *net.UnixConn, p *prog, r ctl.Request) {
	var a ctl.LockArgs
	if err := json.Unmarshal(r.Args, &a); err != nil {
		reply(c, r.ID, nil, fmt.Errorf("bad lock request: %w", err))
		return
	}
	if a.Client >= 1<<32 {
		reply(c, r.ID, nil, errors.New("lock client id out of range"))
		return
	}
	var now *ctl.LockReply
	var nowErr error
	err := n.do(ctx, func() {
		client := uint64(p.id)<<32 | a.Client
		set := n.locks.clients[p.id]
		if set == nil {
			set = map[uint64]bool{}
			n.locks.clients[p.id] = set
		}
		set[client] = true
		e := n.locks.eng
		wait := func() { n.locks.pending[lockKey{client, a.Req}] = pendingLock{conn: c, id: r.ID} }
		switch a.Kind {
		case "lock":
			wait()
			e.Lock(a.Name, lockmgr.Exclusive, client, a.Req)
		case "rlock":
			wait()
			e.Lock(a.Name, lockmgr.SharedMode, client, a.Req)
		case "campaign":
			wait()
			e.Campaign(a.Name, client, a.Req)
		case "barrier":
			wait()
			e.Barrier(a.Name, a.Count, client, a.Req)
		case "unlock":
			now, nowErr = &ctl.LockReply{}, e.Unlock(a.Name, client)
		case "resign":
			now, nowErr = &ctl.LockReply{}, e.Resign(a.Name, client)
		case "cancel":
			e.Cancel(a.Name, client, a.Req)
			now = &ctl.LockReply{}
		case "holding":
			tok, ok := e.Holding(a.Name, client)
			now = &ctl.LockReply{Token: tok, Held: ok}
		case "leader":
			info, ok := e.Leader(a.Name)
			now = &ctl.LockReply{Leader: ok, LeaderNode: int(info.Node), Token: info.Token}
		default:
			nowErr = fmt.Errorf("unknown lock request %q", a.Kind)
			now = &ctl.LockReply{}
		}
	})
	if err != nil {
		reply(c, r.ID, nil, err)
		return
	}
	if now != nil {
		reply(c, r.ID, now, nowErr)
	}
}

// releaseClientLocks releases every lock of a program that detached or died.
func (n *Node) releaseClientLocks(p *prog) {
	for client := range n.locks.clients[p.id] {
		n.locks.eng.ReleaseClient(client)
		for k := range n.locks.pending {
			if k.client == client {
				delete(n.locks.pending, k)
			}
		}
	}
	delete(n.locks.clients, p.id)
}

func (n *Node) onLockMessage(from uint16, b []byte) {
	m, err := lockmgr.UnmarshalMessage(b)
	if err != nil {
		n.log.Warn("malformed lock message dropped", "peer", from, "err", err)
		return
	}
	if int(m.From) != int(from) {
		n.log.Warn("lock message claims another sender; dropped", "peer", from, "claims", m.From)
		return
	}
	if err := n.locks.eng.Step(m); err != nil {
		n.log.Warn("lock message refused", "peer", from, "err", err)
	}
}

// tickLocks advances the lock manager's clock by the ticks that elapsed.
func (n *Node) tickLocks(now time.Time) {
	for now.Sub(n.locks.lastTick) >= LockTick {
		n.locks.lastTick = n.locks.lastTick.Add(LockTick)
		n.locks.eng.Tick()
	}
}

// flushLocks sends the lock manager's messages and answers its events. It
// reports whether there was anything.
func (n *Node) flushLocks() bool {
	e := n.locks.eng
	if !e.HasReady() {
		return false
	}
	msgs, events := e.Ready()
	for i := range msgs {
		m := &msgs[i]
		if int(m.To) == n.cfg.ID {
			if err := e.Step(m); err != nil {
				n.log.Warn("local lock message refused", "err", err)
			}
			continue
		}
		n.flushBox(coherence.NodeID(m.To))
		b := m.AppendBinary([]byte{protoLock})
		if err := n.tr.Send(uint16(m.To), b); err != nil {
			n.log.Debug("lock send failed", "to", m.To, "err", err)
		}
	}
	for _, ev := range events {
		k := lockKey{ev.Client, ev.Req}
		pl, ok := n.locks.pending[k]
		switch ev.Kind {
		case lockmgr.Granted, lockmgr.BarrierDone, lockmgr.Refused:
			if !ok {
				continue
			}
			delete(n.locks.pending, k)
			var err error
			if ev.Kind == lockmgr.Refused {
				err = ev.Err
			}
			reply(pl.conn, pl.id, ctl.LockReply{Token: ev.Token, Generation: ev.Generation}, err)
		case lockmgr.Lost:
			n.log.Warn("lock lost", "name", ev.Name, "client", ev.Client, "token", ev.Token, "err", ev.Err)
		}
	}
	return true
}

func (n *Node) lockInfo() []LockInfo {
	var out []LockInfo
	for _, l := range n.locks.eng.Locks() {
		out = append(out, lockInfoOf(l))
	}
	return out
}

func lockInfoOf(l lockmgr.LockStatus) LockInfo {
	li := LockInfo{Name: l.Name, Kind: l.Space.String(), Waiters: len(l.Waiters)}
	if l.Mode != 0 {
		li.Mode = l.Mode.String()
	}
	var lease int64 = -1
	for _, h := range l.Holders {
		li.Holders = append(li.Holders, fmt.Sprintf("node %d client %#x", h.Node, h.Client))
		li.Token = max(li.Token, h.Token)
		if lease < 0 || h.LeaseLeft < lease {
			lease = h.LeaseLeft
		}
	}
	if lease >= 0 {
		li.Lease = (time.Duration(lease) * LockTick).String()
	}
	return li
}
