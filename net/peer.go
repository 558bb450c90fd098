package net

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"net/netip"
	"slices"
	"sync"
	"time"

	kcp "github.com/xtaci/kcp-go/v5"
)

// KCP settings. NoDelay(1, 10, 2, 1): no-delay RTO (30 ms floor), the
// shortest internal interval kcp-go allows, fast retransmit after two
// later ACKs, and no congestion window (the window below bounds bursts).
const (
	kcpInterval = 10
	kcpResend   = 2
	kcpSndWnd   = 256
	kcpRcvWnd   = 256
	// kcpMaxFrags bounds the fragments of one KCP message; it must not
	// exceed kcpRcvWnd or the receiver could never reassemble the message.
	kcpMaxFrags = 128
	// maxWaitSnd bounds the segments queued for one peer.
	maxWaitSnd = 1 << 16
	// maxPending bounds the bytes queued for a peer before its first
	// handshake completes.
	maxPending = 64 << 20
	// fecDelay closes a partly filled FEC group this long after its first
	// shard, so that sparse traffic is protected too.
	fecDelay = time.Millisecond
	// ackDelay is how long a datagram of only ACKs may wait for data to
	// ride on; far below KCP's 30 ms minimum RTO.
	ackDelay = time.Millisecond
	// maxDelayedACKs: more ACKs than this go at once (bulk transfers).
	maxDelayedACKs = 16
	// Tail-loss probes. KCP retransmits a segment only after its RTO,
	// never under 30 ms, unless later segments are acknowledged; a lost
	// request or reply with nothing behind it would stall an exchange for
	// 30 ms. When at most tlpMaxSegs segments are in flight and no ACK
	// has made progress for max(tlpMin, 4 RTT), the transport makes KCP
	// retransmit them, backing off by doubling up to tlpMaxBackoff times.
	tlpMin        = 2 * time.Millisecond
	tlpMaxSegs    = 32
	tlpMaxBackoff = 4
)

type peerState uint8

const (
	stConnecting peerState = iota // never up yet
	stUp
	stDown    // was up; handshaking again
	stRefused // handshake refused; hellos continue in case the peer is fixed
)

func (s peerState) String() string {
	switch s {
	case stConnecting:
		return "connecting"
	case stUp:
		return "up"
	case stDown:
		return "down"
	case stRefused:
		return "refused"
	}
	return "?"
}

// peer is the transport's state for one other node. Every field below mu
// is guarded by it, and every datagram to the peer is written under it.
type peer struct {
	t         *Transport
	id        NodeID
	addr      *stdnet.UDPAddr
	ap        netip.AddrPort
	helloSend cipher.AEAD
	helloRecv cipher.AEAD

	mu     sync.Mutex
	state  peerState
	wasUp  bool
	reason error // why down or refused
	// The handshake (see the package documentation). local is this
	// node's offer for the next session; it is never the offer of a
	// session that has started, so a hello that echoes its nonce was
	// made for the next session. remote is the peer's offer that local
	// answers, and pend the keys of the two, ready for when the peer
	// starts the session first.
	local      offer
	remote     hello
	haveRemote bool
	pend       sessionKeys
	havePend   bool
	// The live session (while up): its keys and the two nonces and this
	// node's public key it was made of, for hellos about it.
	sess        sessionKeys
	sessLocal   [16]byte
	sessPub     [32]byte
	sessRemote  [16]byte
	sendCtr     uint64
	replay      replayWindow
	kcp         *kcp.KCP
	kcpMTU      int
	txHigh      uint32 // next new KCP sequence number, to count retransmits
	pending     [][]byte
	pendingSize int
	reasm       []byte
	inReasm     bool
	discard     bool // dropping the rest of an oversized message
	fecEnc      *fecEncoder
	fecDec      *fecDecoder

	dg          []byte    // session datagram being filled by KCP output
	dgData      bool      // dg holds a data segment
	needACK     bool      // data arrived since KCP last flushed its ACKs
	ackDeadline time.Time // when dg (only ACKs) must go; zero if none wait
	dgLimit     int       // max len(dg) (header and plaintext)
	kcpOff      int       // offset of the KCP frame header in dg
	ctl         []byte    // scratch for control datagrams
	corked      bool      // messages queued in KCP or the batch wait for Uncork
	batch       []byte    // small messages sent while corked, in batched form
	batchN      int       // how many messages batch holds
	nonce       [12]byte  // scratch: a nonce handed to the AEAD interface escapes, so it must not live on the stack
	sbuf        []byte    // scratch for message headers

	heardAny      bool // an authenticated datagram arrived
	hellosSent    uint64
	lastHeard     time.Time
	nextPing      time.Time
	nextFlush     time.Time // next KCP flush for retransmissions
	lastProgress  time.Time // when the data in flight last got an ACK (or was sent)
	tlpBackoff    uint
	nextHello     time.Time
	lastHelloSent time.Time
	rtt           time.Duration
	stats         PeerStatus
}

func newPeer(t *Transport, id NodeID, addr *stdnet.UDPAddr) (*peer, error) {
	ap := addr.AddrPort()
	p := &peer{t: t, id: id, addr: addr, ap: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	var err error
	if p.helloSend, err = helloAEAD(t.cfg.Key, t.cfg.ID, id); err != nil {
		return nil, err
	}
	if p.helloRecv, err = helloAEAD(t.cfg.Key, id, t.cfg.ID); err != nil {
		return nil, err
	}
	p.kcpOff = headerLen
	p.dgLimit = t.cfg.MTU - tagLen
	if t.cfg.FEC.enabled() {
		p.kcpOff += frameHeaderLen + fecHeaderLen
		p.dgLimit -= shardLenPrefix // a parity shard is two bytes longer than the data it covers
	}
	p.kcpMTU = min(kcpMaxMTU, p.dgLimit-p.kcpOff-frameHeaderLen)
	p.dg = make([]byte, 0, t.cfg.MTU+tagLen)
	p.ctl = make([]byte, 0, t.cfg.MTU+tagLen)
	if p.local, err = newOffer(); err != nil {
		return nil, err
	}
	return p, nil
}

// renewOffer replaces this node's offer by a fresh one and forgets the
// peer's offer, which answered the old one.
func (p *peer) renewOffer() {
	o, err := newOffer()
	if err != nil {
		// Cannot happen (crypto/rand does not fail). A new nonce alone
		// still keeps the next session's keys new.
		p.t.log.Error("keeping the ephemeral key", "peer", p.id, "err", err)
		o.priv, o.pub = p.local.priv, p.local.pub
	}
	p.local = o
	p.haveRemote, p.havePend = false, false
	p.pend = sessionKeys{}
}

// whyNotUp explains the peer's state for WaitPeers and Peers.
func (p *peer) whyNotUp() error {
	switch p.state {
	case stUp:
		return nil
	case stRefused:
		return fmt.Errorf("%w: %w", ErrPeerRefused, p.reason)
	case stDown:
		return fmt.Errorf("%w: %w", ErrPeerDown, p.reason)
	}
	if !p.heardAny {
		return fmt.Errorf("%w: no authenticated reply to %d hello(s) sent to %s", ErrUnreachable, p.hellosSent, p.addr)
	}
	return errors.New("net: handshake in progress")
}

// send queues msg (see Transport.Send); now is the time of the call.
func (p *peer) send(msg []byte, now time.Time) error {
	switch p.state {
	case stUp:
		if p.kcp.WaitSnd() >= maxWaitSnd {
			return fmt.Errorf("%w: %d segments wait for node %d", ErrQueueFull, p.kcp.WaitSnd(), p.id)
		}
		if p.kcp.WaitSnd() == 0 {
			p.lastProgress, p.tlpBackoff = now, 0
		}
		corked := p.t.corked.Load()
		if corked && len(msg) <= batchMsgMax {
			if len(p.batch)+binary.MaxVarintLen64+len(msg) > batchMax {
				if err := p.flushBatch(); err != nil {
					return err
				}
			}
			p.batch = appendBatched(p.batch, msg)
			p.batchN++
			p.stats.MessagesOut++
			p.t.corkPeer(p)
			return nil
		}
		// Messages keep their order: what waits in the batch goes first.
		if err := p.flushBatch(); err != nil {
			return err
		}
		if err := p.kcpSend(msg); err != nil {
			return err
		}
		p.stats.MessagesOut++
		if corked {
			p.t.corkPeer(p)
			return nil
		}
		p.flushSent()
		return nil
	case stConnecting:
		if p.pendingSize+len(msg) > maxPending {
			return fmt.Errorf("%w: %d bytes wait for node %d to come up", ErrQueueFull, p.pendingSize, p.id)
		}
		p.pending = append(p.pending, append([]byte(nil), msg...))
		p.pendingSize += len(msg)
		return nil
	}
	if p.state == stRefused {
		return fmt.Errorf("net: send to node %d: %w (%w)", p.id, ErrPeerDown, p.whyNotUp())
	}
	return fmt.Errorf("net: send to node %d: %w", p.id, p.whyNotUp())
}

// flushSent puts what KCP has queued on the wire, with the ACKs due.
func (p *peer) flushSent() {
	kcpFlush(p.kcp, kcp.IKCP_FLUSH_FULL)
	p.needACK = false
	p.flushDatagram()
}

// flushBatch hands the messages batched while corked to KCP: one alone as
// an ordinary message, several as one msgBatch message.
func (p *peer) flushBatch() error {
	if p.batchN == 0 {
		return nil
	}
	var err error
	if p.batchN == 1 {
		_, k := binary.Uvarint(p.batch)
		err = p.kcpSend(p.batch[k:])
	} else {
		p.sbuf = append(append(p.sbuf[:0], ProtocolVersion, msgBatch), p.batch...)
		if rc := p.kcp.Send(p.sbuf); rc < 0 {
			err = fmt.Errorf("net: kcp refused a batch of %d messages, %d bytes (code %d)", p.batchN, len(p.sbuf), rc)
		}
	}
	p.batch, p.batchN = p.batch[:0], 0
	return err
}

// kcpSend splits msg into KCP messages of at most kcpMaxFrags segments,
// each with its message header.
func (p *peer) kcpSend(msg []byte) error {
	chunk := kcpMaxFrags*(p.kcpMTU-kcpOverhead) - msgHeaderLen
	for {
		part, typ := msg, byte(msgFinal)
		if len(part) > chunk {
			part, typ = msg[:chunk], msgPart
		}
		p.sbuf = append(append(p.sbuf[:0], ProtocolVersion, typ), part...)
		if rc := p.kcp.Send(p.sbuf); rc < 0 {
			return fmt.Errorf("net: kcp refused a %d-byte message (code %d)", len(p.sbuf), rc)
		}
		msg = msg[len(part):]
		if typ == msgFinal {
			return nil
		}
	}
}

// up starts the session with keys k, made of this node's offer and the
// peer's nonce peerNonce. The offer is used up: a new one replaces it, so
// that no two sessions ever share keys.
func (p *peer) up(k sessionKeys, peerNonce [16]byte) {
	now := time.Now()
	p.sess, p.sessLocal, p.sessPub, p.sessRemote = k, p.local.nonce, p.local.pub, peerNonce
	p.sendCtr, p.replay = 0, replayWindow{}
	p.renewOffer()
	p.state, p.wasUp, p.reason = stUp, true, nil
	kc := kcp.NewKCP(p.sess.sid, p.output)
	kc.NoDelay(1, kcpInterval, kcpResend, 1)
	kc.WndSize(kcpSndWnd, kcpRcvWnd)
	kc.SetMtu(p.kcpMTU)
	p.kcp, p.txHigh = kc, 0
	p.fecEnc, p.fecDec = nil, newFECDecoder()
	if f := p.t.cfg.FEC; f.enabled() {
		p.fecEnc = newFECEncoder(f.Data, f.Parity)
	}
	p.reasm, p.inReasm, p.discard = nil, false, false
	p.lastHeard, p.nextPing = now, now
	p.stats.Sessions++
	for _, m := range p.pending {
		if err := p.kcpSend(m); err != nil {
			p.t.log.Error("dropping a queued message", "peer", p.id, "err", err)
		}
	}
	p.pending, p.pendingSize = nil, 0
	kcpFlush(p.kcp, kcp.IKCP_FLUSH_FULL)
	p.flushDatagram()
	p.t.log.Debug("peer up", "peer", p.id, "addr", p.addr.String(), "session", p.sess.sid)
	p.t.emit(PeerEvent{Peer: p.id, Kind: PeerUp})
	p.t.notifyChanged()
	p.t.poke()
}

// down ends the session and forgets its keys. fresh also replaces this
// node's offer, and forgets the peer's: the handshake starts over. A caller
// that is about to start a session with the peer's offer passes false.
func (p *peer) down(reason error, fresh bool) {
	wasUp := p.state == stUp
	p.state, p.reason = stDown, reason
	if !p.wasUp {
		p.state = stConnecting
	}
	p.kcp, p.fecEnc, p.fecDec = nil, nil, nil
	p.reasm, p.inReasm = nil, false
	// Batched messages are lost with the session, as those queued in KCP.
	p.batch, p.batchN = p.batch[:0], 0
	p.dg, p.dgData, p.ackDeadline = p.dg[:0], false, time.Time{}
	p.sess = sessionKeys{}
	if fresh {
		p.renewOffer()
	}
	p.nextHello = time.Now()
	if wasUp && !p.t.closed.Load() {
		level := slog.LevelWarn
		if errors.Is(reason, ErrPeerClosed) {
			level = slog.LevelInfo // an orderly goodbye is not a warning
		}
		p.t.log.Log(context.Background(), level, "peer down", "peer", p.id, "addr", p.addr.String(), "reason", reason)
		p.t.emit(PeerEvent{Peer: p.id, Kind: PeerDown, Err: reason})
		p.t.notifyChanged()
	}
}

// refuse marks the handshake refused; the event and the log line come once
// per distinct reason.
func (p *peer) refuse(reason error) {
	if p.state == stUp {
		p.down(reason, true)
	}
	if p.state == stRefused && p.reason != nil && p.reason.Error() == reason.Error() {
		return
	}
	p.state, p.reason = stRefused, reason
	p.t.log.Warn("peer refused", "peer", p.id, "addr", p.addr.String(), "reason", reason)
	p.t.emit(PeerEvent{Peer: p.id, Kind: PeerRefused, Err: reason})
	p.t.notifyChanged()
}

func (p *peer) clearRefusal() {
	if p.state == stRefused {
		p.state, p.reason = stConnecting, nil
		if p.wasUp {
			p.state, p.reason = stDown, errors.New("net: handshake in progress")
		}
		p.t.notifyChanged()
	}
}

// authFailed records a datagram that failed authentication.
func (p *peer) authFailed(src srcAddr, hello bool) {
	p.stats.AuthFailures++
	p.t.warnOnce(fmt.Sprintf("auth|%d|%s", p.id, src), "dropping datagrams that fail authentication (is the cluster key the same on every node?)",
		"peer", p.id, "from", src.String(), "hello", hello)
	if hello && p.state != stUp {
		p.refuse(fmt.Errorf("%w: hello from %s claiming node %d", ErrAuth, src, p.id))
	}
}

func (p *peer) onHelloDatagram(h dgHeader, b []byte, src srcAddr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.PacketsIn++
	p.stats.BytesIn += uint64(len(b))
	pt, err := p.helloRecv.Open(b[headerLen:headerLen], h.nonce[:], b[headerLen:], b[:headerLen])
	if err != nil {
		p.authFailed(src, true)
		return
	}
	var m hello
	err = decodeFrames(pt, func(f frame) error {
		if f.typ != frameHello {
			return fmt.Errorf("%w: %v frame in a hello datagram", ErrMalformed, f.typ)
		}
		m, err = decodeHello(f.body)
		return err
	})
	if err == nil && m == (hello{}) {
		err = fmt.Errorf("%w: hello datagram without a hello", ErrMalformed)
	}
	if err != nil {
		p.badHello(err)
		return
	}
	p.onHello(m)
}

// onHello acts on an authenticated hello. The MAC proves that a holder of
// the cluster key made the hello, not when: it may be a replay of one
// captured earlier. So a hello can start a session, and end a live one,
// only if it echoes this node's current offer, which is never older than
// the live session and never the offer of a session that started. A hello
// that does not is answered with a challenge (a hello with this node's
// offer, echoing the hello's nonce) that a restarted peer can answer, and
// changes nothing in the live session.
func (p *peer) onHello(m hello) {
	t := p.t
	now := time.Now()
	p.heardAny = true
	if p.state != stUp {
		// Only the live session's datagrams, which no replay gets
		// through, keep a peer that is up alive.
		p.lastHeard = now
	}
	if m.geometry != t.cfg.Geometry && p.state == stUp {
		// Not fresh either (a peer with another geometry never answers
		// our offer): a replay of an older run must not end the live
		// session. A restarted peer is refused once the session ends.
		p.stats.Dropped++
		t.warnOnce(fmt.Sprintf("geometry|%d", p.id), "ignoring a hello with another geometry while the session is up",
			"peer", p.id, "geometry", m.geometry.String())
		return
	}
	if m.geometry != t.cfg.Geometry {
		p.refuse(fmt.Errorf("%w: node %d has %v, node %d (this node) has %v; start every node with the same geometry",
			ErrGeometryMismatch, p.id, m.geometry, t.cfg.ID, t.cfg.Geometry))
		return
	}
	p.clearRefusal()
	echoed := m.flags&helloEchoValid != 0
	switch {
	case echoed && m.echo == p.local.nonce:
		// Fresh: made after our offer, so by the peer, now.
		k, err := p.keysFor(m)
		if err != nil {
			p.badHello(err)
			return
		}
		if p.state == stUp {
			// The peer lost the session we have (it restarted, or
			// gave up on us) and answered our challenge.
			p.down(ErrPeerRestarted, false)
		}
		p.up(k, m.nonce)
		if m.flags&helloUp == 0 {
			p.sendHello() // the peer waits for us to confirm
		}
	case p.state == stUp && echoed && m.echo == p.sessLocal && m.nonce == p.sessRemote:
		// About the live session: the peer may not know yet that we
		// are up. A replay of such a hello costs at most a reply.
		if m.flags&helloUp == 0 && p.mayReply(now) {
			p.sendHello()
		}
	case p.state == stUp:
		// Not fresh. A peer that has a live session of its own has
		// nothing to ask of ours (and a replay of its hellos must cost
		// nothing); one without may have restarted: challenge it, and
		// keep the keys it would answer with, in case its session
		// datagrams arrive before its hello.
		if m.flags&(helloUp|helloLive) != 0 || !p.mayReply(now) {
			return
		}
		if err := p.takeOffer(m); err != nil {
			p.badHello(err)
			return
		}
		p.writeHello(hello{nonce: p.local.nonce, pub: p.local.pub, echo: m.nonce, flags: helloEchoValid | helloLive})
	default:
		// Handshake: answer the peer's offer with ours.
		if err := p.takeOffer(m); err != nil {
			p.badHello(err)
			return
		}
		p.sendHello()
	}
}

// mayReply reports whether a hello may be sent, as a reply, to a peer that
// is up: such replies are rate-limited, because what prompts them can be
// replayed at will.
func (p *peer) mayReply(now time.Time) bool {
	return now.Sub(p.lastHelloSent) >= p.t.cfg.HeartbeatInterval/4
}

// takeOffer records the peer's offer m and derives the keys of a session
// between it and this node's offer.
func (p *peer) takeOffer(m hello) error {
	if p.haveRemote && m.nonce == p.remote.nonce && m.pub == p.remote.pub {
		return nil
	}
	k, err := deriveSession(p.t.cfg.Key, p.t.cfg.ID, p.id, &p.local, m.nonce, m.pub)
	if err != nil {
		return err
	}
	p.remote, p.haveRemote = m, true
	p.pend, p.havePend = k, true
	return nil
}

// keysFor returns the keys of a session between this node's offer and the
// peer's offer m.
func (p *peer) keysFor(m hello) (sessionKeys, error) {
	if err := p.takeOffer(m); err != nil {
		return sessionKeys{}, err
	}
	return p.pend, nil
}

func (p *peer) badHello(err error) {
	p.stats.Dropped++
	p.t.warnOnce(fmt.Sprintf("badhello|%d", p.id), "dropping a malformed hello", "peer", p.id, "err", err)
}

// onSessionDatagram authenticates and processes a session datagram and
// returns the application messages it completed (in the reader's arena,
// see receive: they are valid until the next datagram is served).
func (p *peer) onSessionDatagram(h dgHeader, b []byte, src srcAddr) [][]byte {
	t := p.t
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.PacketsIn++
	p.stats.BytesIn += uint64(len(b))
	sid, ctr := h.session()
	live := p.state == stUp && sid == p.sess.sid
	if !live && (!p.havePend || sid != p.pend.sid) {
		// Another session's datagram: in flight from before a restart,
		// a replay, or the peer believes in a session we dropped or
		// have not started. A hello tells it.
		p.stats.Dropped++
		if p.state != stRefused && p.mayReply(time.Now()) {
			p.sendHello()
		}
		return nil
	}
	k := &p.sess
	if !live {
		k = &p.pend
	}
	p.nonce = h.nonce
	pt, err := k.recv.Open(b[headerLen:headerLen], p.nonce[:], b[headerLen:], b[:headerLen])
	if err != nil {
		p.authFailed(src, false)
		return nil
	}
	if !live {
		// Only the peer, having seen this node's current offer, can seal
		// with the keys of it and the peer's: the peer has started the
		// session and its hello saying so has not arrived (yet).
		if p.state == stUp {
			p.down(ErrPeerRestarted, false)
		}
		p.clearRefusal()
		p.up(p.pend, p.remote.nonce)
	}
	if !p.replay.check(ctr) {
		p.stats.Dropped++
		return nil
	}
	p.heardAny = true
	p.lastHeard = time.Now()
	rx := &t.rx
	if err := decodePayload(pt, p.sess.sid, rx, false); err != nil {
		p.malformed(err)
		return nil
	}
	// The handler has seen the messages of the previous datagram.
	msgs := t.rxMsgs[:0]
	t.rxArena = t.rxArena[:0]
	msgs = p.process(rx, kcp.IKCP_PACKET_REGULAR, msgs)
	if rx.isFEC && p.state == stUp {
		var rebuilt [][]byte
		if rx.parity {
			rebuilt, err = p.fecDec.addParity(rx.fec, rx.shard)
		} else {
			rebuilt, err = p.fecDec.addData(rx.fec, rx.shard)
		}
		if err != nil {
			p.malformed(err)
		}
		for _, shard := range rebuilt {
			if err := decodePayload(shard, p.sess.sid, &t.rxFEC, true); err != nil {
				p.malformed(err)
				continue
			}
			p.stats.FECRecovered++
			msgs = p.process(&t.rxFEC, kcp.IKCP_PACKET_FEC, msgs)
		}
	}
	t.rxMsgs = msgs
	return msgs
}

func (p *peer) malformed(err error) {
	p.stats.Dropped++
	p.t.warnOnce(fmt.Sprintf("malformed|%d", p.id), "dropping malformed frames from an authenticated peer (version mismatch or bug)",
		"peer", p.id, "err", err)
}

// process acts on a decoded payload and appends completed messages.
func (p *peer) process(rx *payload, pktType kcp.PacketType, msgs [][]byte) [][]byte {
	for _, ts := range rx.pings {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], ts)
		p.sendControl(framePong, b[:])
	}
	for _, ts := range rx.pongs {
		if d := time.Duration(uint64(p.t.since()) - ts); d >= 0 && d < time.Minute {
			p.rtt = d
		}
	}
	if p.kcp != nil && len(rx.kcp) > 0 {
		p.needACK = p.needACK || rx.push
		inFlight := p.kcp.WaitSnd()
		for _, seg := range rx.kcp {
			if rc := p.kcp.Input(seg, pktType, false); rc < 0 {
				p.malformed(fmt.Errorf("%w: kcp input code %d", ErrMalformed, rc))
			}
		}
		if p.kcp.WaitSnd() < inFlight {
			// lastHeard is the arrival of this datagram: a clock read
			// saved on the path of every reply.
			p.lastProgress, p.tlpBackoff = p.lastHeard, 0
		}
		// Input may have flushed ACKs into p.dg; they leave with the
		// handler's reply, or right after the handler (flushACKs).
		msgs = p.receive(msgs)
	}
	if rx.bye {
		p.down(ErrPeerClosed, true)
	}
	return msgs
}

// receive drains complete KCP messages and reassembles application
// messages. A message that fits in one KCP message is returned in the
// reader's arena (t.rxArena), valid until the next datagram is served; one
// reassembled from parts is returned in a buffer of its own.
func (p *peer) receive(msgs [][]byte) [][]byte {
	t := p.t
	for {
		n := p.kcp.PeekSize()
		if n < 0 {
			return msgs
		}
		// The message goes into the reader's arena, after the messages
		// this datagram completed before it, which wait there for the
		// handler. Growing the arena leaves those in the old array, which
		// nothing writes again. The capacity is cut so that a handler
		// appending to its message cannot write over the next one.
		off := len(t.rxArena)
		t.rxArena = slices.Grow(t.rxArena, n)[:off+n]
		buf := t.rxArena[off : off+n : off+n]
		if p.kcp.Recv(buf) != n {
			t.rxArena = t.rxArena[:off]
			p.malformed(fmt.Errorf("%w: kcp returned a short message", ErrMalformed))
			return msgs
		}
		typ, body, err := decodeMsgHeader(buf)
		if err != nil {
			t.rxArena = t.rxArena[:off]
			p.malformed(err)
			continue
		}
		final := typ != msgPart
		if !final || p.inReasm || p.discard {
			// Copied into p.reasm or dropped: the arena need not keep it.
			t.rxArena = t.rxArena[:off]
		}
		switch {
		case p.discard:
			p.discard = !final
		case typ == msgBatch && p.inReasm:
			// A sender never puts a batch between a message's parts.
			p.malformed(fmt.Errorf("%w: a batch inside a message's parts", ErrMalformed))
			p.reasm, p.inReasm = nil, false
		case typ == msgBatch:
			if msgs, err = splitBatch(body, msgs); err != nil {
				t.rxArena = t.rxArena[:off]
				p.malformed(err)
			}
		case final && !p.inReasm:
			msgs = append(msgs, body)
		case len(p.reasm)+len(body) > MaxMessageSize:
			p.malformed(fmt.Errorf("%w: message over %d bytes", ErrMalformed, MaxMessageSize))
			p.reasm, p.inReasm, p.discard = nil, false, !final
		default:
			p.reasm, p.inReasm = append(p.reasm, body...), true
			if final {
				msgs = append(msgs, p.reasm)
				p.reasm, p.inReasm = nil, false
			}
		}
	}
}

// flushACKs runs after the handler has seen a datagram's messages. It
// sends what KCP has to send, except a small datagram of nothing but ACKs:
// that one waits up to ackDelay for a message to ride on (the next request
// of a request/reply exchange, typically), so that an exchange costs one
// datagram each way, as raw UDP does. It reports whether ACKs wait.
func (p *peer) flushACKs(now time.Time) bool {
	if p.kcp == nil || (!p.needACK && len(p.dg) == 0) {
		return false
	}
	kcpFlush(p.kcp, kcp.IKCP_FLUSH_FULL)
	p.needACK = false
	if len(p.dg) == 0 {
		return false
	}
	if p.dgData || len(p.dg)-p.kcpOff-frameHeaderLen > maxDelayedACKs*kcpOverhead {
		p.flushDatagram()
		return false
	}
	if p.ackDeadline.IsZero() {
		p.ackDeadline = now.Add(ackDelay)
	}
	return true
}

// flushDelayedACKs sends ACKs whose delay has run out.
func (p *peer) flushDelayedACKs(now time.Time) {
	if !p.ackDeadline.IsZero() && !now.Before(p.ackDeadline) {
		p.flushDatagram()
	}
}

// tick runs the peer's timers and returns how long until it needs the
// next tick.
func (p *peer) tick(now time.Time) time.Duration {
	cfg := &p.t.cfg.Config
	if p.state != stUp {
		if !now.Before(p.nextHello) {
			p.sendHello()
			p.nextHello = now.Add(cfg.HeartbeatInterval)
		}
		return p.nextHello.Sub(now)
	}
	if silent := now.Sub(p.lastHeard); silent > cfg.DeadAfter {
		p.down(fmt.Errorf("%w: nothing heard for %v (DeadAfter %v)", ErrPeerSilent, silent.Round(time.Millisecond), cfg.DeadAfter), true)
		p.sendHello()
		p.nextHello = now.Add(cfg.HeartbeatInterval)
		return cfg.HeartbeatInterval
	}
	next := cfg.HeartbeatInterval
	// The reader sends delayed ACKs; this is the backstop for when a
	// handler holds it up.
	if !p.ackDeadline.IsZero() {
		if d := p.ackDeadline.Add(kcpInterval * time.Millisecond).Sub(now); d > 0 {
			next = min(next, d)
		} else {
			p.flushDatagram()
		}
	}
	if p.corked {
		// Messages wait for Uncork, which comes within the caller's
		// batch: a flush now would send them early, each batch's in
		// datagrams of their own. Retransmissions wait for it too.
		return min(next, kcpInterval*time.Millisecond)
	}
	if w := p.kcp.WaitSnd(); w > 0 && w <= tlpMaxSegs {
		due := p.lastProgress.Add(max(tlpMin, 4*p.rtt) << p.tlpBackoff)
		if !now.Before(due) {
			p.kcp.ResetRTO()
			kcpFlush(p.kcp, kcp.IKCP_FLUSH_FULL)
			p.flushDatagram()
			p.lastProgress, p.tlpBackoff = now, min(p.tlpBackoff+1, tlpMaxBackoff)
			due = now.Add(max(tlpMin, 4*p.rtt) << p.tlpBackoff)
		}
		next = min(next, due.Sub(now))
	}
	if p.kcp.WaitSnd() > 0 {
		// Retransmissions: flush returns the milliseconds until the next
		// segment times out (at most the KCP interval).
		if !now.Before(p.nextFlush) {
			ms := kcpFlush(p.kcp, kcp.IKCP_FLUSH_FULL)
			p.flushDatagram()
			p.nextFlush = now.Add(time.Duration(max(ms, 1)) * time.Millisecond)
		}
		next = min(next, p.nextFlush.Sub(now))
	}
	if p.fecEnc != nil && p.fecEnc.n > 0 {
		if due := p.fecEnc.opened.Add(fecDelay); !now.Before(due) {
			p.closeFECGroup()
		} else {
			next = min(next, due.Sub(now))
		}
	}
	if !now.Before(p.nextPing) {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(p.t.since()))
		p.sendControl(framePing, b[:])
		p.nextPing = now.Add(cfg.HeartbeatInterval)
	}
	next = min(next, p.nextPing.Sub(now), p.lastHeard.Add(cfg.DeadAfter).Sub(now)+time.Millisecond)
	return next
}

func (t *Transport) since() time.Duration { return time.Since(t.epoch) }

// output is KCP's output callback: it packs KCP's output into datagrams
// of up to dgLimit bytes.
func (p *peer) output(buf []byte, size int) {
	chunk := buf[:size]
	if len(p.dg) > 0 && len(p.dg)+size > p.dgLimit {
		p.flushDatagram()
	}
	if len(p.dg) == 0 {
		p.dg = p.dg[:p.kcpOff+frameHeaderLen]
	}
	p.dg = append(p.dg, chunk...)
	if p.scanSegments(chunk) {
		p.dgData = true
	}
}

// scanSegments counts retransmitted data segments in KCP output and
// reports whether it holds any data segment.
func (p *peer) scanSegments(b []byte) (data bool) {
	for len(b) >= kcpOverhead {
		n := int(binary.LittleEndian.Uint32(b[20:]))
		if b[4] == kcpCmdPush {
			data = true
			sn := binary.LittleEndian.Uint32(b[12:])
			if int32(sn-p.txHigh) < 0 {
				p.stats.Retransmits++
			} else {
				p.txHigh = sn + 1
				p.stats.SegmentsOut++
			}
		}
		if n > len(b)-kcpOverhead {
			return data
		}
		b = b[kcpOverhead+n:]
	}
	return data
}

// flushDatagram seals and sends the datagram KCP output has filled.
func (p *peer) flushDatagram() {
	if len(p.dg) == 0 {
		return
	}
	dg := p.dg
	putFrameHeader(dg[p.kcpOff:], frameKCP, len(dg)-p.kcpOff-frameHeaderLen)
	full := false
	if p.fecEnc != nil {
		putFrameHeader(dg[headerLen:], frameFECData, len(dg)-headerLen-frameHeaderLen)
		p.fecEnc.next().put(dg[headerLen+frameHeaderLen:])
		full = p.fecEnc.add(dg[p.kcpOff:], time.Now())
	}
	p.sealAndWrite(dg)
	p.dg = dg[:0]
	p.dgData, p.ackDeadline = false, time.Time{}
	if full {
		p.closeFECGroup()
	}
}

func (p *peer) closeFECGroup() {
	err := p.fecEnc.close(func(h fecHeader, shard []byte) {
		b := p.ctl[:headerLen]
		b = appendFrameHeader(b, frameFECParity, fecHeaderLen+len(shard))
		b = b[:len(b)+fecHeaderLen]
		h.put(b[len(b)-fecHeaderLen:])
		b = append(b, shard...)
		p.sealAndWrite(b)
		p.ctl = b[:0]
	})
	if err != nil {
		p.t.log.Error("fec", "peer", p.id, "err", err)
	}
}

// sendControl sends a one-frame session datagram.
func (p *peer) sendControl(typ frameType, body []byte) {
	if p.state != stUp {
		return
	}
	b := appendFrame(p.ctl[:headerLen], typ, body)
	p.sealAndWrite(b)
	p.ctl = b[:0]
}

// sealAndWrite fills in the header of a session datagram (b holds header
// space and plaintext), seals it in place and writes it.
func (p *peer) sealAndWrite(b []byte) {
	h := dgHeader{kind: kindSession, from: p.t.cfg.ID, to: p.id}
	binary.BigEndian.PutUint32(h.nonce[:4], p.sess.sid)
	binary.BigEndian.PutUint64(h.nonce[4:], p.sendCtr)
	p.sendCtr++
	h.put(b)
	p.nonce = h.nonce
	if sealHook != nil {
		sealHook(p.t.cfg.ID, p.id, p.sess.sendID, p.nonce)
	}
	out := p.sess.send.Seal(b[:headerLen], p.nonce[:], b[headerLen:], b[:headerLen])
	p.write(out)
}

// sendHello sends the hello of the peer's state: about the live session
// while up, else this node's offer and the peer's offer it answers.
func (p *peer) sendHello() {
	if p.state == stUp {
		p.writeHello(hello{nonce: p.sessLocal, pub: p.sessPub, echo: p.sessRemote, flags: helloEchoValid | helloUp})
		return
	}
	m := hello{nonce: p.local.nonce, pub: p.local.pub}
	if p.haveRemote {
		m.echo, m.flags = p.remote.nonce, helloEchoValid
	}
	p.writeHello(m)
}

// writeHello seals m, with this node's geometry, and sends it.
func (p *peer) writeHello(m hello) {
	m.geometry = p.t.cfg.Geometry
	h := dgHeader{kind: kindHello, from: p.t.cfg.ID, to: p.id}
	rand.Read(h.nonce[:])
	b := p.ctl[:headerLen]
	h.put(b)
	b = appendFrameHeader(b, frameHello, helloLen)
	b = m.append(b)
	out := p.helloSend.Seal(b[:headerLen], h.nonce[:], b[headerLen:], b[:headerLen])
	p.write(out)
	p.ctl = out[:0]
	p.hellosSent++
	p.lastHelloSent = time.Now()
}

func (p *peer) write(b []byte) {
	var err error
	if r := p.t.raw; r != nil {
		err = r.writeTo(b, p.ap)
	} else if u := p.t.udp; u != nil {
		_, err = u.WriteToUDPAddrPort(b, p.ap)
	} else {
		_, err = p.t.conn.WriteTo(b, p.addr)
	}
	if err != nil {
		if !p.t.closed.Load() {
			p.t.warnOnce(fmt.Sprintf("write|%d", p.id), "sending to a peer failed", "peer", p.id, "addr", p.addr.String(), "err", err)
		}
		return
	}
	p.stats.PacketsOut++
	p.stats.BytesOut += uint64(len(b))
}
