package lockmgr

import (
	"fmt"
	"math/rand/v2"
)

// Config configures an Engine. All durations are in ticks of the daemon's
// clock (Engine.Tick); they are compared only with ticks of the same node, so
// the nodes' clocks need not agree, but they must run at nearly the same
// rate: HomeLeaseTicks-HolderLeaseTicks must cover the largest drift between
// two nodes over one lease.
type Config struct {
	// ID is this node.
	ID NodeID
	// Nodes is the size of the cluster; node ids are 0 .. Nodes-1.
	Nodes int
	// Home names the node that keeps the state of a lock, election or
	// barrier (the DHT). It must give the same answer on every node and
	// answer below Nodes.
	Home func(name string) NodeID
	// HolderLeaseTicks is how long a holder believes its lease lasts,
	// counted from when it sent the request or renewal the home answered.
	HolderLeaseTicks int
	// HomeLeaseTicks is how long the home keeps a holder that stopped
	// renewing, counted from when it received the request or renewal.
	// It must be larger than HolderLeaseTicks: that is what makes a cut-off
	// holder learn that it lost the lock before anyone else can get it.
	HomeLeaseTicks int
	// RenewTicks is how often a holder renews (less than
	// HolderLeaseTicks, with room for a round trip and a lost message).
	RenewTicks int
	// RetryTicks is the base delay before a request, renewal, release or
	// barrier arrival is sent again; each retry adds a jitter of up to
	// RetryTicks/2 drawn from Rand.
	RetryTicks int
	// Epoch is the incarnation of this node: every restart of its daemon
	// must use a larger Epoch than any before (persist a counter, or use
	// the start time in seconds). Tokens are Epoch<<32 | counter, so a
	// restarted home grants larger tokens than before. Must be at least 1.
	Epoch uint32
	// FreshStart says no earlier incarnation of this node ever granted a
	// lock that may still be held (the first start of a new cluster).
	// Otherwise the engine grants nothing for HomeLeaseTicks after New, so
	// that every lease granted before a crash has run out. Setting it on a
	// restart allows two holders at once.
	FreshStart bool
	// Rand is the only source of randomness (retry jitter). Nil means a
	// source seeded from ID and Epoch.
	Rand *rand.Rand
	// CacheTokens is how many tokens a cached grant (LockCached) reserves
	// for its holder: the client may re-grant the lock to itself
	// CacheTokens-1 times before it must ask the home again. The home
	// forgets the unused part when the holder tells it the last token it
	// used; a holder that vanishes without saying (a lease that ran out, a
	// program or node that died) costs the whole block of the home's 2^32
	// tokens per epoch. 0 means DefaultCacheTokens; 1 disables re-grants.
	// Only the home's setting counts.
	CacheTokens int

	// unsafeLeases lets the simulator's tests build the broken
	// configuration HolderLeaseTicks >= HomeLeaseTicks.
	unsafeLeases bool
	// ignoreLastToken lets them build a home that does not move its token
	// counter past the tokens a cached holder gave itself.
	ignoreLastToken bool
	// payloadBug lets them build a home that keeps the wrong release
	// payloads or drops a barrier arrival's.
	payloadBug payloadBug
}

// payloadBug is a deliberate mistake in the handling of payloads, for the
// simulator's tests.
type payloadBug uint8

const (
	payloadOK         payloadBug = iota
	payloadKeepFirst             // a lock's first payload is never replaced
	payloadKeepStale             // any release replaces the payload, even one older than it
	payloadDropArrive            // a barrier generation loses one arrival's payload
)

// DefaultConfig returns a configuration for a cluster of n nodes with
// 10-millisecond ticks in mind: a holder believes 2 s, the home enforces
// 2.5 s, renewals every 500 ms, retries after 50-70 ms.
func DefaultConfig(id NodeID, n int, home func(string) NodeID, epoch uint32) Config {
	return Config{
		ID: id, Nodes: n, Home: home, Epoch: epoch,
		HolderLeaseTicks: 200, HomeLeaseTicks: 250, RenewTicks: 50, RetryTicks: 5,
	}
}

// validate checks the config and says what to change.
func (c *Config) validate() error {
	switch {
	case c.Nodes < 1 || c.Nodes > 1<<16:
		return fmt.Errorf("%w: Nodes is %d, want 1 to 65536", ErrConfig, c.Nodes)
	case int(c.ID) >= c.Nodes:
		return fmt.Errorf("%w: ID %d is not below Nodes %d", ErrConfig, c.ID, c.Nodes)
	case c.Home == nil:
		return fmt.Errorf("%w: Home is nil; pass the DHT's lookup", ErrConfig)
	case c.Epoch == 0:
		return fmt.Errorf("%w: Epoch is 0; start at 1 and increase it on every restart", ErrConfig)
	case c.RetryTicks < 1:
		return fmt.Errorf("%w: RetryTicks is %d, want at least 1", ErrConfig, c.RetryTicks)
	case c.RenewTicks < 1:
		return fmt.Errorf("%w: RenewTicks is %d, want at least 1", ErrConfig, c.RenewTicks)
	case c.HolderLeaseTicks <= c.RenewTicks:
		return fmt.Errorf("%w: HolderLeaseTicks %d must exceed RenewTicks %d (renew several times per lease)",
			ErrConfig, c.HolderLeaseTicks, c.RenewTicks)
	case c.HolderLeaseTicks <= c.RetryTicks:
		return fmt.Errorf("%w: HolderLeaseTicks %d must exceed RetryTicks %d", ErrConfig, c.HolderLeaseTicks, c.RetryTicks)
	case c.CacheTokens < 0 || c.CacheTokens > 1<<24:
		return fmt.Errorf("%w: CacheTokens is %d, want 0 (the default) to %d", ErrConfig, c.CacheTokens, 1<<24)
	case c.HomeLeaseTicks <= c.HolderLeaseTicks && !c.unsafeLeases:
		return fmt.Errorf("%w: HomeLeaseTicks %d must exceed HolderLeaseTicks %d, or a cut-off holder may "+
			"still believe it holds after the home granted the lock to another", ErrConfig, c.HomeLeaseTicks, c.HolderLeaseTicks)
	}
	return nil
}
