// Package dsm is what a Go program links to share memory with the Go
// programs of other nodes.
//
// A program attaches to its node's daemon and gets a region of memory that
// every node of the cluster maps at the same virtual address. It reads and
// writes the region with ordinary loads, stores and sync/atomic operations;
// the node daemon traps its page faults with userfaultfd and keeps every page
// sequentially consistent across the cluster, except the pages of
// allocations made ReleaseConsistent, which several nodes may write at once
// and which meet at Unlock, Lock and Barrier.
//
//	r, err := dsm.Attach(ctx, dsm.Options{}) // Options.Socket; empty means $DSM_SOCKET
//	if err != nil { ... }
//	defer r.Close()
//	off, err := r.Alloc("hits", 8, 8)      // the same offset on every node
//	atomic.AddUint64((*uint64)(r.Ptr(off)), 1)
//	n, err := dsm.New[Node](r)              // the shared heap; dsm.Free(r, n)
//
// The fault server runs in the daemon, never in the program: a Go program
// that served its own faults could deadlock its own runtime (see DESIGN.md).
// If the daemon dies, the program can no longer be kept coherent: the region
// is made inaccessible at once and the program exits with a message (or
// Options.OnLost is called).
package dsm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/internal/layout"
	"github.com/dsmrt/dsm/uffd"
)

// EnvSocket is the environment variable that names the daemon's socket when
// Options.Socket is empty. dsmnode run sets it for every instance.
const EnvSocket = "DSM_SOCKET"

// Options configure Attach.
type Options struct {
	// Socket is the daemon's unix socket; empty means $DSM_SOCKET.
	Socket string
	// OnLost is called, after the region was made inaccessible, when the
	// connection to the daemon is lost (ErrLost) or the daemon stops the
	// program because a fault cannot complete (ErrStopped). Nil means: print
	// the reason to stderr and exit with status 3.
	OnLost func(error)
}

// ErrLost reports that the node daemon went away.
var ErrLost = errors.New("dsm: lost the node daemon: the shared region is no longer coherent")

// ErrStopped reports that the node daemon stopped this program: a fault it
// needed cannot complete (the node holding the page is down).
var ErrStopped = errors.New("dsm: the node stopped this program")

// Region is an attached shared region.
type Region struct {
	geo  ctl.Geometry
	mem  []byte
	u    *uffd.FD
	conn *net.UnixConn
	opts Options

	mu      sync.Mutex
	nextID  uint64
	calls   map[uint64]chan ctl.Reply
	closing bool
	lost    error
	done    chan struct{}

	lostOnce    sync.Once
	lockClients uint64
	barriers    map[string]*barrierState
	cached      map[uint64]*Mutex // lock client -> the Mutex that may keep its lock
	lockMsgs    atomic.Uint64     // lock messages sent to the daemon

	// Reply connections (replyconn.go), under mu: join is the secret
	// that joins them ("" when the daemon refused one), replySlots the
	// slots taken, replyIdle the connections no call waits on.
	join       string
	replySlots [ctl.MaxSlots]bool
	replyIdle  []*replyConn
	stream     *net.UnixConn // the lock stream, or nil: lock messages go on conn

	hp heapState // the shared heap, as this program sees it
}

// Attach connects to the node daemon, maps the region at its base address
// and hands the daemon a userfaultfd for it. The context bounds the
// handshake.
func Attach(ctx context.Context, opts Options) (*Region, error) {
	if opts.Socket == "" {
		opts.Socket = os.Getenv(EnvSocket)
	}
	c, err := ctl.Dial(opts.Socket)
	if err != nil {
		return nil, fmt.Errorf("dsm attach: %w", err)
	}
	r, err := attach(ctx, c, opts)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("dsm attach to %s: %w", opts.Socket, err)
	}
	return r, nil
}

func attach(ctx context.Context, c *net.UnixConn, opts Options) (*Region, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	defer stop()
	req := ctl.Request{Op: ctl.OpAttach, Version: ctl.Version, PID: os.Getpid()}
	if dl, ok := ctx.Deadline(); ok {
		req.WaitMS = max(1, time.Until(dl).Milliseconds()-100)
	}
	if err := ctl.Write(c, req); err != nil {
		return nil, err
	}
	buf := make([]byte, 64<<10)
	var rep ctl.Reply
	fds, err := ctl.Read(c, buf, &rep)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	if rep.Error != "" {
		closeFDs(fds)
		return nil, errors.New(rep.Error)
	}
	if rep.Geometry == nil || len(fds) != 1 {
		closeFDs(fds)
		return nil, fmt.Errorf("daemon sent no region (geometry %v, %d descriptors): %w", rep.Geometry, len(fds), ctl.ErrNotDaemon)
	}
	geo := *rep.Geometry
	if geo.PageSize != os.Getpagesize() {
		closeFDs(fds)
		return nil, fmt.Errorf("daemon's page size %d differs from this machine's %d", geo.PageSize, os.Getpagesize())
	}
	mem, err := uffd.MapShared(fds[0], uintptr(geo.Base), int(geo.Size), true)
	unix.Close(fds[0])
	if err != nil {
		return nil, fmt.Errorf("map the region: %w", err)
	}
	u, err := uffd.Open()
	if err != nil {
		uffd.Unmap(mem)
		return nil, err
	}
	fail := func(err error) (*Region, error) {
		u.Close()
		uffd.Unmap(mem)
		return nil, err
	}
	if _, err := u.API(uffd.RequiredFeatures); err != nil {
		return fail(fmt.Errorf("userfaultfd handshake: %w", err))
	}
	if _, err := u.Register(uintptr(geo.Base), uintptr(geo.Size), uffd.RegisterMissing|uffd.RegisterWP); err != nil {
		return fail(fmt.Errorf("register the region with userfaultfd: %w", err))
	}
	if err := ctl.Write(c, ctl.Request{Op: ctl.OpUffd, UserMod: u.UserModeOnly()}, u.Fd()); err != nil {
		return fail(fmt.Errorf("hand the userfaultfd to the daemon: %w", err))
	}
	rep = ctl.Reply{}
	if _, err := ctl.Read(c, buf, &rep); err != nil {
		return fail(ctxErr(ctx, err))
	}
	if rep.Error != "" {
		return fail(errors.New(rep.Error))
	}
	join := rep.Join
	c.SetDeadline(noDeadline)
	// The program keeps its own reference to the userfaultfd: if the
	// daemon dies, faults stay blocked (instead of silently reading zeros)
	// until the watcher has made the region inaccessible.
	r := &Region{geo: geo, mem: mem, u: u, conn: c, opts: opts, calls: map[uint64]chan ctl.Reply{}, done: make(chan struct{}), join: join}
	go r.watch()
	if join != "" {
		r.joinStream(ctx)
	}
	return r, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// watch reads the daemon's replies; EOF while attached means the daemon died.
func (r *Region) watch() {
	defer close(r.done)
	buf := make([]byte, ctl.MaxMessage)
	for {
		var rep ctl.Reply
		fds, err := ctl.Read(r.conn, buf, &rep)
		closeFDs(fds)
		if err != nil {
			r.mu.Lock()
			closing := r.closing
			r.mu.Unlock()
			if !closing {
				r.onLost(err)
			}
			r.failCalls()
			return
		}
		if rep.Bin != nil {
			m, err := ctl.ParseLockMsg(rep.Bin)
			if err != nil {
				continue // nobody to tell: the caller, if any, times out
			}
			if m.Op != ctl.LockOpReply {
				// A recall or loss the daemon sent on its own.
				r.lockEvent(m)
				continue
			}
			rep.ID = m.ID
		}
		if rep.ID == 0 && rep.Error != "" {
			// The daemon says this program cannot go on (a fault it
			// cannot complete): stop as loudly as when the daemon dies.
			r.lostOnce.Do(func() { r.loseRegion(ErrStopped, errors.New(rep.Error)) })
			continue
		}
		r.mu.Lock()
		ch := r.calls[rep.ID]
		delete(r.calls, rep.ID)
		r.mu.Unlock()
		if ch != nil {
			ch <- rep
		}
	}
}

func (r *Region) onLost(cause error) {
	r.lostOnce.Do(func() { r.loseRegion(ErrLost, cause) })
}

func (r *Region) loseRegion(kind, cause error) {
	// First make the region inaccessible, then let blocked faults go: they
	// retry and hit PROT_NONE instead of reading memory nobody keeps.
	unix.Mprotect(r.mem, unix.PROT_NONE)
	r.u.Close()
	err := fmt.Errorf("%w (node %d, socket %s: %v)", kind, r.geo.Node, r.opts.Socket, cause)
	r.mu.Lock()
	r.lost = err
	r.mu.Unlock()
	if r.opts.OnLost != nil {
		r.opts.OnLost(err)
		return
	}
	fmt.Fprintf(os.Stderr, "%v\nexiting: a program must not go on with memory that is no longer kept coherent\n", err)
	os.Exit(3)
}

func (r *Region) failCalls() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, ch := range r.calls {
		close(ch)
		delete(r.calls, id)
	}
}

// call sends a request to the daemon and waits for its reply.
func (r *Region) call(ctx context.Context, req ctl.Request, body any) error {
	r.mu.Lock()
	if r.lost != nil {
		r.mu.Unlock()
		return r.lost
	}
	if r.closing {
		r.mu.Unlock()
		return errors.New("dsm: region closed")
	}
	r.nextID++
	req.ID = r.nextID
	ch := make(chan ctl.Reply, 1)
	r.calls[req.ID] = ch
	err := ctl.Write(r.conn, req)
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("dsm: send %s: %w", req.Op, err)
	}
	select {
	case rep, ok := <-ch:
		if !ok {
			return ErrLost
		}
		if rep.Error != "" {
			return errors.New(rep.Error)
		}
		if body != nil && len(rep.Body) > 0 {
			return json.Unmarshal(rep.Body, body)
		}
		return nil
	case <-ctx.Done():
		r.mu.Lock()
		delete(r.calls, req.ID)
		r.mu.Unlock()
		return ctx.Err()
	}
}

// Bytes returns the region. It is mapped at Base on every node.
func (r *Region) Bytes() []byte { return r.mem }

// Base is the region's virtual address, the same on every node: a pointer
// into the region stored by one node is valid on every other.
func (r *Region) Base() uintptr { return uintptr(r.geo.Base) }

// Size is the region's size in bytes.
func (r *Region) Size() int { return len(r.mem) }

// PageSize is the unit of coherence.
func (r *Region) PageSize() int { return r.geo.PageSize }

// NodeID is this node's id, 0 .. Nodes()-1.
func (r *Region) NodeID() int { return r.geo.Node }

// Nodes is the number of nodes in the cluster.
func (r *Region) Nodes() int { return r.geo.Nodes }

// Alloc returns the offset of the allocation called name, size bytes
// aligned to align (a power of two up to 64 KiB; 0 means 8), the same on
// every node whatever the order of the calls: the first node of the cluster
// to allocate a name fixes its offset, size and alignment, and a node that
// asks for the same name with another size or alignment gets an error
// naming both. Names allocated one after the other are placed one after the
// other, as the fields of a struct would be. The name is recorded by the
// daemon so that the layout analyzer can name the variable.
//
// A named allocation lives as long as the cluster: a program that runs
// again on the same cluster finds its names, and their contents, where it
// left them. For memory that is freed, see New, MakeSlice and Free.
//
// Of the options, ReleaseConsistent, BlockHomes and BlockHomesOf apply
// (alignment is an argument; the name is the name).
func (r *Region) Alloc(name string, size, align int, opts ...AllocOption) (int, error) {
	return r.alloc(context.Background(), name, size, align, nil, opts)
}

func (r *Region) alloc(ctx context.Context, name string, size, align int, fields []ctl.Field, opts []AllocOption) (int, error) {
	var cfg allocConfig
	for _, o := range opts {
		o.applyAlloc(&cfg)
	}
	if align == 0 {
		align = 8
	}
	if size <= 0 || align < 0 || align&(align-1) != 0 {
		return 0, fmt.Errorf("dsm: alloc %q: size %d must be > 0 and align %d a power of two", name, size, align)
	}
	if name == "" {
		return 0, errors.New("dsm: alloc needs a name (the analyzer reports variables by name)")
	}
	if cfg.blocks && !cfg.rc {
		return 0, fmt.Errorf("dsm: alloc %q: BlockHomes applies to release-consistent memory only (add dsm.ReleaseConsistent)", name)
	}
	if ps := uint64(r.PageSize()); cfg.unit%ps != 0 {
		return 0, fmt.Errorf("dsm: alloc %q: BlockHomesOf(%d): the unit must be a multiple of the page size (%d)", name, cfg.unit, ps)
	}
	off, err := r.allocNamed(ctx, name, uint64(size), uint64(align), cfg.rc, cfg.blocks)
	if err != nil {
		return 0, fmt.Errorf("dsm: alloc %q: %w", name, err)
	}
	if cfg.blocks {
		// Every node that allocates the name asks: the daemons must all
		// know before any of this node's program touches the pages.
		if err := r.homeBlocks(ctx, off, uint64(size), cfg.unit); err != nil {
			return 0, fmt.Errorf("dsm: alloc %q: %w", name, err)
		}
	}
	if err := r.register(ctx, name, off, uint64(size), fields); err != nil {
		return 0, fmt.Errorf("dsm: alloc %q: %w", name, err)
	}
	return int(off), nil
}

// register tells the daemon's analyzer the name of [off, off+size) and of
// its fields (offsets relative to off).
func (r *Region) register(ctx context.Context, name string, off, size uint64, fields []ctl.Field) error {
	for i := range fields {
		fields[i].Offset += off
	}
	return r.call(ctx, ctl.Request{Op: ctl.OpAlloc, Name: name, Offset: off, Size: size, Fields: fields}, nil)
}

// Release makes this node's writes to release-consistent memory (see
// ReleaseConsistent) visible to any node that acquires afterwards: it
// returns when every page's home has them. Mutex.Unlock (when the lock
// leaves the node) and Barrier release by themselves.
func (r *Region) Release(ctx context.Context) error {
	if err := r.call(ctx, ctl.Request{Op: ctl.OpRelease}, nil); err != nil {
		return fmt.Errorf("dsm: release: %w", err)
	}
	return nil
}

// Acquire makes every release that any node finished before it visible to
// this node's reads of release-consistent memory: after another node's
// Release and a signal through sequentially consistent memory (an atomic
// flag), Acquire and then read. Mutex.Lock and Barrier acquire by
// themselves.
func (r *Region) Acquire(ctx context.Context) error {
	if err := r.call(ctx, ctl.Request{Op: ctl.OpAcquire}, nil); err != nil {
		return fmt.Errorf("dsm: acquire: %w", err)
	}
	return nil
}

// Intent says what a program will do with memory it prefetches.
type Intent uint8

const (
	// ForRead fetches read copies: the pages another node owns stay
	// writable nowhere until someone writes them.
	ForRead Intent = iota
	// ForWrite takes ownership, as a write fault would: the other nodes'
	// copies are invalidated.
	ForWrite
)

// Hint is one range of a prefetch: the bytes [Off, Off+Len) of the
// region, and what the program will do with them.
type Hint struct {
	Off, Len int
	Intent   Intent
}

// maxHints is how many hints travel in one message to the daemon.
const maxHints = 256

// Prefetch asks this node's daemon to fetch the pages holding the bytes
// of each hint ahead of the program's accesses, and returns at once: the
// daemon asks for every page that is not already here with the access the
// hint's intent wants, as a fault on it would, and the program goes on
// computing meanwhile. An access to a page still on its way faults and
// waits for the same transfer, so a prefetch never makes an access wait
// longer than it would have. It is a hint: nothing says when the pages
// come, or that they are still here when the program gets to them
// (another node may take them back), and memory stays coherent either way.
//
// Prefetch pays when a program knows which remote pages it needs next and
// has other work to do meanwhile: a stencil asks for its halo rows (and
// for ownership of its edge rows) after a barrier and sweeps its interior
// while they come. The hints of one call reach the daemon in one message
// (up to 256 of them), and the requests they make leave together, sharing
// datagrams: give them in one call. A wrong ForWrite hint costs what a
// needless write fault costs: the page moves here and back.
//
// In release-consistent memory a hint asks for a copy of each page the
// node has none of (one an acquire dropped, say), and ForWrite also makes
// a copy writable ahead of the write, which then takes no write-protect
// fault (the page joins what the next release diffs).
// A hint outside the region or with an unknown intent is an error, and
// then no hint of the call is sent.
func (r *Region) Prefetch(hints ...Hint) error {
	for _, h := range hints {
		if h.Off < 0 || h.Len < 0 || h.Off > len(r.mem) || h.Len > len(r.mem)-h.Off {
			return fmt.Errorf("dsm: prefetch of %d bytes at offset %d: outside the region of %d bytes", h.Len, h.Off, len(r.mem))
		}
		if h.Intent != ForRead && h.Intent != ForWrite {
			return fmt.Errorf("dsm: prefetch intent %d: use dsm.ForRead or dsm.ForWrite", h.Intent)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(hints) > 0 {
		k := min(len(hints), maxHints)
		var buf [maxHints * ctl.PrefetchHintLen]byte
		b := buf[:0]
		for _, h := range hints[:k] {
			if h.Len > 0 {
				b = ctl.AppendPrefetchHint(b, uint64(h.Off), uint64(h.Len), h.Intent == ForWrite)
			}
		}
		hints = hints[k:]
		if len(b) == 0 {
			continue
		}
		m := ctl.LockMsg{Op: ctl.LockOpPrefetch, Text: string(b)}
		if err := r.sendLockLocked(&m); err != nil {
			return fmt.Errorf("dsm: prefetch: %w", err)
		}
	}
	return nil
}

// Ptr returns a pointer to the byte at offset off of the region.
func (r *Region) Ptr(off int) unsafe.Pointer {
	return unsafe.Pointer(&r.mem[off])
}

// Close detaches from the daemon and unmaps the region. Pointers into the
// region must not be used after it.
func (r *Region) Close() error {
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return nil
	}
	r.closing = true
	lost := r.lost
	r.closeReplies()
	if r.stream != nil {
		r.stream.Close()
	}
	r.mu.Unlock()
	err := uffd.Unmap(r.mem)
	r.conn.Close()
	<-r.done
	if lost == nil {
		r.u.Close()
	}
	return err
}

// NodeFromEnv returns DSM_NODE_ID and DSM_NODES as dsmnode run sets them,
// for programs that want them before attaching.
func NodeFromEnv() (id, nodes int, err error) {
	id, err1 := strconv.Atoi(os.Getenv("DSM_NODE_ID"))
	nodes, err2 := strconv.Atoi(os.Getenv("DSM_NODES"))
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("DSM_NODE_ID / DSM_NODES not set (start the program with dsmnode run): %w", err)
	}
	return id, nodes, nil
}

var (
	aLongTimeAgo = time.Unix(1, 0)
	noDeadline   = time.Time{}
)

// AllocStruct is Alloc for a value of v's type, named field by field so
// that the analyzer's reports name fields (Stats.Hits, Stats.Misses) rather
// than offsets. v is a struct, an array of structs (each element's fields
// are named: Stats[1].Hits) or a pointer to either; align 0 means the
// type's own alignment.
func (r *Region) AllocStruct(name string, v any, align int, opts ...AllocOption) (int, error) {
	vars, err := layout.Vars(name, 0, v)
	if err != nil {
		return 0, fmt.Errorf("dsm: alloc %q: %w", name, err)
	}
	t := reflect.TypeOf(v)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if align == 0 {
		align = t.Align()
	}
	fields := make([]ctl.Field, len(vars))
	for i, v := range vars {
		fields[i] = ctl.Field{Name: v.Name, Offset: v.Offset, Size: v.Size}
	}
	return r.alloc(context.Background(), name, int(t.Size()), align, fields, opts)
}
