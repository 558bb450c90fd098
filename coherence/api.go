package coherence

import "github.com/dsmrt/dsm/clocks"

// NodeID names a node of the cluster: 0 .. Nodes-1.
type NodeID uint16

// PageID is the index of a page in the shared region (offset / page size).
type PageID uint32

// Access is the kind of access that faulted.
type Access uint8

// The accesses a program can fault on.
const (
	Read Access = iota + 1
	Write
)

// State is the local state of a page on one node.
//
// The daemon keeps the physical representation in step with it:
// Invalid is a hole in the memfd, Shared is a present page write-protected
// with userfaultfd, Exclusive is a present page without protection.
type State uint8

// The page states.
const (
	Invalid State = iota
	Shared
	Exclusive
)

// ActionKind says what the daemon must do to a page.
type ActionKind uint8

// The page actions. The daemon applies them in the order they appear in
// Ready, interleaved with the messages around them.
const (
	// ActInstall makes an absent page present with Data (decoded by the
	// daemon) or zeros when Zero is set; writable when Writable is set,
	// write-protected otherwise. It wakes the threads waiting on the page.
	// The engine counts the page as present from here on (and tells the
	// home so): a daemon that cannot install it can no longer keep the
	// page coherent and must fail loudly rather than wait for a retry.
	ActInstall ActionKind = iota + 1
	// ActProtect write-protects a present page (Exclusive -> Shared).
	ActProtect
	// ActUnprotect removes write protection (Shared -> Exclusive) and wakes
	// the threads waiting on the page.
	ActUnprotect
	// ActDrop makes a page absent (-> Invalid): protect, then punch the hole.
	ActDrop
	// ActWake wakes the threads waiting on a page whose state already
	// allows the access (a fault that raced with its resolution).
	ActWake
	// ActHold says that another node waits for a page this node made
	// accessible for a local fault (the last ActInstall or ActUnprotect of
	// Page), and that the engine keeps it here until the local program had
	// its chance: the daemon calls Engine.EndHold(Page) once its minimum
	// hold has passed since it applied that action (at once, after the rest
	// of the batch, if it has passed already). Only with Config.Hold; at
	// most one is outstanding per page, and it comes only when somebody
	// waits, so an uncontended page is never held.
	ActHold
)

// Action is one page action for the daemon to apply.
type Action struct {
	Kind     ActionKind
	Page     PageID
	Writable bool          // ActInstall: install read-write
	Zero     bool          // ActInstall: the page is all zeros; Data is nil
	Data     []byte        // ActInstall: the page as it travelled (opaque to the engine)
	Meta     []byte        // ActInstall: metadata the sender attached (opaque to the engine)
	From     NodeID        // ActInstall: the node the data came from
	Version  uint64        // the page version the node now holds
	Clock    clocks.Vector // the page version's vector clock
}

// Output is one step of a Ready batch: exactly one of Msg and Act is set.
//
// The daemon applies a batch strictly in order, and a message counts as
// applied when it is filled (Engine.Fill, for one marked NeedData) and
// handed to the transport. The protocol relies on that order: a message that follows an
// action must not leave the node before the action took effect (MsgDropped
// and MsgInvalAck follow the ActDrop they report; the data of a page
// follows the ActProtect that stops writes to it).
type Output struct {
	Msg *Message
	Act *Action
}
