package lockmgr

import (
	"testing"
)

// grantOf returns the single Granted event of evs, or fails.
func grantOf(t *testing.T, evs []Event) Event {
	t.Helper()
	for _, ev := range evs {
		if ev.Kind == Granted {
			return ev
		}
	}
	t.Fatalf("no grant in %s", fmtEvents(evs))
	return Event{}
}

// TestCachedLockRecall: a cached grant reserves a range of tokens, a
// request of another node recalls it, the release says which tokens the
// holder used, and the next grant is above them.
func TestCachedLockRecall(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 1 })
	a, b := c.engs[0], c.engs[1]
	a.LockCached("x", 1, 1)
	c.run()
	g := grantOf(t, c.take())
	if g.Limit != g.Token+DefaultCacheTokens-1 || g.Recall {
		t.Fatalf("cached grant %v: want limit token+%d and no recall", g, DefaultCacheTokens-1)
	}
	// The client re-grants by itself: nothing reaches the engine, so
	// nothing goes out but renewals.
	last := g.Token + 5
	c.tick(tRenew * 2)
	if evs := c.take(); len(evs) != 0 {
		t.Fatalf("events while the lock is cached: %s", fmtEvents(evs))
	}
	b.Lock("x", Exclusive, 2, 1)
	c.run()
	evs := c.take()
	if len(evs) != 1 || evs[0].Kind != Recalled || evs[0].Client != 1 || evs[0].Token != g.Token {
		t.Fatalf("want one Recalled for client 1, got %s", fmtEvents(evs))
	}
	if err := a.UnlockCached("x", 1, last); err != nil {
		t.Fatal(err)
	}
	c.run()
	g2 := grantOf(t, c.take())
	if g2.Client != 2 || g2.Token <= last {
		t.Fatalf("grant after the recall %v: want client 2 with a token above %#x", g2, last)
	}
	if g2.Token > g.Limit {
		t.Errorf("token %#x: the counter moved past the whole range (%#x) although the release told the last token", g2.Token, g.Limit)
	}
}

// TestCachedLockContendedGrant: a cached grant that others already wait for
// says so, and the client is not recalled a second time.
func TestCachedLockContendedGrant(t *testing.T) {
	c := newTestNet(t, 3, func(string) NodeID { return 0 })
	c.engs[1].Lock("x", Exclusive, 1, 1)
	c.run()
	grantOf(t, c.take())
	c.engs[2].LockCached("x", 2, 1)
	c.run()
	c.engs[0].Lock("x", Exclusive, 3, 1)
	c.run()
	if err := c.engs[1].Unlock("x", 1); err != nil {
		t.Fatal(err)
	}
	c.run()
	g := grantOf(t, c.take())
	if g.Client != 2 || !g.Recall {
		t.Fatalf("grant %v: want client 2, recalled at once", g)
	}
	c.tick(tRetry * 4) // client 3 retransmits; the recall is not reported again
	for _, ev := range c.take() {
		if ev.Kind == Recalled {
			t.Fatalf("second recall: %v", ev)
		}
	}
	if err := c.engs[2].UnlockCached("x", 2, g.Token); err != nil {
		t.Fatal(err)
	}
	c.run()
	if g3 := grantOf(t, c.take()); g3.Client != 3 || g3.Token <= g.Token {
		t.Fatalf("grant %v: want client 3 above %#x", g3, g.Token)
	}
}

// TestCachedLockVanishedHolder: when a cached holder's node goes away
// without saying which tokens it used, the next grant is above the whole
// range it was allowed.
func TestCachedLockVanishedHolder(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 1 })
	c.engs[0].LockCached("x", 1, 1)
	c.run()
	g := grantOf(t, c.take())
	c.down[0] = true
	c.engs[1].Lock("x", Exclusive, 2, 1)
	c.tick(tHoL + 2)
	g2 := grantOf(t, c.take())
	if g2.Token <= g.Limit {
		t.Fatalf("grant %v after the cached holder vanished: want a token above its limit %#x", g2, g.Limit)
	}
}

// TestCachedLockReleaseClient: a program that exits while it keeps a lock
// cached frees it at once, and the next token is above its range.
func TestCachedLockReleaseClient(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 0 })
	c.engs[1].LockCached("x", 1, 1)
	c.run()
	g := grantOf(t, c.take())
	c.engs[0].Lock("x", Exclusive, 2, 1)
	c.run()
	c.take() // the recall
	c.engs[1].ReleaseClient(1)
	c.run()
	if g2 := grantOf(t, c.take()); g2.Client != 2 || g2.Token <= g.Limit {
		t.Fatalf("grant %v: want client 2 above %#x", g2, g.Limit)
	}
}

// TestCachedLockLateGrantAfterPeerDown: a late copy of a cached grant that
// reaches the requester after its hold ended (here: PeerDown of the home,
// whose release was lost) is given back without claiming that its token
// was the last used, since the client may have re-granted the lock to
// itself meanwhile; the next grant is above the whole range.
func TestCachedLockLateGrantAfterPeerDown(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 0 })
	c.engs[1].LockCached("x", 1, 1)
	msgs, _ := c.engs[1].Ready()
	step(t, c.engs[0], &msgs[0])
	grants, _ := c.engs[0].Ready()
	step(t, c.engs[1], &grants[0])
	g := grantOf(t, c.engs[1].events)
	c.engs[1].Ready()
	used := g.Token + 1 // a re-grant from the cache
	c.engs[1].PeerDown(0)
	if _, evs := c.engs[1].Ready(); len(evs) != 1 || evs[0].Kind != Lost {
		t.Fatalf("PeerDown: want Lost, got%s", fmtEvents(evs))
	} // its release is lost
	step(t, c.engs[1], &grants[0]) // a late copy of the grant
	c.run()
	c.engs[0].Lock("x", Exclusive, 2, 1)
	c.run()
	if g2 := grantOf(t, c.take()); g2.Token <= used {
		t.Fatalf("grant %v: token %#x reused, the cached holder gave itself %#x", g2, g2.Token, used)
	}
}
