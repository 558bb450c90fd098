package dsm

// LockMessages is how many lock-manager messages r sent its daemon.
func LockMessages(r *Region) uint64 { return r.lockMsgs.Load() }
