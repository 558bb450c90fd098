package uffdtest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/uffd"
)

// AgentEnv carries the agent's configuration to the child process; its
// presence makes AgentMain run the agent.
const AgentEnv = "DSM_UFFDTEST_AGENT"

// DefaultBase is where the agent maps its region unless told otherwise (the
// base address DESIGN.md uses).
const DefaultBase uintptr = 0x600000000000

// Timeout bounds every wait of the parent side: a reply, a fault message, the
// handshake. It only matters when a test is failing.
var Timeout = 20 * time.Second

// AgentOptions configures StartAgent. The zero value is a root-run child that
// opens its userfaultfd with uffd.Open and registers 8 pages at DefaultBase
// for MISSING|WP faults with uffd.RequiredFeatures|uffd.FeatureThreadID.
type AgentOptions struct {
	Pages    int               // size of the region in pages (default 8)
	Base     uintptr           // fixed address of the region (default DefaultBase)
	Method   uffd.Method       // how the child creates its userfaultfd (0: uffd.Open)
	Features uffd.Features     // features the child requests in API (0: default)
	Mode     uffd.RegisterMode // registration mode (0: MISSING|WP)
	// Env is added to the child's environment, e.g.
	// "GODEBUG=asyncpreemptoff=1": by default the Go runtime of the child
	// interrupts a thread blocked in a fault with SIGURG about every 10 ms,
	// and the interrupted access is retried (re-faulting if the page is
	// still missing or protected).
	Env []string
	// Credential, if set, runs the child as another user. The test binary
	// is then copied to a directory that user can read.
	Credential *syscall.Credential
}

type agentConfig struct {
	Pages    int
	Base     uintptr
	Method   uffd.Method
	Features uffd.Features
	Mode     uffd.RegisterMode
}

type agentHello struct {
	Err          string
	PID          int
	UserModeOnly bool
	Method       uffd.Method
	Features     uffd.Features // offered by the kernel
	Ioctls       uint64        // range ioctls of the registration
}

// Agent is the parent's handle on a child process that maps a memfd at a
// fixed address, registers it with its own userfaultfd, hands the descriptor
// over, and then reads and writes its region on command. The test plays the
// daemon: it waits for the child's faults with UFFD and resolves them.
//
// Commands are asynchronous: Read, Write and KernelRead send a command and
// return; the child may fault and block; Result collects the reply. Only one
// command may be outstanding.
type Agent struct {
	t testing.TB

	UFFD         *uffd.FD      // the child's userfaultfd, received over SCM_RIGHTS
	Memfd        int           // the memfd behind the region (the parent's descriptor)
	Base         uintptr       // address of the region in the child
	Pages        int           // size of the region in pages
	PID          int           // the child's process id
	UserModeOnly bool          // the child's descriptor is user-mode-only
	Method       uffd.Method   // how the child created it
	Features     uffd.Features // features the kernel offers
	Ioctls       uint64        // range ioctls the child's registration allows

	cmd     *exec.Cmd
	conn    *net.UnixConn
	rd      *bufio.Reader
	exited  chan struct{}
	waitErr error
	pending bool
}

// StartAgent starts an agent child for t and waits until it has registered
// its region and sent its userfaultfd. The child is killed when t ends. The
// test binary must have a test named TestHelperProcess that calls
// AgentMain.
func StartAgent(t testing.TB, opts AgentOptions) *Agent {
	t.Helper()
	cfg := agentConfig{Pages: opts.Pages, Base: opts.Base, Method: opts.Method, Features: opts.Features, Mode: opts.Mode}
	if cfg.Pages <= 0 {
		cfg.Pages = 8
	}
	if cfg.Base == 0 {
		cfg.Base = DefaultBase
	}
	if cfg.Features == 0 {
		cfg.Features = uffd.RequiredFeatures | uffd.FeatureThreadID
	}
	if cfg.Mode == 0 {
		cfg.Mode = uffd.RegisterMissing | uffd.RegisterWP
	}
	a := &Agent{t: t, Memfd: -1, Base: cfg.Base, Pages: cfg.Pages, exited: make(chan struct{})}
	t.Cleanup(a.cleanup)

	var err error
	a.Memfd, err = uffd.Memfd("uffdtest-agent", int64(cfg.Pages*uffd.PageSize))
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if opts.Credential != nil {
		exe = copyForOthers(t, exe)
	}
	js, _ := json.Marshal(cfg)
	a.cmd = exec.Command(exe, "-test.run=^TestHelperProcess$", "-test.count=1")
	// Enough Ps for several threads to be blocked in faults at once.
	a.cmd.Env = append(os.Environ(), AgentEnv+"="+string(js), "GOMAXPROCS=8")
	a.cmd.Env = append(a.cmd.Env, opts.Env...)
	a.cmd.Stderr = os.Stderr
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: opts.Credential}

	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(pair[0]), "agent-parent"), os.NewFile(uintptr(pair[1]), "agent-child")
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		t.Fatal(err)
	}
	a.conn = fc.(*net.UnixConn)
	dup, err := unix.FcntlInt(uintptr(a.Memfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		theirs.Close()
		t.Fatal(err)
	}
	mf := os.NewFile(uintptr(dup), "memfd")
	a.cmd.ExtraFiles = []*os.File{mf, theirs}
	err = a.cmd.Start()
	mf.Close()
	theirs.Close()
	if err != nil {
		t.Fatalf("start agent: %v", err)
	}
	go func() {
		a.waitErr = a.cmd.Wait()
		close(a.exited)
	}()

	a.conn.SetReadDeadline(time.Now().Add(Timeout))
	buf := make([]byte, 4096)
	n, fds, err := uffd.RecvFDs(a.conn, buf, 1)
	if err != nil {
		t.Fatalf("agent handshake: %v%s", err, a.exitStatus())
	}
	if len(fds) == 1 {
		a.UFFD = uffd.NewFD(fds[0])
	} else if len(fds) > 1 {
		t.Fatalf("agent handshake: %d descriptors, want 1", len(fds))
	}
	data := buf[:n]
	for !bytes.Contains(data, []byte{'\n'}) {
		m, err := a.conn.Read(buf)
		if err != nil {
			t.Fatalf("agent handshake: %v%s", err, a.exitStatus())
		}
		data = append(data, buf[:m]...)
	}
	a.conn.SetReadDeadline(time.Time{})
	a.rd = bufio.NewReader(a.conn)
	var hello agentHello
	if err := json.Unmarshal(bytes.TrimSpace(data), &hello); err != nil {
		t.Fatalf("agent handshake %q: %v", data, err)
	}
	if hello.Err != "" {
		t.Fatalf("agent failed to set up: %s", hello.Err)
	}
	if a.UFFD == nil {
		t.Fatal("agent handshake carried no userfaultfd")
	}
	a.UFFD = uffd.NewFDMode(a.UFFD.Fd(), hello.UserModeOnly)
	a.PID, a.UserModeOnly, a.Method = hello.PID, hello.UserModeOnly, hello.Method
	a.Features, a.Ioctls = hello.Features, hello.Ioctls
	return a
}

// copyForOthers copies the binary exe into a fresh world-readable directory
// so that a child running as another user can execute it.
func copyForOthers(t testing.TB, exe string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "uffdtest-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := filepath.Join(dir, filepath.Base(exe))
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, src); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

func (a *Agent) exitStatus() string {
	select {
	case <-a.exited:
		return fmt.Sprintf(" (the agent exited: %v)", a.waitErr)
	default:
		return ""
	}
}

// Kill kills the child and waits for it. Safe to call more than once.
func (a *Agent) Kill() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	a.cmd.Process.Kill()
	<-a.exited
}

func (a *Agent) cleanup() {
	a.Kill()
	if a.conn != nil {
		a.conn.Close()
	}
	if a.UFFD != nil && a.UFFD.Fd() >= 0 {
		a.UFFD.Close()
	}
	if a.Memfd >= 0 {
		unix.Close(a.Memfd)
		a.Memfd = -1
	}
}

// PageAddr returns the address of page i of the region, in the child.
func (a *Agent) PageAddr(i int) uintptr { return a.Base + uintptr(i*uffd.PageSize) }

// Page returns page i as the memfd holds it, read with pread (a hole reads
// as zeros and stays a hole).
func (a *Agent) Page(i int) []byte {
	a.t.Helper()
	b := make([]byte, uffd.PageSize)
	if _, err := unix.Pread(a.Memfd, b, int64(i*uffd.PageSize)); err != nil {
		a.t.Fatalf("pread page %d: %v", i, err)
	}
	return b
}

func (a *Agent) send(format string, args ...any) {
	a.t.Helper()
	if a.pending {
		a.t.Fatal("agent: a command is already outstanding; call Result first")
	}
	a.pending = true
	if _, err := fmt.Fprintf(a.conn, format+"\n", args...); err != nil {
		a.t.Fatalf("agent: send command: %v%s", err, a.exitStatus())
	}
}

// Read asks the child to load the 8-byte word at byte offset off of the
// region (a user-mode access).
func (a *Agent) Read(off int) { a.t.Helper(); a.send("R %d", off) }

// Write asks the child to store v in the 8-byte word at byte offset off.
func (a *Agent) Write(off int, v uint64) { a.t.Helper(); a.send("W %d %d", off, v) }

// KernelRead asks the child to pass the 8 bytes at byte offset off to
// write(2) on a pipe, so that the kernel reads them (a kernel-mode access),
// and to read them back from the pipe.
func (a *Agent) KernelRead(off int) { a.t.Helper(); a.send("K %d", off) }

// ReadConcurrently asks the child to load the words at the given byte
// offsets at the same time, each from its own thread, and to answer with
// their sum once every load has completed.
func (a *Agent) ReadConcurrently(offs ...int) {
	a.t.Helper()
	s := make([]string, len(offs))
	for i, o := range offs {
		s[i] = strconv.Itoa(o)
	}
	a.send("M %s", strings.Join(s, " "))
}

// Replied reports whether the child has answered the outstanding command
// within d, without consuming the answer (Result still returns it).
func (a *Agent) Replied(d time.Duration) bool {
	a.conn.SetReadDeadline(time.Now().Add(d))
	_, err := a.rd.Peek(1)
	a.conn.SetReadDeadline(time.Time{})
	return err == nil
}

// Reply is the child's answer to a command.
type Reply struct {
	Value uint64 // the word read (Read, KernelRead)
	Err   string // "" on success; an errno name such as "EFAULT", or "fault: ..." for a signal
}

// Result waits for the reply to the outstanding command.
func (a *Agent) Result() Reply {
	a.t.Helper()
	if !a.pending {
		a.t.Fatal("agent: Result without a command")
	}
	a.conn.SetReadDeadline(time.Now().Add(Timeout))
	line, err := a.rd.ReadString('\n')
	a.conn.SetReadDeadline(time.Time{})
	a.pending = false
	if err != nil {
		a.t.Fatalf("agent: no reply within %v: %v%s", Timeout, err, a.exitStatus())
	}
	line = strings.TrimSpace(line)
	if v, ok := strings.CutPrefix(line, "OK "); ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			a.t.Fatalf("agent: bad reply %q", line)
		}
		return Reply{Value: n}
	}
	if e, ok := strings.CutPrefix(line, "ERR "); ok {
		return Reply{Err: e}
	}
	a.t.Fatalf("agent: bad reply %q", line)
	return Reply{}
}

// MustResult is Result that fails the test when the child reported an error.
func (a *Agent) MustResult() uint64 {
	a.t.Helper()
	r := a.Result()
	if r.Err != "" {
		a.t.Fatalf("agent: command failed: %s", r.Err)
	}
	return r.Value
}

// NextMsg waits for the next message on the child's userfaultfd.
func (a *Agent) NextMsg() uffd.Msg {
	a.t.Helper()
	deadline := time.Now().Add(Timeout)
	for {
		ready, err := a.UFFD.Wait(time.Until(deadline))
		if err != nil {
			a.t.Fatal(err)
		}
		if !ready {
			a.t.Fatalf("agent: no userfaultfd message within %v%s", Timeout, a.exitStatus())
		}
		var m [1]uffd.Msg
		n, err := a.UFFD.ReadMsgs(m[:])
		if err != nil {
			a.t.Fatal(err)
		}
		if n == 1 {
			return m[0]
		}
		// A message can be withdrawn between poll and read; wait again.
	}
}

// NoMsg fails the test if a message is pending on the child's userfaultfd.
func (a *Agent) NoMsg() {
	a.t.Helper()
	ready, err := a.UFFD.Wait(0)
	if err != nil {
		a.t.Fatal(err)
	}
	if ready {
		var m [1]uffd.Msg
		if n, _ := a.UFFD.ReadMsgs(m[:]); n == 1 {
			a.t.Fatalf("agent: unexpected userfaultfd message %v", m[0])
		}
	}
}

// AgentMain is the child side of StartAgent. Call it from a test named
// TestHelperProcess: it returns at once unless the process was started by
// StartAgent, and otherwise runs the agent and exits.
func AgentMain() {
	js, ok := os.LookupEnv(AgentEnv)
	if !ok {
		return
	}
	if err := agent(js); err != nil {
		fmt.Fprintf(os.Stderr, "uffdtest agent: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

const (
	agentMemfdFD  = 3
	agentSocketFD = 4
)

func agent(js string) error {
	f := os.NewFile(agentSocketFD, "socket")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	conn := fc.(*net.UnixConn)
	mem, u, hello, err := agentSetup(js)
	if err != nil {
		hello.Err = err.Error()
		b, _ := json.Marshal(hello)
		conn.Write(append(b, '\n'))
		return err
	}
	// u stays open until the process exits: were the parent's copy the
	// only one, the parent's death would silently unregister the region.
	defer u.Close()
	b, _ := json.Marshal(hello)
	if err := uffd.SendFDs(conn, append(b, '\n'), u.Fd()); err != nil {
		return err
	}
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		reply := agentCommand(mem, pipe, sc.Text())
		if reply == "" {
			return nil
		}
		if _, err := io.WriteString(conn, reply+"\n"); err != nil {
			return err
		}
	}
	return sc.Err()
}

func agentSetup(js string) ([]byte, *uffd.FD, agentHello, error) {
	hello := agentHello{PID: os.Getpid()}
	var cfg agentConfig
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		return nil, nil, hello, fmt.Errorf("bad %s: %w", AgentEnv, err)
	}
	mem, err := uffd.MapShared(agentMemfdFD, cfg.Base, cfg.Pages*uffd.PageSize, true)
	if err != nil {
		return nil, nil, hello, err
	}
	var u *uffd.FD
	if cfg.Method == 0 {
		u, err = uffd.Open()
	} else {
		u, err = uffd.OpenWith(cfg.Method)
	}
	if err != nil {
		return nil, nil, hello, err
	}
	hello.UserModeOnly, hello.Method = u.UserModeOnly(), u.Method()
	if hello.Features, err = u.API(uint64(cfg.Features)); err != nil {
		u.Close()
		return nil, nil, hello, err
	}
	if hello.Ioctls, err = u.Register(uffd.Addr(mem), uintptr(len(mem)), cfg.Mode); err != nil {
		u.Close()
		return nil, nil, hello, err
	}
	return mem, u, hello, nil
}

// agentCommand runs one command line and returns the reply line, or "" to
// quit.
func agentCommand(mem []byte, pipe [2]int, line string) (reply string) {
	f := strings.Fields(line)
	if len(f) == 0 || f[0] == "Q" {
		return ""
	}
	arg := func(i int) (uint64, error) {
		if i >= len(f) {
			return 0, errors.New("missing argument")
		}
		return strconv.ParseUint(f[i], 10, 64)
	}
	off, err := arg(1)
	if err != nil || off%8 != 0 || off+8 > uint64(len(mem)) {
		return fmt.Sprintf("ERR bad offset in %q", line)
	}
	if f[0] == "M" {
		return agentConcurrent(mem, f[1:])
	}
	// Plain loads and stores: under the race detector sync/atomic
	// operations read before they write, which would turn the first
	// access of a write into a read fault.
	word := (*uint64)(unsafe.Pointer(&mem[off]))
	// A poisoned page raises SIGBUS: report it instead of crashing.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			reply = fmt.Sprintf("ERR fault: %v", r)
		}
	}()
	switch f[0] {
	case "R":
		return fmt.Sprintf("OK %d", *word)
	case "W":
		v, err := arg(2)
		if err != nil {
			return fmt.Sprintf("ERR bad value in %q", line)
		}
		*word = v
		return "OK 0"
	case "K":
		if _, err := unix.Write(pipe[1], mem[off:off+8]); err != nil {
			return "ERR " + errnoName(err)
		}
		var b [8]byte
		if _, err := unix.Read(pipe[0], b[:]); err != nil {
			return "ERR " + errnoName(err)
		}
		return fmt.Sprintf("OK %d", binary.NativeEndian.Uint64(b[:]))
	}
	return fmt.Sprintf("ERR unknown command %q", line)
}

// agentConcurrent loads a word at each offset from its own goroutine
// locked to its own thread, so that all can be blocked in a fault at once.
func agentConcurrent(mem []byte, args []string) string {
	offs := make([]uint64, len(args))
	for i, s := range args {
		o, err := strconv.ParseUint(s, 10, 64)
		if err != nil || o%8 != 0 || o+8 > uint64(len(mem)) {
			return fmt.Sprintf("ERR bad offset %q", s)
		}
		offs[i] = o
	}
	var sum atomic.Uint64
	var wg sync.WaitGroup
	for _, o := range offs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			sum.Add(*(*uint64)(unsafe.Pointer(&mem[o])))
		}()
	}
	wg.Wait()
	return fmt.Sprintf("OK %d", sum.Load())
}

func errnoName(err error) string {
	var e unix.Errno
	if errors.As(err, &e) {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
	}
	return err.Error()
}
