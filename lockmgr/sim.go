package lockmgr

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
)

// SimConfig configures one schedule of the simulator.
type SimConfig struct {
	// Seed determines everything: cluster size, names, clients, network
	// faults, crashes, and every choice along the way. The same seed
	// replays the same schedule exactly.
	Seed uint64
	// Steps is the length of the chaotic phase (0 means 400). The phase
	// that follows heals the network and runs to quiescence.
	Steps int
	// Trace, when set, receives one line per step, message and event.
	Trace func(format string, args ...any)

	// Broken configurations, for the tests that prove the checker works.
	holderLease, homeLease int        // replace the lease lengths when set
	freshRestart           bool       // restarted nodes skip the recovery wait
	ignoreLastToken        bool       // homes forget the tokens cached holds used
	payloadBug             payloadBug // homes mishandle payloads
}

// SimStats counts what a schedule exercised.
type SimStats struct {
	Nodes, Steps, Ticks                       int
	Delivered, Dropped, Duplicated, Late      int
	Requests, Grants, Lost, Refused, Canceled int
	CancelRaces                               int // Cancel after the grant was announced
	BarrierDone, Crashes, Restarts            int
	Partitions, PeerDowns                     int
	Elections                                 int // grants in the election space
	CachedGrants                              int // grants of LockCached requests
	LocalGrants                               int // re-grants from a client's cache
	Recalls                                   int // Recalled events and recalled grants
	CacheReleases                             int // UnlockCached calls
	PayloadReleases                           int // exclusive releases with a payload
	PayloadGrants                             int // grants that carried a payload
	PayloadsLost                              int // grants flagged FlagPayloadLost
	BarrierPayloads                           int // barrier completions that carried payloads
}

// Add adds o to s.
func (s *SimStats) Add(o SimStats) {
	s.Nodes += o.Nodes
	s.Steps += o.Steps
	s.Ticks += o.Ticks
	s.Delivered += o.Delivered
	s.Dropped += o.Dropped
	s.Duplicated += o.Duplicated
	s.Late += o.Late
	s.Requests += o.Requests
	s.Grants += o.Grants
	s.Lost += o.Lost
	s.Refused += o.Refused
	s.Canceled += o.Canceled
	s.CancelRaces += o.CancelRaces
	s.BarrierDone += o.BarrierDone
	s.Crashes += o.Crashes
	s.Restarts += o.Restarts
	s.Partitions += o.Partitions
	s.PeerDowns += o.PeerDowns
	s.Elections += o.Elections
	s.CachedGrants += o.CachedGrants
	s.LocalGrants += o.LocalGrants
	s.Recalls += o.Recalls
	s.CacheReleases += o.CacheReleases
	s.PayloadReleases += o.PayloadReleases
	s.PayloadGrants += o.PayloadGrants
	s.PayloadsLost += o.PayloadsLost
	s.BarrierPayloads += o.BarrierPayloads
}

// Violation is an invariant the simulator found broken.
type Violation struct {
	Seed   uint64
	Step   int
	Rule   string // "exclusion", "token order", "ghost grant", "barrier", "payload", "liveness", "event", "engine"
	Detail string
}

// Error describes the violation with its seed and step.
func (v *Violation) Error() string {
	return fmt.Sprintf("lockmgr simulation: seed %d, step %d: %s: %s", v.Seed, v.Step, v.Rule, v.Detail)
}

// The simulated timing, in ticks.
const (
	simHolderLease = 16
	simHomeLease   = 20
	simRenew       = 4
	simRetry       = 2
	simFinalTicks  = 4000 // the quiescence phase must end within this many ticks
)

type clientState uint8

const (
	idle clientState = iota
	waitingLock
	holdingLock
	waitingBarrier
)

type simClient struct {
	id        uint64
	node      *simNode
	epoch     uint32 // the incarnation of its node
	pays      int    // payloads made, to make each unique
	alive     bool
	state     clientState
	lk        lockKey
	mode      Mode
	req       uint64
	token     uint64
	holdUntil int64
	group     *simGroup
	calls     int // barrier calls made in the group
	lastGen   uint64
	arrivePay map[int][]byte // the payload of its arrival at each phase of its group

	// LockCached: the client keeps the lock after use until recalled.
	cacheable bool   // the current or cached hold came from LockCached
	cached    bool   // idle, but keeps the lock
	recalled  bool   // the home wants it back
	grantTok  uint64 // the engine's token of the hold
	holdReq   uint64 // the request of the hold
	maxReq    uint64 // the largest request id used
	limit     uint64 // the largest token the client may give itself
}

type simNode struct {
	id      NodeID
	eng     *Engine
	up      bool
	epoch   uint32
	fresh   bool     // this incarnation started with FreshStart
	heard   []uint32 // the newest incarnation of each peer this incarnation heard from
	side    int
	clients []*simClient
}

type simGroup struct {
	name      string
	count     int
	members   []*simClient
	gens      map[int]uint64 // the generation of each phase
	dissolved bool
}

type flight struct {
	data     []byte
	from, to NodeID
	at       int64
}

type tokenLog struct {
	max, maxExcl uint64
	seen         map[uint64]bool
}

// simKept is what the simulator expects the home of a lock to hand on
// with its grants: the payload of the exclusive release with the largest
// token that the home's current incarnation has received.
type simKept struct {
	token   uint64
	payload string
}

// simRelease is a release the simulator's clients made with a payload.
type simRelease struct {
	lk    lockKey
	token uint64
	mode  Mode
}

// grantCopy is the payload a copy of a grant carried.
type grantCopy struct {
	payload string
	lost    bool
}

type grantKey struct {
	lk    lockKey
	token uint64
}

type downNote struct {
	at        int64
	to, about NodeID
}

type sim struct {
	cfg         SimConfig
	rng         *rand.Rand
	nodes       []*simNode
	clients     map[uint64]*simClient
	net         []flight
	notes       []downNote
	names       []lockKey
	tokens      map[lockKey]*tokenLog
	groups      []*simGroup
	doomed      []*simGroup
	now         int64
	step        int
	nextID      uint64
	loss        float64
	dup         float64
	delay       int
	final       bool
	stats       SimStats
	viol        *Violation
	dropAll     bool         // settle: clients give up their caches
	cacheTokens int          // Config.CacheTokens of every node
	releases    []*simClient // recalled idle caches, released after the batch of events
	nGroups     int
	perNode     int
	home        func(string) NodeID
	homeSeed    uint64

	// Payloads (see checkGrant).
	kept      map[lockKey]simKept      // expected at the current incarnation of each lock's home
	released  map[string]simRelease    // every payload a client released, by content
	grantPays map[grantKey][]grantCopy // the payloads of every grant message a home sent
	unsent    string                   // a payload a release must send before the next checkSent
}

// Simulate runs one seeded schedule: several nodes with clients that lock,
// unlock, read-lock, campaign, cancel, exit and meet at barriers, over a
// network that loses, duplicates, delays and reorders messages, with node
// crashes and restarts, partitions that heal, and a failure detector that
// is sometimes wrong. It checks the invariants after every step and, at
// the end, that every request was answered once the network healed. It
// returns a *Violation for the first invariant broken.
func Simulate(cfg SimConfig) (SimStats, error) {
	s := &sim{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x10c4)), clients: make(map[uint64]*simClient),
		tokens: make(map[lockKey]*tokenLog), kept: make(map[lockKey]simKept), released: make(map[string]simRelease),
		grantPays: make(map[grantKey][]grantCopy)}
	if cfg.Steps == 0 {
		s.cfg.Steps = 400
	}
	s.setup()
	for s.step = 0; s.step < s.cfg.Steps && s.viol == nil; s.step++ {
		s.chaos()
		s.check()
	}
	if s.viol == nil {
		s.settle()
	}
	s.stats.Steps = s.step
	if s.viol != nil {
		return s.stats, s.viol
	}
	return s.stats, nil
}

func (s *sim) tracef(format string, args ...any) {
	if s.cfg.Trace != nil {
		s.cfg.Trace("[%d t%d] "+format, append([]any{s.step, s.now}, args...)...)
	}
}

func (s *sim) fail(rule, format string, args ...any) {
	if s.viol == nil {
		s.viol = &Violation{Seed: s.cfg.Seed, Step: s.step, Rule: rule, Detail: fmt.Sprintf(format, args...)}
		s.tracef("VIOLATION %s: %s", rule, s.viol.Detail)
	}
}

// setup draws the cluster and its workload from the seed.
func (s *sim) setup() {
	n := 2 + s.rng.IntN(4)
	s.stats.Nodes = n
	s.perNode = 1 + s.rng.IntN(3)
	s.loss = []float64{0, 0.02, 0.1, 0.25}[s.rng.IntN(4)]
	s.dup = []float64{0, 0.05, 0.2}[s.rng.IntN(3)]
	s.delay = []int{0, 2, 6, 12}[s.rng.IntN(4)]
	s.homeSeed = s.rng.Uint64()
	// Small ranges of cached tokens, so that clients use them up.
	s.cacheTokens = []int{1, 2, 4, 0}[s.rng.IntN(4)]
	s.home = func(name string) NodeID {
		h := fnv.New64a()
		h.Write([]byte(name))
		return NodeID((h.Sum64() ^ s.homeSeed) % uint64(n))
	}
	for i := range 1 + s.rng.IntN(3) {
		s.names = append(s.names, lockKey{SpaceLock, fmt.Sprintf("L%d", i)})
	}
	s.names = append(s.names, lockKey{SpaceElection, "leader"})
	for i := range n {
		s.nodes = append(s.nodes, &simNode{id: NodeID(i)})
	}
	for _, nd := range s.nodes {
		s.start(nd, true)
	}
	s.tracef("setup: %d nodes, %d clients each, loss %.2f dup %.2f delay %d", n, s.perNode, s.loss, s.dup, s.delay)
}

// start boots an incarnation of a node with fresh clients.
func (s *sim) start(nd *simNode, first bool) {
	nd.epoch++
	cfg := Config{ID: nd.id, Nodes: len(s.nodes), Home: s.home, Epoch: nd.epoch,
		HolderLeaseTicks: simHolderLease, HomeLeaseTicks: simHomeLease, RenewTicks: simRenew, RetryTicks: simRetry,
		FreshStart: first || s.cfg.freshRestart,
		Rand:       rand.New(rand.NewPCG(s.cfg.Seed, uint64(nd.id)<<32|uint64(nd.epoch)))}
	cfg.ignoreLastToken = s.cfg.ignoreLastToken
	cfg.payloadBug = s.cfg.payloadBug
	cfg.CacheTokens = s.cacheTokens
	if s.cfg.holderLease != 0 {
		cfg.HolderLeaseTicks, cfg.HomeLeaseTicks, cfg.unsafeLeases = s.cfg.holderLease, s.cfg.homeLease, true
	}
	eng, err := New(cfg)
	if err != nil {
		s.fail("engine", "New: %v", err)
		return
	}
	nd.eng, nd.up, nd.clients = eng, true, nil
	// A new incarnation has heard from nobody and keeps no payloads.
	nd.fresh, nd.heard = cfg.FreshStart, make([]uint32, len(s.nodes))
	for lk := range s.kept {
		if s.home(lk.name) == nd.id {
			delete(s.kept, lk)
		}
	}
	for range s.perNode {
		s.addClient(nd)
	}
}

func (s *sim) addClient(nd *simNode) *simClient {
	s.nextID++
	c := &simClient{id: s.nextID, node: nd, epoch: nd.epoch, alive: true}
	nd.clients = append(nd.clients, c)
	s.clients[c.id] = c
	return c
}

// pump moves a node's outputs: messages into the network, events to the
// clients.
func (s *sim) pump(nd *simNode) {
	msgs, evs := nd.eng.Ready()
	for i := range msgs {
		m := &msgs[i]
		if m.From != nd.id || m.Epoch != nd.epoch {
			s.fail("engine", "node %d epoch %d sent %v", nd.id, nd.epoch, m)
		}
		if m.Type == MsgRelease && len(m.Payload) > 0 {
			s.checkReleaseMsg(m)
			if string(m.Payload) == s.unsent {
				s.unsent = ""
			}
		}
		if m.Type == MsgGrant {
			s.checkGrant(nd, lockKey{m.Space, m.Name}, m.Token, string(m.Payload), m.Flags&FlagPayloadLost != 0)
			k := grantKey{lockKey{m.Space, m.Name}, m.Token}
			s.grantPays[k] = append(s.grantPays[k], grantCopy{string(m.Payload), m.Flags&FlagPayloadLost != 0})
		}
		data := m.AppendBinary(nil)
		if !s.final && s.rng.Float64() < s.loss {
			s.stats.Dropped++
			continue
		}
		s.net = append(s.net, flight{data: data, from: m.From, to: m.To, at: s.now + s.latency()})
		if s.rng.Float64() < s.dup {
			s.stats.Duplicated++
			s.net = append(s.net, flight{data: data, from: m.From, to: m.To, at: s.now + s.latency()})
		}
	}
	for _, ev := range evs {
		s.tracef("n%d event %v", nd.id, ev)
		s.onEvent(nd, ev)
	}
	// Recalled caches are released once the whole batch is seen.
	for len(s.releases) > 0 {
		c := s.releases[0]
		s.releases = s.releases[1:]
		if c.alive && c.node.up && c.cached && c.recalled {
			s.releaseCache(c)
		}
	}
	// Groups that failed are dissolved once the whole batch is seen.
	for len(s.doomed) > 0 {
		g := s.doomed[0]
		s.doomed = s.doomed[1:]
		s.dissolve(g, "a participant was refused")
	}
}

// latency draws a message's delay; a few messages are very late, later
// than the homes remember finished requests.
func (s *sim) latency() int64 {
	d := int64(s.rng.IntN(s.delay + 1))
	if !s.final && s.rng.IntN(200) == 0 {
		s.stats.Late++
		d += 4*simHomeLease + int64(s.rng.IntN(4*simHomeLease))
	}
	return d
}

// chaos runs one step of the chaotic phase.
func (s *sim) chaos() {
	switch r := s.rng.IntN(100); {
	case r < 50:
		if !s.deliver() {
			s.tick()
		}
	case r < 70:
		s.tick()
	case r < 94:
		s.act()
	default:
		s.fault()
	}
}

// deliver delivers one message that is due, chosen at random (reordering).
func (s *sim) deliver() bool {
	var due []int
	for i, f := range s.net {
		if f.at <= s.now {
			due = append(due, i)
		}
	}
	if len(due) == 0 {
		return false
	}
	i := due[s.rng.IntN(len(due))]
	f := s.net[i]
	s.net = slices.Delete(s.net, i, i+1)
	to, from := s.nodes[f.to], s.nodes[f.from]
	if !to.up || to.side != from.side {
		s.stats.Dropped++
		return true
	}
	m, err := UnmarshalMessage(f.data)
	if err != nil {
		s.fail("engine", "a message from node %d does not decode: %v", f.from, err)
		return true
	}
	s.stats.Delivered++
	s.tracef("deliver %v", m)
	s.observe(to, m)
	if err := to.eng.Step(m); err != nil {
		s.fail("engine", "Step(%v): %v", m, err)
	}
	s.pump(to)
	return true
}

// tick advances the global clock: every live node ticks, then the failure
// detector speaks.
func (s *sim) tick() {
	s.now++
	s.stats.Ticks++
	// The nodes' ticks fall in a random order within the global tick (their
	// clocks are not in phase), and the invariants hold between them too.
	for _, i := range s.rng.Perm(len(s.nodes)) {
		if nd := s.nodes[i]; nd.up {
			nd.eng.Tick()
			s.pump(nd)
			s.check()
		}
	}
	keep := s.notes[:0]
	for _, d := range s.notes {
		if d.at > s.now {
			keep = append(keep, d)
			continue
		}
		s.peerDown(d)
	}
	s.notes = keep
}

func (s *sim) peerDown(d downNote) {
	nd := s.nodes[d.to]
	if !nd.up {
		return
	}
	s.stats.PeerDowns++
	s.tracef("n%d PeerDown(%d)", d.to, d.about)
	nd.eng.PeerDown(d.about)
	s.pump(nd)
}

// liveClients returns the live clients of live nodes.
func (s *sim) liveClients() []*simClient {
	var out []*simClient
	for _, nd := range s.nodes {
		if !nd.up {
			continue
		}
		for _, c := range nd.clients {
			if c.alive {
				out = append(out, c)
			}
		}
	}
	return out
}

// act makes one client do something.
func (s *sim) act() {
	cs := s.liveClients()
	if len(cs) == 0 {
		return
	}
	c := cs[s.rng.IntN(len(cs))]
	if !s.final && s.groupsActive() < 1 && s.rng.IntN(8) == 0 {
		s.formGroup(cs)
		return
	}
	s.actClient(c)
}

func (s *sim) actClient(c *simClient) {
	e := c.node.eng
	r := s.rng.IntN(100)
	switch c.state {
	case idle:
		if c.cached && s.dropAll {
			s.releaseCache(c)
		}
		if c.group != nil {
			g := c.group
			behind := false
			for _, o := range g.members {
				behind = behind || o.calls > c.calls
			}
			if !s.final || behind {
				c.calls++
				c.req = s.newReq(c)
				c.state = waitingBarrier
				var pay []byte
				if s.rng.IntN(4) != 0 {
					pay = fmt.Appendf(nil, "b%d.%d", c.id, c.calls-1)
				}
				c.arrivePay[c.calls-1] = pay
				s.tracef("n%d c%d Barrier(%s, %d) r%d phase %d payload %q", c.node.id, c.id, g.name, g.count, c.req, c.calls-1, pay)
				if pay == nil && s.rng.IntN(2) == 0 {
					e.Barrier(g.name, g.count, c.id, c.req)
				} else {
					e.BarrierWithPayload(g.name, g.count, c.id, c.req, pay)
				}
				s.pump(c.node)
			}
			return
		}
		if s.final {
			return
		}
		switch {
		case r < 70:
			lk := s.names[s.rng.IntN(len(s.names))]
			if c.cached && s.rng.IntN(4) != 0 {
				lk = c.lk // programs mostly take again the lock they keep
			}
			if c.cached && lk == c.lk && !c.recalled && c.token < c.limit {
				// A re-grant from the cache: no input to the engine.
				c.token++
				c.state, c.cached, c.req = holdingLock, false, c.holdReq
				c.holdUntil = s.now + int64(s.rng.IntN(3*simHolderLease))
				s.tracef("n%d c%d local re-grant %q t%#x", c.node.id, c.id, c.lk.name, c.token)
				if _, ok := e.holding(c.lk, c.id); !ok {
					s.fail("exclusion", "client %d re-granted %q from its cache, but its node no longer believes it holds", c.id, c.lk.name)
				}
				s.checkToken(c.lk, Event{Mode: Exclusive, Token: c.token})
				s.stats.LocalGrants++
				return
			}
			if c.cached {
				s.releaseCache(c)
			}
			c.lk = lk
			c.mode = Exclusive
			if c.lk.space == SpaceLock && s.rng.IntN(2) == 0 {
				c.mode = SharedMode
			}
			c.cacheable = c.lk.space == SpaceLock && c.mode == Exclusive && s.rng.IntN(3) != 0
			c.recalled = false
			c.req = s.newReq(c)
			c.state = waitingLock
			s.tracef("n%d c%d acquire %v %q %v r%d cached %v", c.node.id, c.id, c.lk.space, c.lk.name, c.mode, c.req, c.cacheable)
			switch {
			case c.lk.space == SpaceElection:
				e.Campaign(c.lk.name, c.id, c.req)
			case c.cacheable:
				e.LockCached(c.lk.name, c.id, c.req)
			default:
				e.Lock(c.lk.name, c.mode, c.id, c.req)
			}
			s.pump(c.node)
		case r < 74:
			s.exit(c)
		case r < 78 && c.cached:
			s.releaseCache(c)
		}
	case waitingLock:
		switch {
		case !s.final && r < 10:
			s.cancel(c)
		case !s.final && r < 13:
			s.exit(c)
		}
	case holdingLock:
		switch {
		case s.now >= c.holdUntil && c.cacheable && !c.recalled && !s.dropAll:
			// Keep it: the next Lock of the same lock is local.
			s.tracef("n%d c%d unlock %q t%#x, keeps it cached", c.node.id, c.id, c.lk.name, c.token)
			c.state, c.cached = idle, true
		case s.now >= c.holdUntil && c.cacheable:
			s.tracef("n%d c%d unlock %q t%#x, recalled", c.node.id, c.id, c.lk.name, c.token)
			c.state = idle
			c.cached = true
			s.releaseCache(c)
		case s.now >= c.holdUntil:
			s.tracef("n%d c%d unlock %q t%#x", c.node.id, c.id, c.lk.name, c.token)
			var err error
			switch {
			case c.lk.space == SpaceElection:
				err = e.Resign(c.lk.name, c.id)
			case s.rng.IntN(4) == 0:
				err = e.Unlock(c.lk.name, c.id) // hands nothing on
			default:
				err = e.UnlockWithPayload(c.lk.name, c.id, 0, s.releasePayload(c))
			}
			if err != nil {
				s.fail("event", "client %d unlocking %q it was told it holds: %v", c.id, c.lk.name, err)
			}
			c.state = idle
			s.pump(c.node)
			s.checkSent()
		case !s.final && r < 3:
			s.stats.CancelRaces++
			s.cancel(c)
		case !s.final && r < 5:
			s.exit(c)
		}
	case waitingBarrier:
		if !s.final && r < 3 {
			s.dissolve(c.group, "a participant gave up")
		}
	}
}

// releaseCache gives up the lock a client keeps cached, telling the engine
// the last token it used.
func (s *sim) releaseCache(c *simClient) {
	s.tracef("n%d c%d UnlockCached(%q, t%#x)", c.node.id, c.id, c.lk.name, c.token)
	c.cached, c.cacheable = false, false
	s.stats.CacheReleases++
	var err error
	if s.rng.IntN(4) == 0 {
		err = c.node.eng.UnlockCached(c.lk.name, c.id, c.token)
	} else {
		err = c.node.eng.UnlockWithPayload(c.lk.name, c.id, c.token, s.releasePayload(c))
	}
	if err != nil {
		s.fail("event", "client %d releasing %q it keeps cached: %v", c.id, c.lk.name, err)
	}
	s.pump(c.node)
	s.checkSent()
}

func (s *sim) newReq(c *simClient) uint64 {
	s.stats.Requests++
	c.maxReq = max(c.maxReq, c.req) + 1 + uint64(s.rng.IntN(3))
	return c.maxReq
}

// cancel cancels the client's lock request and expects the matching event
// at once.
func (s *sim) cancel(c *simClient) {
	s.tracef("n%d c%d Cancel(%q, r%d)", c.node.id, c.id, c.lk.name, c.req)
	prev := c.state
	c.node.eng.Cancel(c.lk.name, c.id, c.req)
	s.pump(c.node)
	if c.state != idle {
		s.fail("event", "Cancel of client %d (%v) reported nothing", c.id, prev)
	}
	s.stats.Canceled++
}

// exit ends a client's program.
func (s *sim) exit(c *simClient) {
	s.tracef("n%d c%d exits", c.node.id, c.id)
	c.alive = false
	c.node.eng.ReleaseClient(c.id)
	if c.group != nil {
		s.dissolve(c.group, "a participant exited")
	}
	s.pump(c.node)
	s.addClient(c.node)
}

func (s *sim) groupsActive() int {
	n := 0
	for _, g := range s.groups {
		if !g.dissolved {
			n++
		}
	}
	return n
}

// formGroup makes a barrier group of idle clients without a group.
func (s *sim) formGroup(cs []*simClient) {
	var free []*simClient
	for _, c := range cs {
		if c.state == idle && c.group == nil {
			free = append(free, c)
		}
	}
	if len(free) < 2 {
		return
	}
	s.rng.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	k := 2 + s.rng.IntN(min(3, len(free)-1))
	s.nGroups++
	g := &simGroup{name: fmt.Sprintf("B%d", s.nGroups), count: k, members: free[:k], gens: make(map[int]uint64)}
	for _, c := range g.members {
		c.group, c.calls, c.lastGen, c.arrivePay = g, 0, 0, make(map[int][]byte)
	}
	s.groups = append(s.groups, g)
	s.tracef("group %s of %d formed", g.name, k)
}

// dissolve ends a barrier group: the application gives up on it and
// cancels the calls still waiting.
func (s *sim) dissolve(g *simGroup, why string) {
	if g.dissolved {
		return
	}
	g.dissolved = true
	s.tracef("group %s dissolved: %s", g.name, why)
	for _, c := range g.members {
		c.group = nil
		if c.alive && c.node.up && c.state == waitingBarrier {
			c.node.eng.Cancel(g.name, c.id, c.req)
			s.pump(c.node)
			if c.state != idle {
				s.fail("event", "Cancel of client %d's barrier call reported nothing", c.id)
			}
		}
	}
}

// fault crashes, restarts, partitions or heals.
func (s *sim) fault() {
	if s.final {
		return
	}
	nd := s.nodes[s.rng.IntN(len(s.nodes))]
	switch r := s.rng.IntN(100); {
	case r < 20:
		if nd.up {
			s.crash(nd)
		}
	case r < 45:
		if !nd.up {
			s.stats.Restarts++
			s.tracef("n%d restarts", nd.id)
			s.start(nd, false)
		}
	case r < 80:
		s.stats.Partitions++
		for _, o := range s.nodes {
			if r < 60 {
				o.side = s.rng.IntN(2)
			} else {
				o.side = 0 // cut one node off
			}
		}
		nd.side = 1
		s.tracef("partition %v", s.sides())
		// The failure detector on one side suspects the other.
		for _, a := range s.nodes {
			for _, b := range s.nodes {
				if a.side != b.side && s.rng.IntN(3) == 0 {
					s.notes = append(s.notes, downNote{at: s.now + 1 + int64(s.rng.IntN(10)), to: a.id, about: b.id})
				}
			}
		}
	default:
		for _, o := range s.nodes {
			o.side = 0
		}
		s.tracef("heal")
	}
}

func (s *sim) sides() []int {
	out := make([]int, len(s.nodes))
	for i, nd := range s.nodes {
		out[i] = nd.side
	}
	return out
}

// crash stops a node: it no longer steps or ticks, its clients are gone,
// and what it sent is lost. The others' failure detectors notice later.
func (s *sim) crash(nd *simNode) {
	s.stats.Crashes++
	s.tracef("n%d crashes", nd.id)
	nd.up, nd.eng = false, nil
	if s.rng.IntN(2) == 0 {
		// What it sent is lost; otherwise it may still arrive.
		s.net = slices.DeleteFunc(s.net, func(f flight) bool { return f.from == nd.id })
	}
	for _, c := range nd.clients {
		c.alive = false
		if c.group != nil {
			s.dissolve(c.group, "a participant's node crashed")
		}
	}
	for _, o := range s.nodes {
		if o != nd && o.up {
			s.notes = append(s.notes, downNote{at: s.now + 1 + int64(s.rng.IntN(30)), to: o.id, about: nd.id})
		}
	}
}

// onEvent checks an event against the client's story and the invariants.
func (s *sim) onEvent(nd *simNode, ev Event) {
	c := s.clients[ev.Client]
	if c == nil || c.node != nd || !c.alive {
		s.fail("ghost grant", "node %d reported %v for a client that exited", nd.id, ev)
		return
	}
	lk := lockKey{ev.Space, ev.Name}
	switch ev.Kind {
	case Granted:
		if c.state != waitingLock || c.req != ev.Req || c.lk != lk {
			s.fail("ghost grant", "%v for client %d, which is %v r%d on %q", ev, c.id, c.state, c.req, c.lk.name)
			return
		}
		if ev.Mode != c.mode {
			s.fail("event", "%v but client %d asked for %v", ev, c.id, c.mode)
		}
		s.checkToken(lk, ev)
		s.checkGrantEvent(nd, ev)
		s.stats.Grants++
		if lk.space == SpaceElection {
			s.stats.Elections++
		}
		if c.cacheable {
			s.stats.CachedGrants++
			if ev.Limit < ev.Token || ev.Limit>>32 != ev.Token>>32 {
				s.fail("event", "%v: limit below the token or in another epoch", ev)
			}
			c.limit, c.recalled = ev.Limit, ev.Recall
			if ev.Recall {
				s.stats.Recalls++
			}
		} else if ev.Limit != 0 || ev.Recall {
			s.fail("event", "%v for a request that does not cache", ev)
		}
		c.grantTok, c.holdReq = ev.Token, ev.Req
		c.state, c.token = holdingLock, ev.Token
		c.holdUntil = s.now + int64(s.rng.IntN(3*simHolderLease))
	case Recalled:
		if !c.cacheable || c.lk != lk || c.holdReq != ev.Req || c.grantTok != ev.Token || c.recalled ||
			(c.state != holdingLock && !c.cached) {
			s.fail("event", "%v for client %d, which is %v r%d t%#x cached %v recalled %v", ev, c.id, c.state, c.req, c.grantTok, c.cached, c.recalled)
			return
		}
		s.stats.Recalls++
		c.recalled = true
		if c.cached {
			s.releases = append(s.releases, c)
		}
	case Lost:
		if c.state != holdingLock && !c.cached || c.grantTok != ev.Token || c.lk != lk {
			s.fail("event", "%v for client %d, which is %v t%#x", ev, c.id, c.state, c.token)
			return
		}
		c.cached, c.cacheable = false, false
		if !errors.Is(ev.Err, ErrLeaseExpired) && !errors.Is(ev.Err, ErrHomeDown) && !errors.Is(ev.Err, ErrCanceled) {
			s.fail("event", "%v: unexpected error", ev)
		}
		s.stats.Lost++
		if c.state == holdingLock {
			c.state = idle // a cached lock is lost also while its client does something else
		}
	case Refused:
		switch {
		case c.state == waitingLock && c.req == ev.Req && c.lk == lk:
		case c.state == waitingBarrier && c.req == ev.Req && ev.Space == SpaceBarrier:
		default:
			s.fail("event", "%v for client %d, which is %v r%d", ev, c.id, c.state, c.req)
			return
		}
		if !errors.Is(ev.Err, ErrCanceled) && !errors.Is(ev.Err, ErrHomeDown) && !errors.Is(ev.Err, ErrLeaseExpired) &&
			!errors.Is(ev.Err, ErrBarrierLost) {
			s.fail("event", "%v: the simulator never makes this mistake", ev)
		}
		s.stats.Refused++
		c.state = idle
		if ev.Space == SpaceBarrier && c.group != nil {
			s.doomed = append(s.doomed, c.group)
		}
	case BarrierDone:
		s.checkBarrier(c, ev)
	default:
		s.fail("event", "unknown event %v", ev)
	}
}

// checkToken: fencing tokens are unique per lock, a writer's token is
// larger than every token granted before it, a reader's larger than every
// writer's before it.
func (s *sim) checkToken(lk lockKey, ev Event) {
	tl := s.tokens[lk]
	if tl == nil {
		tl = &tokenLog{seen: make(map[uint64]bool)}
		s.tokens[lk] = tl
	}
	switch {
	case tl.seen[ev.Token]:
		s.fail("token order", "%q: token %#x granted twice", lk.name, ev.Token)
	case ev.Mode == Exclusive && ev.Token <= tl.max:
		s.fail("token order", "%q: exclusive grant with token %#x after token %#x", lk.name, ev.Token, tl.max)
	case ev.Token <= tl.maxExcl:
		s.fail("token order", "%q: shared grant with token %#x after exclusive token %#x", lk.name, ev.Token, tl.maxExcl)
	}
	tl.seen[ev.Token] = true
	tl.max = max(tl.max, ev.Token)
	if ev.Mode == Exclusive {
		tl.maxExcl = max(tl.maxExcl, ev.Token)
	}
}

// releasePayload returns the payload of a release that client c is about
// to make, unique in the schedule. When c's node is the lock's home, the
// home handles the release before the call returns, so the model learns of
// it now.
func (s *sim) releasePayload(c *simClient) []byte {
	c.pays++
	p := fmt.Appendf(nil, "c%d.%d", c.id, c.pays)
	s.released[string(p)] = simRelease{lk: c.lk, token: c.grantTok, mode: c.mode}
	if c.mode == Exclusive {
		s.stats.PayloadReleases++
	}
	switch {
	case s.home(c.lk.name) == c.node.id:
		s.noteRelease(c.node, string(p))
	case c.mode == Exclusive:
		s.unsent = string(p)
	}
	return p
}

// checkSent: the release of an exclusive hold homed elsewhere went out at
// once with its payload.
func (s *sim) checkSent() {
	if s.unsent != "" {
		s.fail("payload", "the release with payload %q did not send it", s.unsent)
		s.unsent = ""
	}
}

// observe follows what the incarnation of node to will make of message m
// from a peer that it is about to Step: a node ignores messages from an
// older incarnation of a peer than one it heard from, and replies meant
// for another incarnation of itself. A release with a payload that it
// accepts goes into the model of what the home keeps.
func (s *sim) observe(to *simNode, m *Message) {
	if m.PeerEpoch != 0 && m.PeerEpoch != to.epoch || m.Epoch < to.heard[m.From] {
		return
	}
	to.heard[m.From] = m.Epoch
	if m.Type != MsgRelease || len(m.Payload) == 0 {
		return
	}
	if s.checkReleaseMsg(m) {
		s.noteRelease(to, string(m.Payload))
	}
}

// checkReleaseMsg: a release carries the payload its client released the
// hold with, and only an exclusive hold's.
func (s *sim) checkReleaseMsg(m *Message) bool {
	rel, ok := s.released[string(m.Payload)]
	switch {
	case !ok || rel.lk != (lockKey{m.Space, m.Name}) || rel.token != m.Token:
		s.fail("payload", "%v carries payload %q, which no client released with it", m, m.Payload)
	case rel.mode != Exclusive || m.Mode != Exclusive:
		s.fail("payload", "%v carries the payload %q of a shared hold", m, m.Payload)
	default:
		return true
	}
	return false
}

// noteRelease: the home of a lock received the release that carried
// payload. It keeps the payload of the exclusive release with the largest
// token, the latest hold released with one; a copy or an earlier release
// that comes late changes nothing.
func (s *sim) noteRelease(home *simNode, payload string) {
	rel := s.released[payload]
	if rel.mode != Exclusive || rel.lk.space != SpaceLock {
		return
	}
	if k := s.kept[rel.lk]; rel.token > k.token {
		s.kept[rel.lk] = simKept{token: rel.token, payload: payload}
	}
}

// checkGrant: every grant of a lock that home sends carries the payload of
// the latest release (largest token) with one that the home received
// since it started, or none, never an older one; and it is flagged as
// possibly missing a payload exactly when the home restarted and has not
// received one released under a token of its own incarnation since.
func (s *sim) checkGrant(home *simNode, lk lockKey, token uint64, payload string, lost bool) {
	if lk.space != SpaceLock {
		if payload != "" || lost {
			s.fail("payload", "%v %q t%#x granted with payload %q (lost %v)", lk.space, lk.name, token, payload, lost)
		}
		return
	}
	k := s.kept[lk]
	wantLost := !home.fresh && uint32(k.token>>32) != home.epoch
	if payload != k.payload || lost != wantLost {
		s.fail("payload", "%q t%#x granted by node %d with payload %q (lost %v), want %q (lost %v) of the release of t%#x",
			lk.name, token, home.id, payload, lost, k.payload, wantLost, k.token)
	}
}

// checkGrantEvent: a client is told the payload of its grant: the one a
// home on its node gives now, or that of a copy of the grant message.
func (s *sim) checkGrantEvent(nd *simNode, ev Event) {
	lk := lockKey{ev.Space, ev.Name}
	got := grantCopy{string(ev.Payload), ev.PayloadLost}
	if got.payload != "" {
		s.stats.PayloadGrants++
	}
	if got.lost {
		s.stats.PayloadsLost++
	}
	if s.home(ev.Name) == nd.id {
		// Local grants are told within the input that made them.
		s.checkGrant(nd, lk, ev.Token, got.payload, got.lost)
		return
	}
	if !slices.Contains(s.grantPays[grantKey{lk, ev.Token}], got) {
		s.fail("payload", "%v: no copy of the grant carried payload %q (lost %v); they carried %v",
			ev, got.payload, got.lost, s.grantPays[grantKey{lk, ev.Token}])
	}
}

// checkBarrierPayloads: a completed phase carries the payloads of exactly
// that phase's arrivals, one per participant, ordered by node, incarnation
// and client (none at all when no arrival had one).
func (s *sim) checkBarrierPayloads(c *simClient, ev Event, phase int) {
	ms := slices.Clone(c.group.members)
	slices.SortFunc(ms, func(a, b *simClient) int {
		return clientKey{a.node.id, a.epoch, a.id}.compare(clientKey{b.node.id, b.epoch, b.id})
	})
	var want [][]byte
	some := false
	for _, o := range ms {
		want = append(want, o.arrivePay[phase])
		some = some || len(o.arrivePay[phase]) > 0
	}
	if !some {
		want = nil
	}
	same := len(ev.Payloads) == len(want)
	for i := 0; same && i < len(want); i++ {
		same = string(ev.Payloads[i]) == string(want[i])
	}
	if !same {
		s.fail("payload", "client %d completed phase %d of %s with payloads %q, want %q", c.id, phase, c.group.name, ev.Payloads, want)
	}
	if len(ev.Payloads) > 0 {
		s.stats.BarrierPayloads++
	}
}

// checkBarrier: nobody completes a phase before every participant arrived
// at it; all complete it with the same generation; generations increase.
func (s *sim) checkBarrier(c *simClient, ev Event) {
	g := c.group
	if c.state != waitingBarrier || c.req != ev.Req || g == nil || g.name != ev.Name {
		s.fail("barrier", "%v for client %d, which is %v r%d", ev, c.id, c.state, c.req)
		return
	}
	phase := c.calls - 1
	for _, o := range g.members {
		if o.calls < c.calls {
			s.fail("barrier", "client %d completed phase %d of %s but client %d has arrived at only %d phases",
				c.id, phase, g.name, o.id, o.calls)
			return
		}
	}
	s.checkBarrierPayloads(c, ev, phase)
	// One incarnation of the home completes a phase once. (A restarted
	// home has lost the generation in progress; it may complete the same
	// phase again for the participants that had not heard, with late
	// copies of the others' arrivals, which is still after all arrived.)
	if gen, ok := g.gens[phase]; ok && gen != ev.Generation && gen>>32 == ev.Generation>>32 {
		s.fail("barrier", "phase %d of %s completed as generation %#x and %#x", phase, g.name, gen, ev.Generation)
	}
	g.gens[phase] = ev.Generation
	if ev.Generation <= c.lastGen {
		s.fail("barrier", "client %d: generation %#x after %#x", c.id, ev.Generation, c.lastGen)
	}
	c.lastGen = ev.Generation
	c.state = idle
	s.stats.BarrierDone++
}

// check verifies mutual exclusion among the holders that believe they
// hold, and that every such holder was told so.
func (s *sim) check() {
	type belief struct {
		node   NodeID
		client uint64
		mode   Mode
		token  uint64
	}
	held := make(map[lockKey][]belief)
	for _, nd := range s.nodes {
		if !nd.up {
			continue
		}
		for k, r := range nd.eng.reqs {
			tok, ok := nd.eng.holding(k.lk, k.client)
			if !ok {
				continue
			}
			held[k.lk] = append(held[k.lk], belief{nd.id, k.client, r.mode, tok})
			c := s.clients[k.client]
			if c == nil || (c.state != holdingLock && !c.cached) || c.grantTok != tok || c.token < tok || c.token > max(tok, c.limit) {
				s.fail("ghost grant", "node %d believes client %d holds %q (t%#x) without telling it", nd.id, k.client, k.lk.name, tok)
			}
		}
	}
	for lk, bs := range held {
		if len(bs) < 2 {
			continue
		}
		for _, b := range bs {
			if b.mode == Exclusive {
				s.fail("exclusion", "%v %q held at once by %+v", lk.space, lk.name, bs)
				return
			}
		}
	}
}

// settle heals the network, restarts or buries the crashed nodes, lets
// the failure detector finish, and runs until every request is answered and
// every lock released.
func (s *sim) settle() {
	s.final = true
	s.tracef("final phase")
	for _, nd := range s.nodes {
		nd.side = 0
		if !nd.up && s.rng.IntN(2) == 0 {
			s.stats.Restarts++
			s.start(nd, false)
		}
	}
	notes := s.notes
	s.notes = nil
	for _, d := range notes {
		s.peerDown(d)
	}
	for _, nd := range s.nodes {
		if nd.up {
			continue
		}
		for _, o := range s.nodes {
			if o.up {
				s.peerDown(downNote{to: o.id, about: nd.id})
			}
		}
	}
	s.check()
	quiet := 0
	for start := s.now; s.viol == nil; s.step++ {
		if s.now-start > simFinalTicks {
			s.fail("liveness", "not quiescent %d ticks after healing: %s", simFinalTicks, s.busy())
			return
		}
		for s.deliver() && s.viol == nil {
			s.check()
		}
		for _, c := range s.liveClients() {
			s.actClient(c)
		}
		s.tick()
		s.check()
		// While clients keep caches their nodes renew the leases, so
		// the network never falls quiet: until then only the clients
		// must be.
		if b := s.busy(); b == "" || !s.dropAll && !strings.Contains(b, "client") && !strings.Contains(b, "group") {
			quiet++
		} else {
			quiet = 0
		}
		// Quiet for longer than a home lease: ghost grants are gone too.
		// Caches were kept until then, so every waiter got its lock
		// through a recall; now the clients let go of them too.
		if quiet > 2*simHomeLease {
			if s.dropAll {
				break
			}
			s.dropAll, quiet = true, 0
		}
	}
	for _, nd := range s.nodes {
		if !nd.up {
			continue
		}
		if ls := nd.eng.Locks(); len(ls) > 0 {
			s.fail("ghost grant", "node %d still lists %+v after everyone let go", nd.id, ls)
		}
		if len(nd.eng.reqs) > 0 || len(nd.eng.arrivals) > 0 {
			s.fail("liveness", "node %d still has %d requests and %d arrivals", nd.id, len(nd.eng.reqs), len(nd.eng.arrivals))
		}
	}
}

// busy describes what is still going on ("" when nothing).
func (s *sim) busy() string {
	var b strings.Builder
	if len(s.net) > 0 {
		fmt.Fprintf(&b, "%d messages in flight; ", len(s.net))
	}
	for _, c := range s.liveClients() {
		if c.state != idle {
			fmt.Fprintf(&b, "client %d on node %d is %v r%d %q; ", c.id, c.node.id, c.state, c.req, c.lk.name)
		}
		if g := c.group; g != nil && c.state == idle {
			for _, o := range g.members {
				if o.calls != c.calls {
					fmt.Fprintf(&b, "group %s has phases %d and %d; ", g.name, c.calls, o.calls)
				}
			}
		}
	}
	return b.String()
}

func (st clientState) String() string {
	return [...]string{"idle", "waiting", "holding", "at barrier"}[st]
}
