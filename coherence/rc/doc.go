// Package rc is the release-consistent, multiple-writer protocol: the mode a
// program may choose per allocation beside the sequentially consistent,
// single-writer protocol of package coherence. It has a package of its own
// because it shares no state machine with that protocol: pages are not owned
// but copied, writes travel as diffs at synchronisation points, and the
// order of events comes from vector clocks rather than from a directory.
//
// # The protocol (home-based lazy release consistency)
//
// Every page has a home (Config.Home: the daemon uses the DHT home, as
// package coherence does, or, for an allocation the program asked to be
// homed in blocks, the node whose block holds the page), which
// keeps the page's master copy. A node that touches a page it has no copy of
// fetches one from the home (MsgFetch, MsgPage) and keeps a twin of it; the
// node's program may then read and write its copy freely, and several nodes
// may write copies of one page at once.
//
// Time at a node is cut into intervals by its synchronisation operations. A
// node's vector clock counts, for every node j, the intervals of j it knows
// were closed. At a release (Release: an Unlock, a barrier arrival) the node
// compares each page it wrote with the page's twin, sends the changed bytes
// to the page's home (MsgDiff, carrying the writer's clock with the closing
// interval in its own entry) and waits until every home has acknowledged
// (MsgDiffAck): from then on the writes are at the homes. It then closes the
// interval and records a write notice, (node, interval, pages), in the log
// of its own intervals. Release's result is a Payload: the node's clock and
// the notices of its latest few intervals, which the lock or barrier
// carries to the next acquirer (a few bytes per node and per page written,
// however long the history).
//
// At an acquire (Acquire: a Lock, a barrier departure) the node first
// flushes its own written pages the same way (so that the writes of the
// interval before the acquire are stamped with the clock they were made
// under). Then, for every node j whose intervals the payload's clock covers
// beyond what the node has seen, it takes the notices of those intervals
// from the payload when it holds all of them (a barrier's payload holds
// every node's latest, which is all a node that passed the previous
// barrier lacks), or else asks j for them (MsgNoticeReq, MsgNotices: every
// node keeps the notices of its own intervals); it invalidates its copy
// of each page named, unless the copy already contains that interval (each
// copy carries the clock of the home's master when it was fetched), and
// merges the payload's clock into its own. A later access fetches the
// page again, from a home that has, by then, every diff the notices speak
// of. A copy that arrives from the home
// without an interval the node has a notice for is stale and is fetched
// again.
//
// AcquireAll, an acquire without a lock or barrier (a program's
// Region.Acquire after another node's Region.Release and a flag in
// sequentially consistent memory), asks every node for the notices of all
// its closed intervals and takes, for each, the intervals it answered for:
// it is ordered after every release that had finished at a node when that
// node answered.
//
// Programs free of data races therefore read, after an acquire, the last
// write that happens before it: the writer released before the acquire, the
// release did not end until the home had the diff, and the acquire
// invalidated the copy that did not have it.
//
// # Pages written in place
//
// A page may be written in place by its home (Config.InPlace: the daemon
// says so of the pages homed in blocks, where each node writes its own
// band). Until another node asks for it, such a page is private to its
// home: the home's program memory is its master, the home's program
// writes it with no twin, no diff and no notice, and a release costs
// nothing for it. No other node can have a stale copy, since none has a
// copy at all, and one that asks later fetches what the memory holds then.
//
// The first fetch makes it an ordinary page: the engine asks the daemon
// for it (Ready.Shares); the daemon write-protects it in the program's
// memory, so that every write from then on is tracked, reads it and hands
// it back (Shared); the engine makes it the master, the home's copy gets a
// twin, and the fetch is answered. The master is stamped with the home's
// closed intervals only: if the home writes the page again in the interval
// it was shared in, that write's notice invalidates the copies taken
// before it. A page never goes back to private.
//
// The price is in the race reports: writes a home made in place before the
// page was first shared are in no diff, so a race between one of them and
// another node's later write of the same bytes is not reported (the later
// write wins). The simulator's race invariant leaves such pairs out and
// checks every other one.
//
// # Races
//
// The home remembers, for every byte of a page it received a diff for,
// which write put it there (segments of bytes with the writer's node,
// interval and clock). When a diff overlaps bytes last written by another
// node's write whose clock is concurrent with the diff's, that is a data
// race: the home reports it (Race, naming the page, the byte range and both
// writes). Every byte written by two concurrent writes is reported at least
// once, in whatever order the diffs arrive: a diff that raises no race is
// ordered after the write it overwrites, so diffs that raise none are
// totally ordered.
//
// What the home keeps of racing writes does not depend on the order their
// diffs arrive in: a byte keeps the value of the write with the highest
// priority, where the priority is the sum of the writer's clock, then its
// node id. The sum grows along every causal chain, so a write always wins
// over the writes that happen before it, and of two concurrent writes the
// one that saw more (then the higher node id) wins. The home tells the
// writer whose bytes lost (in the diff's acknowledgement); its copy differs
// from the master then, and its next acquire refreshes it, so that every
// node ends up reading the outcome the home kept.
//
// Changed bytes are found by comparing with the twin, byte by byte: a write
// that stores the value already there changes nothing and is not seen,
// neither as a write nor as a race.
//
// # Purity
//
// The Engine, like the one of package coherence, is a pure state machine:
// Fault, Step, Tick, Release and Acquire are its inputs, Ready returns what
// to send and what to do (install a page, invalidate one, an operation
// done, a race found), and nothing inside it blocks, reads a clock or does
// I/O. The page data a release diffs is an input: the daemon reads the
// program's pages and hands them over. Simulate runs thousands of seeded
// schedules of whole clusters (locks, barriers, release-and-signal with
// AcquireAll, data-race-free and racy programs, loss, duplication,
// reordering and delay) and checks after every
// read that it returned the last write that happens before it, and at the
// end that the homes lost no byte and that every racing byte was reported.
package rc
