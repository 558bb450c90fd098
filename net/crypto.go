package net

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Key derivation labels. Changing them changes the protocol.
const (
	labelHelloSalt = "dsm/net v1 hello"
	labelData      = "dsm/net v1 data"
	labelSID       = "dsm/net v1 session id"
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

// sessionKeys are the keys of one session between self and a peer.
type sessionKeys struct {
	sid        uint32
	send, recv cipher.AEAD
}

// deriveSession derives the session id and the per-direction keys from the
// two session nonces. The salt orders the nonces by node id so that both
// ends compute the same values.
func deriveSession(clusterKey []byte, self, peer NodeID, selfNonce, peerNonce [16]byte) (sessionKeys, error) {
	var salt [32]byte
	if self < peer {
		copy(salt[:16], selfNonce[:])
		copy(salt[16:], peerNonce[:])
	} else {
		copy(salt[:16], peerNonce[:])
		copy(salt[16:], selfNonce[:])
	}
	var s sessionKeys
	sid, err := hkdf.Key(sha256.New, clusterKey, salt[:], labelSID, 4)
	if err != nil {
		return s, fmt.Errorf("net: deriving session id: %w", err)
	}
	s.sid = binary.BigEndian.Uint32(sid)
	for _, d := range []struct {
		from, to NodeID
		aead     *cipher.AEAD
	}{{self, peer, &s.send}, {peer, self, &s.recv}} {
		k, err := hkdf.Key(sha256.New, clusterKey, salt[:], dirInfo(labelData, d.from, d.to), 32)
		if err != nil {
			return s, fmt.Errorf("net: deriving session key: %w", err)
		}
		if *d.aead, err = newGCM(k); err != nil {
			return s, err
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
