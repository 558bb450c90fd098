// Package lockmgr is the distributed lock manager of the DSM runtime:
// mutexes, read-write locks, barriers and leader election for programs that
// share memory across nodes.
//
// Programs under release consistency synchronise through it, and the
// coherence layer relies on it to order their critical sections, so it has
// to stay correct when messages are lost, duplicated or reordered, when
// nodes crash or are cut off, and when its failure detector is wrong. To make
// that testable the package is a pure state machine in the style of etcd's
// raft: an Engine has no goroutines, clock, I/O or randomness of its own
// (retry jitter comes from Config.Rand). The node daemon hosts one Engine,
// feeds it inputs — requests of local programs (Lock, LockCached, Unlock,
// UnlockCached, UnlockWithPayload, Cancel, Campaign, Resign, Barrier,
// BarrierWithPayload, ReleaseClient),
// messages from peers (Step), ticks of its clock (Tick) and verdicts of its
// failure detector (PeerDown) — and after each input applies the outputs of Ready: it sends the messages
// and tells local programs about the events (Granted, Lost, BarrierDone,
// Refused, Recalled). Simulate runs many engines under a seeded
// adversarial schedule and checks the invariants after every step.
//
// # Homes and requests
//
// Every lock, election and barrier has a home, the node Config.Home names
// (the DHT). The home keeps its state: the holders in grant order, and the
// waiters in arrival order. Grants are first-come first-served: readers
// (SharedMode) share with readers, a writer (Exclusive) waits for all
// holders to leave, and a waiting writer keeps readers that come after it
// behind it, so nobody starves.
//
// A client is a program attached to the daemon, named by a uint64 the daemon
// chooses and does not reuse while it runs; a request is named by the
// client and a request id that must grow from one request of the client to
// the next (Lock, Campaign and Barrier refuse others with ErrInvalid). Every request gets exactly
// one answer, Granted (or BarrierDone) or Refused, unless its client is
// released first; a Granted may later be followed by one Lost. The
// requester retransmits requests with jitter until the home answers, and
// every handler is idempotent: the home recognises copies by request id,
// remembers finished requests for a while, and a grant that reaches a
// requester for a request it no longer wants (canceled, released, or from a
// restarted home) is given back at once, so no ghost holder remains.
//
// # Leases and fencing tokens
//
// A grant is a lease. The holder's node renews it every RenewTicks. The
// home drops a holder that has not renewed for HomeLeaseTicks and grants
// the next waiter. The holder believes in its lease for HolderLeaseTicks,
// counted from when it *sent* the request or renewal that the home answered
// (the home echoes the requester's clock reading, Message.Stamp); Holding
// reports that belief. Since the home received the message after it was
// sent and HolderLeaseTicks < HomeLeaseTicks, a holder that is cut off
// stops believing before the home can give the lock to anyone else. The
// margin must cover the drift between the nodes' clocks over one lease;
// a node that stops ticking (a paused VM) breaks the assumption, which is
// what fencing tokens are for.
//
// Every grant carries a fencing token that grows strictly per lock, across
// holders and failures: Epoch<<32 | counter, where Epoch is the incarnation
// of the home (Config.Epoch) and the counter counts the home's grants.
// Storage that remembers the largest token it has seen and refuses smaller
// ones is safe even against a holder that was paused past its lease.
//
// When a program exits, the daemon calls ReleaseClient and the releases go
// out at once. When a holder's node dies or is cut off, its lease expires
// at the home. When the daemon restarts, its new Epoch tells every home that
// the old incarnation's clients are gone, and their holds, waits and
// barrier arrivals are dropped at once.
//
// # Cached locks
//
// Taking a lock through the home costs a round trip even when the same
// client takes it again and again. LockCached asks for an exclusive lock
// that the client keeps after use: it takes and releases it again by
// itself (in the dsm library, with no system call and no message) until
// another request recalls it. Meanwhile the engine holds the lock for the
// client as for any hold, renewing the lease; Holding is true and the
// lock counts as held, in use or not.
//
// When a request arrives for a lock that a cached holder keeps, the home
// sends MsgRecall to the holder's node, again on every retransmission of
// the waiter's request, so a lost recall is sent again without timers of
// its own. The requester reports it once as a Recalled event; the client
// stops re-granting and releases the lock (UnlockCached) as soon as it is
// not in use. A grant that others already wait for says so (FlagRecall,
// Event.Recall) rather than being followed by a recall, which could
// overtake the grant and be dropped.
//
// Each re-grant needs a fencing token of its own, and the engine never
// sees them. A cached grant therefore reserves a range of tokens: Token
// up to Event.Limit (Config.CacheTokens of them). The client gives itself
// Token+1, Token+2, ... and must ask the home again when the range is
// used up. Its release says the last token it used (MsgRelease.Gen), and
// the home moves its counter just past it, so the unused rest of the
// range is not wasted. A holder that vanishes without saying — its lease
// runs out, its program exits (ReleaseClient), its node restarts — may
// have used any token of its range, so the home moves its counter past the
// whole range. Either way the next grant is larger than every token the
// holder used, which is what fencing requires. (Telling the home every
// re-grant would cost the message caching saves; keeping only the last
// token told would let a holder that died take tokens with it that the
// next holder would reuse.)
//
// A cached lock is only as good as the node's belief in its lease: the
// client must stop re-granting as soon as the engine reports Lost, which
// it does when the belief runs out, HomeLeaseTicks-HolderLeaseTicks
// before the home may grant the lock elsewhere.
//
// # Payloads
//
// Under release consistency (package coherence/rc) what a node learned
// while it held a lock — its vector clock and write notices — must reach
// the next node that takes the lock, and what every participant of a
// barrier learned must reach all of them as they leave it. The lock manager
// carries these payloads without looking into them.
//
// UnlockWithPayload releases a lock with a payload. The home keeps, per
// lock, the payload of the exclusive release with the largest fencing
// token it has received, and every grant carries it (Event.Payload),
// retransmitted grants and grants after a lease ran out included, also
// when the lock was free in between. Tokens order the holds of a lock, so
// that is the latest hold released with a payload; a duplicated or late
// copy of an earlier release changes nothing. A release that reaches the
// home after the holder's lease ran out there still counts for the grants
// after it, though not for the one already made. Holds that end without a
// payload (Unlock, a lost lease, Cancel, ReleaseClient) leave the kept
// payload as it was: the payload of a release-consistent node includes
// what it received with its grant, so the latest one subsumes the earlier.
// Shared holds hand nothing on (their payload is dropped before it is
// sent): readers write nothing under a read lock that the next holder
// would need to learn of. The home keeps payloads in memory, one per lock
// it was ever released with, for as long as it runs; a restarted home has
// forgotten them, and flags its grants (Event.PayloadLost) until it keeps
// one released under a token of its own incarnation, so that the daemon
// can assume the worst. Elections carry no payloads.
//
// BarrierWithPayload arrives with a payload, and the BarrierDone of every
// participant of the generation carries the payloads of all its arrivals
// (Event.Payloads), one per participant in the order of node, incarnation
// and client; copies of an arrival count once and so appear once.
//
// Payloads are bounded, MaxPayload per release or arrival and
// MaxBarrierPayload for a generation together, by the size of what homes
// keep and messages retransmit rather than by the transport, which carries
// messages of up to 64 MiB over as many datagrams as they take. Messages
// with payloads use version 2 of the encoding; those without keep version
// 1, which builds without payloads read.
//
// # When a home fails
//
// Locks homed on a dead node are unavailable until it returns: requests
// for them are retransmitted, and PeerDown refuses them (ErrHomeDown) so
// that programs do not hang; holders of such locks are told Lost, since
// they can no longer renew. A restarted home has forgotten its holders, so
// it grants nothing for HomeLeaseTicks after it starts, by which time every
// lease it granted before the crash has run out at the holders too (set
// Config.FreshStart only when no earlier incarnation can have granted
// anything, as on the first start of a cluster). Its tokens are larger than
// before because its Epoch is: the daemon must give every restart a larger
// Epoch, from a persisted counter or from its start time in seconds. So
// there are never two holders at once, and tokens keep growing.
//
// A barrier's home keeps the generation in progress in memory. If it
// restarts, clients that completed a generation with the old incarnation
// are refused with ErrBarrierLost (the group starts over under a new name),
// and PeerDown refuses the arrivals that were waiting there.
//
// PeerDown may be wrong (a partition looks like a crash). It is therefore
// only used to give up early on the requester's side and to drop the
// node's waiters at the home; the home never drops a holder before its
// lease ends.
//
// # Barriers and elections
//
// Barrier(name, count, client, req) completes for all participants when
// count distinct clients have arrived in the same generation; generations
// grow (Epoch<<32 | n), so a name serves any number of phases. A client's
// arrival counts once however often it is retransmitted, and a withdrawn
// or superseded arrival never counts.
//
// Campaign(name, client, req) is an exclusive lock in a separate namespace,
// held until Resign, ReleaseClient or the loss of the lease; Leader reports
// the leader (node, client, token) as last known.
//
// # Simulation
//
// Simulate runs a seeded schedule of several nodes and clients over a
// network that loses, duplicates, delays and reorders, with crashes,
// restarts, partitions that heal and false failure verdicts, and checks
// after every step (including between the nodes' ticks within one global
// tick) that the holders that believe they hold a lock are one writer or
// only readers (a lock kept cached counts as held), that tokens grow in
// grant order, counting the re-grants clients give themselves from their
// caches (only while their node believes it holds), that no grant reaches
// a canceled or released request, that no participant completes a
// barrier generation before all have arrived at it, that every grant
// carries the payload of the latest release with one that the home's
// incarnation received (never an older one) and that a barrier generation
// carries exactly its arrivals' payloads; at the end, with the
// network healed, that every request was answered (waiters behind cached
// locks get them through recalls, as the caches are kept until then) and
// every lock released.
// A failing seed replays exactly.
package lockmgr
