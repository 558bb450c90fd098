// Package coherence keeps the pages of the distributed shared memory
// coherent: it decides which node may read or write each page, and moves
// pages between nodes when a program faults on one.
//
// The protocol is sequentially consistent with a single writer and many
// readers per page (write-invalidate), kept by a directory. Every page has a
// home node; the home keeps the page's directory entry (owner, copy set,
// version) and serves the requests for a page in the order they arrived,
// one transaction at a time (or pipelined, see below):
//
//   - read miss: requester -> home -> owner; the owner write-protects its
//     copy and sends it to the requester, who installs it read-only and
//     confirms to the home, which adds it to the copy set;
//   - write miss: requester -> home; the home invalidates every other copy
//     and waits for the acknowledgements, then asks the owner to hand the
//     page over; the owner sends it, drops its own copy and says so
//     (MsgDropped); the requester installs it writable and confirms;
//   - upgrade (a write to a Shared copy): as a write miss, but the home
//     grants ownership without data.
//
// A page that was never written is all zeros and has no owner: the home
// grants it with Zero set.
//
// # Pipelining and the minimum hold
//
// With Config.Hold the home does not wait for a write transaction's
// MsgConfirm before it starts the next one. Once it has granted page p to
// a writer Y (the invalidations are acknowledged, the hand-over or grant is
// on its way), Y is p's pending owner: the home knows that, when the open
// transactions close, Y alone holds p, Exclusive. So it plans the next
// queued request on that state at once and forwards it to Y, in arrival
// order: a write needs no invalidation (Y holds the only copy), a read asks
// Y for a copy. A forward that reaches Y before Y's copy waits in Y's engine
// (an early forward) and is served when the copy comes, if the copy is the
// one it asks for (versions decide; a stale one is dropped).
//
// Requests queue behind the new transaction in the same way, so a page that
// several nodes write moves along a chain of pending owners, and the next
// request is usually waiting where the page arrives. Two programs that write
// one page without pause (false sharing) move it, on an ideal network, in 2
// one-way hops per migration when its home is a third node (the loser's
// request and its forward travel while the page does) and in 1 hop plus the
// hold when the home is one of them, against 3 and 2 hops without
// pipelining (the new owner's confirmation, the home's forward, the data);
// see TestPipeliningShortensMigrations. The chain stops at a read: the
// request behind it waits until the reader confirms, because a write would
// have to invalidate a copy that may not have arrived.
//
// A transaction closes when its requester confirms, or when it asks for the
// page again (it only does so after its install). Closing one closes the
// earlier open ones too, since each handed the page on to the next; their
// requesters get MsgDone and their old owners MsgRelease. The directory
// entry (DirEntry) records closed transactions; Open counts the others.
//
// A page handed over the moment it arrives would be taken from the program
// that faulted for it before the woken thread could retry its access:
// livelock. So with Hold a page this node installs or upgrades for a local
// fault is in its minimum hold (as in Mirage) until the daemon calls
// EndHold. A request that would take it away meanwhile (a forwarded write,
// which drops it; a forwarded read of an Exclusive page, which
// write-protects it; an invalidation) waits in the engine, which emits
// ActHold, once, to ask for EndHold. The daemon calls EndHold when its
// minimum hold (tens of microseconds) has passed since it applied that
// install or upgrade, at once if it already has. Nothing waits on a page
// nobody else wants, and a hold that passed long ago costs one call.
// Invalidations wait too, so a node whose read copy is invalidated right
// after it arrives (the home is this node, say) still gets its read done.
//
// Without Hold the engine emits no ActHold and the home runs one transaction
// per page at a time, as the protocol did before pipelining. NoPipeline
// keeps the hold and turns pipelining off, to measure what it buys. The
// wire format is the same in every mode; every node of a cluster should use
// the same one.
//
// The Engine is a pure state machine in the style of etcd's raft package:
// Fault, Step, Tick and EndHold are its inputs, Ready returns its outputs
// (messages to send and page actions for the daemon to apply) and nothing
// inside it blocks, reads a clock, does I/O or draws random numbers. That is what lets
// Simulate run thousands of seeded schedules of a whole cluster, with an
// unreliable network, in one process and check the protocol after every
// step; a failing seed replays exactly.
//
// The daemon applies every Output of a Ready batch, in order, and calls
// Advance before it gives the engine its next input; an input in between
// panics, since a batch half applied leaves the engine ahead of the pages.
// For a message marked NeedData the daemon reads the node's copy of the
// page at the moment it reaches that message and hands it to the engine
// with Fill, which returns the message to send: the page enters the engine
// as an input, and the engine never sees a message of its own changed
// behind its back. Because the old owner's copy is dropped right after its
// page is sent to a new writer, the engine keeps that filled message until
// the home confirms the hand-over (MsgRelease) and sends it again if it was
// lost. Package pager is the daemon's side of this contract.
//
// The network may lose, duplicate, reorder and delay messages. Requesters
// retransmit on Tick with the same request id; every handler is idempotent;
// the home drives the requester's open transaction again when a retried
// request arrives; versions (one per write transaction) and vector clocks stamp
// every copy, and a node never installs a version older than one it holds
// or has seen invalidated.
package coherence
