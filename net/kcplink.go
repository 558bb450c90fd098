package net

import (
	_ "unsafe" // for go:linkname

	kcp "github.com/xtaci/kcp-go/v5"
)

// kcpFlush is kcp-go's (*KCP).flush. The exported core offers Update, which
// flushes at most once per interval (10 ms at the least), so a message sent
// between two Updates would wait up to 10 ms; kcp-go's own sessions call
// flush directly on every Write. The transport needs the same to send a
// page reply at once, hence this link to the unexported method. The module
// version is pinned in go.sum; TestSendFlushesImmediately fails if a new
// version changes the behaviour, and the link fails if the method goes.
//
//go:linkname kcpFlush github.com/xtaci/kcp-go/v5.(*KCP).flush
func kcpFlush(k *kcp.KCP, ft kcp.FlushType) uint32
