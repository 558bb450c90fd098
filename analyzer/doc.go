// Package analyzer finds the memory layouts that make a distributed shared
// memory (DSM) program slow, names the variables responsible and says what to
// change.
//
// # Why it exists
//
// The DSM runtime keeps memory coherent a page at a time: a node that writes
// a page must own it, and ownership moves across the network. When two
// logically independent variables, say counter_A written by node 0 and
// counter_B written by node 1, sit on the same page, every write on one node
// pulls the page away from the other, and the page ping-pongs between the
// nodes on every write although the nodes never touch the same byte. This is
// false sharing; it can make a program hundreds of times slower than the same
// program with a better layout, and nothing in the source code shows it.
//
// The node daemon feeds the analyzer one [Migration] record per page transfer
// (which page, between which nodes, whether ownership moved, what the giving
// node wrote while it held the page and under which locks, and how long the
// faulting thread waited) and the named allocations of the region ([Var],
// [StructVars]: "Stats.Hits", "Stats[1].Hits"). The analyzer then classifies
// every page ([Class]), and for false sharing produces the concrete layout
// change: which variable to align to a page of its own, how many bytes of
// padding to insert between two struct fields, or, when the variables are
// fields of different elements of one array of structs, how much padding
// the element type needs to fill a page.
//
// # Classification
//
// The written byte ranges of every transfer are accumulated per writer over
// the page's whole history (as far as the analyzer keeps it; see Memory), so a node that wrote bytes [0,8) in one transfer
// and [8,16) in another has written [0,16). A node counts as a writer of a
// page when it wrote at least one byte of it. A page is, checked in this
// order:
//
//   - [FalseSharing] when ownership moved for writing at least
//     [MinWriteMigrations] times, at least two nodes wrote it, and the byte
//     ranges of the writers are pairwise disjoint;
//   - [TrueSharing] under the same conditions when the ranges of two writers
//     overlap (the nodes really share data);
//   - [LockProtected] instead of TrueSharing when a lock ordered the writes:
//     at least [MinLockPeriods] holding periods of the page in which the
//     holder wrote came with its locks ([Migration].Locks), and in more
//     than half of them some lock moved with the page: it was granted to
//     the writer when it took the page and no longer when the page left
//     (it is not in [Migration].Kept);
//   - [ReadMostly] when at least [MinReadMigrations] transfers were read copies,
//     read copies outnumber ownership transfers, and the page had at most one
//     writer or fewer than [MinWriteMigrations] ownership transfers;
//   - [Contended] when ownership moved for writing at least
//     [MinWriteMigrations] times among two or more nodes but the recorded
//     ranges show fewer than two writers (the transfers carried no written
//     ranges, or nodes took write ownership without changing a byte);
//   - [Quiet] otherwise.
//
// Only false sharing has a layout fix; when the writers of a falsely shared
// page hold locks while they write it (in most holding periods with known
// locks), the fix also offers release-consistent memory
// (dsm.ReleaseConsistent), where several nodes write the page at once and
// merge at the locks. True sharing is a property of the algorithm, not of
// the layout: the fix is to synchronise through a lock or to
// partition the data. Read-mostly pages need no change: read copies stay valid
// until the next write, so they cost one transfer per reader and write.
//
// Data that nodes update under a lock, say bank accounts under their shard's
// mutex, is truly shared and already synchronised: the page can be at two
// nodes in turn under lock L only if L moved between them, so the page moves
// with the lock, once per hand-off. Such pages are [LockProtected], and the
// advice is to take the lock less often or keep each lock's data on pages
// of its own, not to add a lock. A daemon knows the locks of its own node
// only (granted to its programs, whether in use or kept cached after an
// unlock), so each record carries the giving node's locks, and a node's
// analyzer judges the holding periods of its own programs. A lock that
// stays at one node (cached, or protecting something else) does not move
// with the page, and a node that writes without the lock takes the page
// from a node that still holds it: neither counts. The majority, rather
// than every period, lets a period without the lock, such as the
// initialisation before the nodes share the data, pass. Only a lock common
// to the writes is found: data of two locks that nodes write on one page
// stays true (or false) sharing.
//
// # Data races
//
// In the release-consistent mode several nodes may write copies of one page
// at once, and the page's home merges their diffs. When two writes by
// different nodes with concurrent vector clocks changed the same bytes, the
// home reports a data race, and its daemon hands it to the analyzer
// ([Analyzer.RecordRace]). A data race is a correctness bug, not a cost:
// [DataRace] is the most severe class, its findings come before every other
// and carry no migrations. There is one finding per page, pair of nodes and
// variable (or run of bytes in no variable) that raced, naming the raced
// bytes ("Stats.Hits", "Stats.Hits bytes [0,4)" when part of it raced,
// "bytes [16,24) of page 3" outside every variable), the two nodes and the
// intervals of their writes ([RaceDetail]). The fix is to order the writes
// (one lock, or a barrier) or, if the nodes were meant to write data of
// their own, to move the data apart; the finding also says which write the
// home kept: the one whose clock has the larger sum, then the higher node
// id, as the home decides. A race repeated in every interval of a loop is
// one record with a count, and the analyzer keeps at most [Limits].Races
// records.
//
// # Vector clocks and order
//
// Wall clocks of different nodes disagree. When every transfer of a page
// carries a vector clock, the analyzer orders the page's transfers by the sum
// of the clock's entries, which is consistent with happens-before (if a
// happened before b, every entry of a is at most the entry of b and one is
// smaller), and uses wall time only to break ties between concurrent
// transfers. The ownership history drawn by [Analyzer.WriteHeatmap] follows
// that order.
//
// # Memory
//
// A node daemon records every transfer for as long as it runs, over regions
// of up to millions of pages, so the analyzer's memory is bounded rather
// than proportional to the history:
//
//   - Every page that migrated has 16 bytes of counts (migrations, ownership
//     transfers, waiting time), allocated 1,024 pages at a time as pages
//     first move: 4 MiB for a GiB of 4 KiB pages. The totals of the report,
//     and the migration counts and costs of findings and variables, come
//     from these counts and are exact.
//   - At most [Limits].DetailPages pages (default 4,096) are analysed in
//     detail: who wrote which bytes, the distinct write patterns (at most 64
//     a page, past which the per-variable write counts are approximated),
//     and the ownership history, within [Limits].DetailBytes for the first
//     two. Classification needs this detail, so only these pages have
//     findings.
//   - The ownership history is a ring of the most recent transfers of each
//     page ([Limits].EventsPerPage), the rings together holding about
//     [Limits].Events transfers: enough for a heat map row per page.
//   - At most [Limits].Races distinct data races (default 1,024, about 150
//     bytes each) are kept; the others are counted
//     ([Totals].DroppedRaces).
//
// A page gets detail from its first transfer while there is room, so that
// small programs lose nothing. A fixed threshold (detail from the k-th
// transfer on) was not chosen: it would drop the written ranges, and the
// classification accumulates them over the whole history. Once the detailed
// pages are at their limit, a page takes the place of the least migrated of
// them when it has migrated at least twice as often and [MinReadMigrations]
// times more: a page that ping-pongs soon displaces the pages written once
// in a bulk phase, while pages of similar heat do not keep displacing each
// other and losing their history. The report counts the pages whose detail
// was lost or never kept although they migrated enough to be a finding
// ([Totals].Untracked) and the findings whose detail started late
// ([Totals].LateDetail).
//
// An Analyzer is safe for concurrent use. It does no I/O except writing the
// PNG files that [Analyzer.WriteHeatmap] and [Analyzer.WriteVarBars] are asked
// for.
package analyzer
