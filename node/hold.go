package node

import (
	"bytes"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/coherence"
)

// The minimum hold (Mirage's time window): when another node already waits
// for a page that this node just made accessible for a local fault, the
// engine keeps the page here until the program had its chance to make the
// access it faulted on, and then hands it on at once. Without a hold the page
// could leave before the woken thread ran (livelock); with a long one a
// contended page sits idle.
//
// The hold ends when the page's content differs from what was installed
// (the program wrote: its access is done) or after MinHold (a read leaves no
// trace), whichever comes first, and at the latest after MaxHold. Go's
// timers are coarse below a millisecond, so the hold is a short poll on a
// goroutine of its own: one pread of the page per round.

// holdState is what a hold needs to know about its page.
type holdState struct {
	at   time.Time // when the page was made accessible
	twin []byte    // its content then, if the program may write it
}

// noteAccessible records that page p was made accessible for a local fault
// now (ActInstall, ActUnprotect). Called with n.mu held.
func (n *Node) noteAccessible(p coherence.PageID, writable bool) {
	h := holdState{at: time.Now()}
	if writable {
		if t, ok := n.twins[p]; ok {
			h.twin = append([]byte(nil), t...)
		}
	}
	n.holds[p] = h
}

// startHold serves ActHold for page p. Called with n.mu held.
func (n *Node) startHold(p coherence.PageID) {
	h, ok := n.holds[p]
	if !ok {
		h = holdState{at: time.Now()}
	}
	delete(n.holds, p)
	n.stats.holds++
	minHold, maxHold := time.Duration(n.cfg.MinHold), time.Duration(n.cfg.MaxHold)
	go func() {
		buf := make([]byte, n.ps)
		for {
			since := time.Since(h.at)
			if since >= maxHold || (h.twin == nil && since >= minHold) {
				break
			}
			if h.twin != nil {
				if _, err := unix.Pread(n.memfd, buf, n.pageOff(p)); err != nil || !bytes.Equal(buf, h.twin) {
					break // written: the access it faulted for is done
				}
			}
			runtime.Gosched()
		}
		n.offLoop(func() { n.eng.EndHold(p) })
	}()
}
