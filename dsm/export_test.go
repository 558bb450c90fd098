package dsm

// LockMessages is how many lock-manager messages r sent its daemon.
func LockMessages(r *Region) uint64 { return r.lockMsgs.Load() }

// ReplySlots is how many reply connections r has joined, and how many of
// them no call waits on.
func ReplySlots(r *Region) (open, idle int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, used := range r.replySlots {
		if used {
			open++
		}
	}
	return open, len(r.replyIdle)
}

// JoinSecret is the secret r's attach reply carried.
func JoinSecret(r *Region) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.join
}

// HasLockStream reports whether r sends its lock messages on a lock
// stream.
func HasLockStream(r *Region) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stream != nil
}
