package lockmgr

import (
	"errors"
	"fmt"
)

// Errors reported in Refused and Lost events and returned by methods. Check
// them with errors.Is: the engine wraps them with the name of the lock.
var (
	// ErrCanceled: the request was withdrawn with Cancel. When the grant won
	// the race the lock has been released again.
	ErrCanceled = errors.New("lockmgr: request canceled")
	// ErrHomeDown: the home of the lock or barrier was declared down with
	// PeerDown. Locks homed on a dead node are unavailable until it returns;
	// retry later.
	ErrHomeDown = errors.New("lockmgr: home node is down")
	// ErrLeaseExpired: the holder could not renew its lease in time (its
	// node was cut off from the home, or the home restarted), so the home
	// may already have granted the lock to someone else. Stop using the
	// protected resource and lock again.
	ErrLeaseExpired = errors.New("lockmgr: lease expired")
	// ErrBusy: the client already holds or waits for this lock or barrier;
	// a client has at most one request per name at a time (locks are not
	// reentrant).
	ErrBusy = errors.New("lockmgr: client already has a request for this name")
	// ErrNotHeld: Unlock or Resign for a lock the client does not hold.
	ErrNotHeld = errors.New("lockmgr: lock not held")
	// ErrInvalid: a bad argument (empty or too long name, zero or repeated
	// request id, bad mode or count); the error says which.
	ErrInvalid = errors.New("lockmgr: invalid request")
	// ErrNotHome: the node the request went to is not the home of the name;
	// the nodes disagree about Config.Home.
	ErrNotHome = errors.New("lockmgr: not the home of this name")
	// ErrBarrierLost: the home of the barrier restarted and lost the
	// generation the client last completed; the group must start over with
	// a new barrier name.
	ErrBarrierLost = errors.New("lockmgr: barrier state lost with its home")
	// ErrCountMismatch: Barrier was called with a count different from the
	// one of the participants already waiting in the current generation.
	ErrCountMismatch = errors.New("lockmgr: barrier count differs from the waiting participants'")
	// ErrTokensExhausted: the home granted 2^32-1 tokens in this epoch;
	// restart its daemon with a higher Config.Epoch.
	ErrTokensExhausted = errors.New("lockmgr: fencing tokens exhausted for this epoch")
	// ErrPayloadTooLarge: a release or barrier arrival carried a payload
	// larger than MaxPayload, or a barrier generation's payloads would
	// exceed MaxBarrierPayload together.
	ErrPayloadTooLarge = errors.New("lockmgr: payload too large")
	// ErrBadMessage: a message could not be decoded or is not acceptable.
	ErrBadMessage = errors.New("lockmgr: bad message")
	// ErrConfig: New was given an unusable Config; the error says what to
	// change.
	ErrConfig = errors.New("lockmgr: bad config")
)

// Code is an error as it travels in a Message.
type Code uint8

// The codes. CodeOK means no error.
const (
	CodeOK Code = iota
	CodeLeaseExpired
	CodeNotHome
	CodeBarrierLost
	CodeCountMismatch
	CodeTokensExhausted
	CodeInvalid
	CodePayloadTooLarge
	codeLimit // first invalid code
)

var codeErrs = [...]error{
	CodeOK:              nil,
	CodeLeaseExpired:    ErrLeaseExpired,
	CodeNotHome:         ErrNotHome,
	CodeBarrierLost:     ErrBarrierLost,
	CodeCountMismatch:   ErrCountMismatch,
	CodeTokensExhausted: ErrTokensExhausted,
	CodeInvalid:         ErrInvalid,
	CodePayloadTooLarge: ErrPayloadTooLarge,
}

// Err returns the error the code stands for (nil for CodeOK).
func (c Code) Err() error {
	if c < codeLimit {
		return codeErrs[c]
	}
	return fmt.Errorf("%w: unknown code %d", ErrBadMessage, c)
}

// wrap names the lock or barrier in an error.
func wrap(sp Space, name string, err error) error {
	return fmt.Errorf("%s %q: %w", sp, name, err)
}
