package net

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Key derivation labels. Changing them changes the protocol.
const (
	labelHelloSalt = "dsm/net v2 hello"
	labelData      = "dsm/net v2 data"
	labelSID       = "dsm/net v2 session id"
)

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func dirInfo(label string, from, to NodeID) string {
	var b [4]byte
	binary.BigEndian.PutUint16(b[:], from)
	binary.BigEndian.PutUint16(b[2:], to)
	return label + string(b[:])
}

// helloAEAD is the key that seals hellos from one node to another.
func helloAEAD(clusterKey []byte, from, to NodeID) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, clusterKey, []byte(labelHelloSalt), dirInfo("hello", from, to), 32)
	if err != nil {
		return nil, fmt.Errorf("net: deriving hello key: %w", err)
	}
	return newGCM(k)
}

// offer is the secret one node puts into a handshake: a random session
// nonce and an ephemeral X25519 key pair, both new for every session. The
// nonce and the public key travel in hellos; the private key never leaves
// the node and is dropped when a session starts with it.
type offer struct {
	nonce [16]byte
	priv  *ecdh.PrivateKey
	pub   [32]byte
}

// newOffer makes a fresh offer.
func newOffer() (offer, error) {
	var o offer
	rand.Read(o.nonce[:])
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return o, fmt.Errorf("net: generating an ephemeral key: %w", err)
	}
	o.priv = k
	copy(o.pub[:], k.PublicKey().Bytes())
	return o, nil
}

// sessionKeys are the keys of one session between self and a peer.
type sessionKeys struct {
	sid        uint32
	send, recv cipher.AEAD
	// sendID identifies the send key (a hash of it) for sealHook.
	sendID [32]byte
}

// sealHook, when set (by tests only), is called with the identity of the
// key and the AEAD nonce of every session datagram a transport seals, so
// that a test can check that no (key, nonce) pair is ever used twice.
var sealHook func(self, peer NodeID, key [32]byte, nonce [12]byte)

// deriveSession derives the session id and the per-direction keys of the
// session between self's offer and the peer's (its nonce and public key).
//
// The input keying material is the cluster key, which authenticates the
// exchange (only holders of it could have sealed the hellos, and only they
// can derive these keys), followed by the X25519 shared secret of the two
// ephemeral keys, which is new whenever either side's key is. The salt holds
// both nonces and both public keys, ordered by node id so that both ends
// compute the same values, and the info strings name both nodes. A node
// never starts two sessions with one offer, so its keys never repeat, and
// nothing the peer (or anyone replaying the peer's hellos) sends can make
// them repeat.
func deriveSession(clusterKey []byte, self, peer NodeID, local *offer, peerNonce [16]byte, peerPub [32]byte) (sessionKeys, error) {
	var s sessionKeys
	pk, err := ecdh.X25519().NewPublicKey(peerPub[:])
	if err != nil {
		return s, fmt.Errorf("%w: node %d's ephemeral key: %w", ErrMalformed, peer, err)
	}
	shared, err := local.priv.ECDH(pk)
	if err != nil {
		// A low-order point: the shared secret would be known to all.
		return s, fmt.Errorf("%w: node %d's ephemeral key: %w", ErrMalformed, peer, err)
	}
	lo, hi := [][]byte{local.nonce[:], local.pub[:]}, [][]byte{peerNonce[:], peerPub[:]}
	if self > peer {
		lo, hi = hi, lo
	}
	salt := make([]byte, 0, 2*(16+32))
	salt = append(append(append(append(salt, lo[0]...), hi[0]...), lo[1]...), hi[1]...)
	secret := append(append(make([]byte, 0, len(clusterKey)+len(shared)), clusterKey...), shared...)
	prk, err := hkdf.Extract(sha256.New, secret, salt)
	if err != nil {
		return s, fmt.Errorf("net: deriving session keys: %w", err)
	}
	sid, err := hkdf.Expand(sha256.New, prk, labelSID, 4)
	if err != nil {
		return s, fmt.Errorf("net: deriving session id: %w", err)
	}
	s.sid = binary.BigEndian.Uint32(sid)
	for _, d := range []struct {
		from, to NodeID
		aead     *cipher.AEAD
	}{{self, peer, &s.send}, {peer, self, &s.recv}} {
		k, err := hkdf.Expand(sha256.New, prk, dirInfo(labelData, d.from, d.to), 32)
		if err != nil {
			return s, fmt.Errorf("net: deriving session key: %w", err)
		}
		if *d.aead, err = newGCM(k); err != nil {
			return s, err
		}
		if d.from == self {
			s.sendID = sha256.Sum256(k)
		}
	}
	return s, nil
}

// replayWindow remembers which of the last replayWindowSize counters were
// seen, so that a duplicated or replayed datagram is dropped before it costs
// anything. Counters older than the window are refused too.
type replayWindow struct {
	top  uint64 // highest counter seen, plus one (0: none yet)
	bits [replayWindowSize / 64]uint64
}

const replayWindowSize = 1024

// check reports whether ctr is new, and records it.
func (w *replayWindow) check(ctr uint64) bool {
	if ctr == ^uint64(0) {
		return false
	}
	switch {
	case ctr >= w.top:
		shift := ctr + 1 - w.top
		if shift >= replayWindowSize {
			w.bits = [replayWindowSize / 64]uint64{}
		} else {
			for i := w.top; i <= ctr; i++ {
				w.clear(i)
			}
		}
		w.top = ctr + 1
		w.set(ctr)
		return true
	case w.top-ctr > replayWindowSize:
		return false
	case w.has(ctr):
		return false
	default:
		w.set(ctr)
		return true
	}
}

func (w *replayWindow) set(c uint64)      { w.bits[(c/64)%uint64(len(w.bits))] |= 1 << (c % 64) }
func (w *replayWindow) clear(c uint64)    { w.bits[(c/64)%uint64(len(w.bits))] &^= 1 << (c % 64) }
func (w *replayWindow) has(c uint64) bool { return w.bits[(c/64)%uint64(len(w.bits))]&(1<<(c%64)) != 0 }
