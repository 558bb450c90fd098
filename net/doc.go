// Package net is the transport between the node daemons of the DSM runtime.
//
// Page faults on one node are served by pages held on another, so the
// round trip of a small request and a 4 KiB reply is on the critical path of
// every remote fault. This package carries those messages reliably and in
// order per peer over UDP, with the KCP protocol for retransmission, and does
// the work KCP leaves to its user: framing, authentication, handshakes,
// liveness and optional forward error correction.
//
// # Structure
//
// A [Transport] owns ONE UDP socket. One goroutine reads it with blocking
// reads and drives everything that arrives; a second goroutine runs timers
// (KCP retransmissions, heartbeats, hellos, dead-peer detection). Each peer
// has its own KCP state machine (the exported core of
// github.com/xtaci/kcp-go/v5, not its sessions): [Transport.Send] queues the
// message into KCP and flushes it onto the wire at once, in the caller's
// goroutine (kcp-go's exported Update would hold it for up to 10 ms).
//
// Acknowledgements are flushed by the reader right after the application
// handler has run, so a reply sent from the handler carries the ACK in the
// same datagram. A datagram that would hold nothing but a few ACKs waits
// up to 1 ms (a read deadline of the reader, no extra goroutine) for data to
// ride on, typically the next request of a request/reply exchange; an
// exchange then costs one datagram each way, as with raw UDP. KCP's minimum
// RTO is 30 ms, far above that delay.
//
// KCP retransmits early only when later segments are acknowledged, so a
// lost request or reply with nothing behind it would wait the full 30 ms
// RTO. When few segments are in flight and no ACK has arrived for
// max(2 ms, 4 RTT), the transport probes: it makes KCP retransmit them
// (backing off by doubling). With 1% injected loss this cuts the p99 round
// trip from about 30 ms to about 2 ms.
//
// Everything a KCP flush produces for a peer is coalesced into as few
// datagrams as the configured MTU allows. KCP's own segments are at most
// 1496 bytes (kcp-go sizes its buffers for that), but on loopback a 4 KiB
// page and its headers still travel as one datagram of about 4.2 KiB.
//
// # Wire format (version 3)
//
// Every datagram starts with an 18-byte header, which is authenticated as
// AEAD additional data:
//
//	version u8 | kind u8 | from u16 | to u16 | nonce [12]byte
//
// followed by the AES-256-GCM ciphertext of a sequence of frames and the
// 16-byte tag. kind is hello (handshake) or session (everything else). Each
// frame is
//
//	version u8 | type u8 | length u32 (big endian) | body [length]byte
//
// and the decoder rejects unknown versions and types, short headers,
// truncated bodies and malformed bodies with errors wrapping [ErrMalformed].
//
// # Keys and nonces
//
// All keys come from the cluster key through HKDF-SHA256. Hello datagrams
// are sealed with a per-direction hello key (info names the sender and the
// receiver) and a random 96-bit nonce carried in the header; hellos are rare,
// so random nonces are far from the GCM collision bound. The GCM tag is the
// MAC that proves the sender holds the cluster key; it does not prove when
// the hello was made, so the handshake must not trust a hello that could be a
// replay.
//
// Each node holds, per peer, an offer for the next session: a random 128-bit
// session nonce and an ephemeral X25519 key pair. A hello carries the
// sender's node id, the region geometry, a nonce and public key, the peer's
// nonce it answers (the echo) and flags: up (the sender is up in the session
// of that nonce and echo) or live (the sender is up in another session, and
// offers the nonce and key for a new one). The session keys are derived from
// the cluster key and the X25519 shared secret of the two offers' keys, with
// both nonces and both public keys as HKDF salt and info naming both nodes:
// a 32-bit session id and one key per direction. An offer is used for one
// session only: when a session starts, the node makes a new offer. So every
// session has keys no earlier session had, whatever the peer, or anyone
// replaying its hellos, sends.
//
// A hello starts a session only if it echoes the receiver's current offer:
// it was then made after that offer, by the peer, and the receiver goes up
// (and answers, unless the hello says the sender is up in that session
// already). A hello that does not, while no session is up, is the peer's
// offer: the receiver answers it with a hello echoing it. While a session is
// up, such a hello changes nothing in the session. If its sender claims no
// live session (it may have restarted), the receiver answers with a
// challenge, a live hello with its own offer, at most four times per
// HeartbeatInterval; a restarted peer answers the challenge, which moves both
// to a new session, while a replayed hello leads nowhere. Besides silence
// and a goodbye, only the peer's answer to the node's current offer ends a
// live session: a hello echoing it, or a session datagram sealed with the
// keys of it and the peer's offer (the peer started the session and its
// hello saying so is late or lost).
//
// Session datagrams carry the session id and a 64-bit per-direction counter
// (from 0 in each session) as their 96-bit nonce; with a new key for every
// session, no (key, nonce) pair is ever used twice. The counter also feeds a
// replay window, so a replayed session datagram is dropped. Only session
// datagrams that pass it keep a peer alive: replayed hellos cannot make a
// dead peer look up. A datagram that fails authentication is dropped,
// counted and logged once per peer and address; it never crashes the
// transport and never reaches the application.
//
// # Liveness
//
// Peers ping each other every HeartbeatInterval (the pong gives the RTT).
// A peer silent for DeadAfter is reported down ([PeerDown]); its KCP state
// is dropped and the handshake starts again, so a peer that comes back gets
// a new session and a new [PeerUp]. A peer that restarts is noticed when it
// answers the challenge to its first hello, and a peer that closes its
// transport says goodbye.
package net
