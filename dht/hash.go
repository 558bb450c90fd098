package dht

// Hashing.
//
// Keys and virtual-node positions are placed on the ring by a splitmix64-style
// finaliser: two xor-shift-multiply rounds and a final xor-shift. Every step
// is invertible, so the finaliser is a bijection on 64-bit words: distinct
// virtual nodes never collide, and distinct keys never share a position. It
// also avalanches (flipping one input bit flips about half of the output
// bits), which is what matters here: page indices are small consecutive
// integers, and an unmixed hash would put them in one arc of the ring, all
// with the same home. The finaliser costs a few nanoseconds and needs no
// table, so Home can run on the page-fault path.
//
// Strings (lock and object names) are first folded to 64 bits with FNV-1a,
// which is simple and allocation-free but mixes its high bits poorly for short
// inputs; the finaliser applied by Home repairs that.

const (
	// keySeed and vnodeSeed keep keys and virtual nodes in different
	// "streams" of the bijection, so a key k and a virtual node whose input
	// word equals k are not placed at the same point.
	keySeed   = 0x9e3779b97f4a7c15
	vnodeSeed = 0xd1b54a32d192ed03

	// Domain tags in the top byte keep the keys of different kinds of
	// objects apart.
	pageDomain = uint64('P') << 56
	lockDomain = uint64('L') << 56

	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// mix64 is the splitmix64 finaliser: a bijective, well-avalanching mix of a
// 64-bit word.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// keyPoint is the ring position of a key.
func keyPoint(key uint64) uint64 { return mix64(key ^ keySeed) }

// vnodePoint is the ring position of virtual node i of node n. The input word
// is distinct for every (n, i) with i < 2^32, so positions never collide.
func vnodePoint(n NodeID, i int) uint64 {
	return mix64((uint64(n)<<32 | uint64(uint32(i))) ^ vnodeSeed)
}

// PageKey returns the key of the page with index page. A page's home is
// Ring.Home(PageKey(page)).
func PageKey(page uint32) uint64 { return pageDomain | uint64(page) }

// LockKey returns the key of the lock with the given id. A lock's home is
// Ring.Home(LockKey(id)). Lock keys never equal page keys, so a lock and the
// page with the same number are placed independently.
func LockKey(id uint32) uint64 { return lockDomain | uint64(id) }

// StringKey returns the key of a named object: the 64-bit FNV-1a hash of
// name. Ring.HomeOfString(name) is Ring.Home(StringKey(name)).
func StringKey(name string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= fnvPrime
	}
	return h
}
