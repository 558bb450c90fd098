// Package coherence keeps the pages of the distributed shared memory
// coherent: it decides which node may read or write each page, and moves
// pages between nodes when a program faults on one.
//
// The protocol is sequentially consistent with a single writer and many
// readers per page (write-invalidate), kept by a directory. Every page has a
// home node; the home keeps the page's directory entry (owner, copy set,
// version) and runs one transaction per page at a time, in the order the
// requests arrived:
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
// The Engine is a pure state machine in the style of etcd's raft package:
// Fault, Step and Tick are its inputs, Ready returns its outputs (messages to
// send and page actions for the daemon to apply) and nothing inside it
// blocks, reads a clock, does I/O or draws random numbers. That is what lets
// Simulate run thousands of seeded schedules of a whole cluster, with an
// unreliable network, in one process and check the protocol after every
// step; a failing seed replays exactly.
//
// The daemon applies every Output of a Ready batch, in order, before it
// gives the engine its next input. It fills a message marked NeedData from
// the node's copy of the page at the moment it reaches that message, in
// place, and sends it. Because the old owner's copy is dropped right after
// its page is sent to a new writer, the engine keeps that filled message
// until the home confirms the hand-over (MsgRelease) and sends it again if
// it was lost.
//
// The network may lose, duplicate, reorder and delay messages. Requesters
// retransmit on Tick with the same request id; every handler is idempotent;
// the home drives its current transaction again when a retried request
// arrives; versions (one per write transaction) and vector clocks stamp
// every copy, and a node never installs a version older than one it holds
// or has seen invalidated.
package coherence
