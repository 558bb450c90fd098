package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/uffd"
)

// The chain limit (limit/chain) is the machine's floor for a remote read
// fault: the whole path a fault takes in the runtime, with nothing on it but
// the kernel. Three processes, as the runtime has (a program and the
// daemons of two nodes):
//
//   - the program maps a memfd, registers it with userfaultfd (MISSING),
//     hands the descriptor to daemon A and, on a locked thread, loads the
//     first word of each page, timing every load;
//   - daemon A blocks in read(2) on the userfaultfd, sends a 64-byte request
//     datagram to B, blocks in recvfrom for the 4 KiB reply and installs it
//     with UFFDIO_COPY, which wakes the program's thread;
//   - server B blocks in recvfrom and answers each request with a 4 KiB
//     datagram.
//
// A and B use raw system calls on sockets the launcher made, on locked OS
// threads: no netpoller, no channel, no goroutine hand-off. The program and
// A exchange the userfaultfd with the uffd package's descriptor passing,
// before the measurement.

// keyLimitChain is the key of the chain's figure.
const keyLimitChain = "limit/chain"

// envChain makes the binary one process of the chain: its value is the
// role, then ":" and the role's argument.
const envChain = "DSM_BENCH_CHAIN"

// Roles of the chain's processes.
const (
	chainProgram = "program"
	chainDaemon  = "daemon"
	chainServer  = "server"
)

const (
	// chainWindow is how many pages the program faults on before it
	// punches them out of the memfd again, so that they fault anew.
	chainWindow = 1024
	// chainWarmup faults are taken before the timed ones (the first
	// faults of a process pay for page tables and cold caches).
	chainWarmup = 200
	// chainRequest is the size of A's request datagram, the request size
	// of the UDP limit.
	chainRequest = 64
	// chainSetupWait bounds the start of the three processes.
	chainSetupWait = 20 * time.Second
	// chainFaultWait is a generous per-fault allowance for the whole run's
	// deadline: a run only takes that long when something is stuck.
	chainFaultWait = time.Millisecond
)

// The descriptors each process of the chain inherits (exec.Cmd.ExtraFiles
// start at 3).
const (
	chainProgramSock = 3 // program: unix socket to A
	chainDaemonSock  = 3 // A: unix socket to the program
	chainDaemonUDP   = 4 // A: UDP socket connected to B
	chainServerUDP   = 3 // B: UDP socket connected to A
)

// chainNote is the note of the limit/chain figure.
const chainNote = "three processes (program, daemon A, server B) on loopback; " +
	"A blocks in read(2) on the userfaultfd, sends a 64 B request, blocks in recvfrom for the 4 KiB reply, UFFDIO_COPY; " +
	"B blocks in recvfrom and replies; direct system calls on locked OS threads, no netpoller; time of the faulting load, as the program sees it; " +
	"the limit every fault ratio uses"

// measureChain takes n timed remote read faults along the chain (after
// chainWarmup untimed ones) and returns the time of each faulting load as
// the program measured it. The binary's main (or TestMain) must call
// childMain first: the three processes are this binary, re-executed.
func measureChain(ctx context.Context, n int) ([]time.Duration, *FaultCost, error) {
	if n < 1 {
		return nil, nil, fmt.Errorf("chain: %d faults", n)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("chain: find this executable: %w", err)
	}
	udpBefore, udpErr := udpOutDatagrams()
	// The program hands its userfaultfd to A over a unix socket pair;
	// SOCK_SEQPACKET keeps the descriptor with its message.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("chain: socketpair: %w", err)
	}
	progSock := os.NewFile(uintptr(pair[0]), "chain-program-sock")
	daemonSock := os.NewFile(uintptr(pair[1]), "chain-daemon-sock")
	udpA, udpB, err := udpPair()
	if err != nil {
		progSock.Close()
		daemonSock.Close()
		return nil, nil, err
	}
	closeFiles := sync.OnceFunc(func() {
		for _, f := range []*os.File{progSock, daemonSock, udpA, udpB} {
			f.Close()
		}
	})
	defer closeFiles()

	procs := []*chainProc{
		{role: chainServer, files: []*os.File{udpB}},
		{role: chainDaemon, files: []*os.File{daemonSock, udpA}},
		{role: chainProgram, arg: strconv.Itoa(n), files: []*os.File{progSock}},
	}
	exited := make(chan *chainProc, len(procs))
	var started []*chainProc
	stopAll := func() {
		for _, p := range started {
			p.cmd.Process.Kill()
		}
		for range started {
			<-exited
		}
	}
	for _, p := range procs {
		if err := p.start(exe, exited); err != nil {
			stopAll()
			return nil, nil, err
		}
		started = append(started, p)
	}
	// The children have their copies of the sockets; ours would keep a
	// dead peer's socket open.
	closeFiles()
	prog := procs[2]
	timer := time.NewTimer(chainSetupWait + time.Duration(n+chainWarmup)*chainFaultWait)
	defer timer.Stop()
	var failure error
	select {
	case p := <-exited:
		started = slices.DeleteFunc(started, func(q *chainProc) bool { return q == p })
		if p != prog {
			failure = fmt.Errorf("the %s exited before the program was done: %v", p.role, p.err)
		} else if p.err != nil {
			failure = fmt.Errorf("the program failed: %w", p.err)
		}
	case <-timer.C:
		failure = errors.New("the program did not finish in time: a process of the chain is stuck")
	case <-ctx.Done():
		failure = ctx.Err()
	}
	// What the chain cost, read while A and B still live (blocked in a
	// system call): their CPU and switches since they started, the
	// program's switches from its exit, and the UDP datagrams the machine
	// sent meanwhile.
	var cost *FaultCost
	if failure == nil {
		cost = &FaultCost{Windows: 1, Faults: uint64(n + chainWarmup), Ops: n}
		for _, p := range procs[:2] {
			c, err := readProcCounters(p.cmd.Process.Pid)
			if err != nil {
				failure = fmt.Errorf("the counters of the %s: %w", p.role, err)
				break
			}
			cost.DaemonSwitches += c.switches
			cost.DaemonCPU += c.cpu
		}
		if ru, ok := prog.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			cost.ProgramSwitches = uint64(ru.Nvcsw)
		}
		if after, err := udpOutDatagrams(); err == nil && udpErr == nil {
			cost.Datagrams = after - udpBefore
		}
	}
	// A and B serve until they are killed: they block in system calls that
	// only a signal ends.
	stopAll()
	if failure != nil {
		var logs []string
		for _, p := range procs {
			if s := strings.TrimSpace(p.stderr.String()); s != "" {
				logs = append(logs, p.role+": "+s)
			}
		}
		if len(logs) > 0 {
			failure = fmt.Errorf("%w\n%s", failure, strings.Join(logs, "\n"))
		}
		return nil, nil, fmt.Errorf("chain: %w", failure)
	}
	out := prog.stdout.Bytes()
	if len(out) != 8*n {
		return nil, nil, fmt.Errorf("chain: the program reported %d bytes of samples, want %d", len(out), 8*n)
	}
	samples := make([]time.Duration, n)
	for i := range samples {
		samples[i] = time.Duration(binary.LittleEndian.Uint64(out[8*i:]))
	}
	return samples, cost, nil
}

// udpOutDatagrams returns the UDP datagrams this machine has sent
// (OutDatagrams in /proc/net/snmp).
func udpOutDatagrams() (uint64, error) {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	var names []string
	for _, l := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(l, "Udp: ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "OutDatagrams" && i < len(f) {
				return strconv.ParseUint(f[i], 10, 64)
			}
		}
	}
	return 0, errors.New("no Udp OutDatagrams in /proc/net/snmp")
}

// chainProc is one process of the chain, started by measureChain.
type chainProc struct {
	role, arg      string
	files          []*os.File // its descriptors 3, 4, ...
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	err            error // how it exited
}

// start starts the process and reports its exit on exited.
func (p *chainProc) start(exe string, exited chan<- *chainProc) error {
	p.cmd = exec.Command(exe)
	// No asynchronous preemption: a SIGURG that lands while the program's
	// thread waits in a fault makes the kernel report the fault again, and
	// a limit should not pay for the Go scheduler's signals.
	godebug := "asyncpreemptoff=1"
	if g := os.Getenv("GODEBUG"); g != "" {
		godebug = g + "," + godebug
	}
	p.cmd.Env = append(os.Environ(), envChain+"="+p.role+":"+p.arg, "GODEBUG="+godebug)
	p.cmd.ExtraFiles = p.files
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("chain: start the %s: %w", p.role, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		exited <- p
	}()
	return nil
}

// udpPair returns two blocking UDP sockets on 127.0.0.1, each connected to
// the other.
func udpPair() (a, b *os.File, err error) {
	var fds [2]int
	var addrs [2]unix.Sockaddr
	for i := range fds {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			closeFDs(fds[:i])
			return nil, nil, fmt.Errorf("chain: UDP socket: %w", err)
		}
		fds[i] = fd
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			closeFDs(fds[:i+1])
			return nil, nil, fmt.Errorf("chain: bind a UDP socket on loopback: %w", err)
		}
		if addrs[i], err = unix.Getsockname(fd); err != nil {
			closeFDs(fds[:i+1])
			return nil, nil, fmt.Errorf("chain: UDP socket address: %w", err)
		}
	}
	for i := range fds {
		if err := unix.Connect(fds[i], addrs[1-i]); err != nil {
			closeFDs(fds[:])
			return nil, nil, fmt.Errorf("chain: connect the UDP sockets: %w", err)
		}
	}
	return os.NewFile(uintptr(fds[0]), "chain-udp-a"), os.NewFile(uintptr(fds[1]), "chain-udp-b"), nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// chainChildIfRequested runs the process's role in the chain and exits, if
// it was started as one; it returns at once otherwise.
func chainChildIfRequested() {
	v, ok := os.LookupEnv(envChain)
	if !ok {
		return
	}
	role, arg, _ := strings.Cut(v, ":")
	var err error
	switch role {
	case chainProgram:
		err = chainProgramMain(arg)
	case chainDaemon:
		err = chainDaemonMain()
	case chainServer:
		err = chainServerMain()
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench chain %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// chainHello is what the program tells A with its userfaultfd: whether the
// descriptor is user-mode-only, and the registered range.
type chainHello struct {
	userModeOnly bool
	base, size   uint64
}

const chainHelloSize = 17

func (h chainHello) encode() []byte {
	b := make([]byte, chainHelloSize)
	if h.userModeOnly {
		b[0] = 1
	}
	binary.LittleEndian.PutUint64(b[1:], h.base)
	binary.LittleEndian.PutUint64(b[9:], h.size)
	return b
}

func decodeChainHello(b []byte) (chainHello, error) {
	if len(b) != chainHelloSize || b[0] > 1 {
		return chainHello{}, fmt.Errorf("bad hello of %d bytes", len(b))
	}
	return chainHello{userModeOnly: b[0] == 1, base: binary.LittleEndian.Uint64(b[1:]), size: binary.LittleEndian.Uint64(b[9:])}, nil
}

// unixConn makes a *net.UnixConn of an inherited socket descriptor.
func unixConn(fd int, name string) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), name)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%s: not a unix socket", name)
	}
	return uc, nil
}

// chainProgramMain is the program: it takes chainWarmup faults, then n
// timed ones, and writes the n times (little-endian ns) to stdout.
func chainProgramMain(arg string) error {
	n, err := strconv.Atoi(arg)
	if err != nil || n < 1 {
		return fmt.Errorf("bad fault count %q", arg)
	}
	ps := uffd.PageSize
	size := chainWindow * ps
	memfd, err := uffd.Memfd("dsm-bench-chain", int64(size))
	if err != nil {
		return err
	}
	mem, err := uffd.MapShared(memfd, 0, size, false)
	if err != nil {
		return err
	}
	u, err := uffd.Open()
	if err != nil {
		return err
	}
	if _, err := u.API(uffd.FeatureMissingShmem); err != nil {
		return err
	}
	if _, err := u.Register(uffd.Addr(mem), uintptr(size), uffd.RegisterMissing); err != nil {
		return err
	}
	conn, err := unixConn(chainProgramSock, "socket to daemon A")
	if err != nil {
		return err
	}
	defer conn.Close()
	hello := chainHello{userModeOnly: u.UserModeOnly(), base: uint64(uffd.Addr(mem)), size: uint64(size)}
	if err := uffd.SendFDs(conn, hello.encode(), u.Fd()); err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(chainSetupWait))
	var ready [1]byte
	if _, err := conn.Read(ready[:]); err != nil {
		return fmt.Errorf("wait for daemon A: %w", err)
	}
	// A holds the descriptor now. Closing ours leaves A's the only one, so
	// that if A dies the kernel unregisters the range and a waiting load
	// reads a zero page, which the check below reports, instead of
	// hanging.
	if err := u.Close(); err != nil {
		return err
	}

	debug.SetGCPercent(-1) // the loop does not allocate
	runtime.LockOSThread()
	samples := make([]byte, 8*n)
	faults := func(k int, timed []byte) error {
		for i := range k {
			p := unsafe.Pointer(&mem[i*ps])
			t0 := time.Now()
			v := *(*uint64)(p) // faults: MISSING, resolved by A with B's page
			d := time.Since(t0)
			if timed != nil {
				binary.LittleEndian.PutUint64(timed[8*i:], uint64(d))
			}
			if want := uint64(uffd.Addr(mem)) + uint64(i*ps); v != want {
				return fmt.Errorf("page %d read %#x, want %#x: the page did not come from B (is daemon A gone?)", i, v, want)
			}
		}
		// Drop the pages so that the next pass faults on them again.
		return uffd.PunchHole(memfd, 0, int64(k*ps))
	}
	if err := faults(min(chainWarmup, chainWindow), nil); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	for done := 0; done < n; {
		k := min(n-done, chainWindow)
		if err := faults(k, samples[8*done:]); err != nil {
			return err
		}
		done += k
	}
	runtime.UnlockOSThread()
	_, err = os.Stdout.Write(samples)
	return err
}

// chainDaemonMain is daemon A: it receives the program's userfaultfd, then
// serves its faults with B's pages until it is killed.
func chainDaemonMain() error {
	conn, err := unixConn(chainDaemonSock, "socket to the program")
	if err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(chainSetupWait))
	buf := make([]byte, 64)
	nb, fds, err := uffd.RecvFDs(conn, buf, 1)
	if err != nil {
		return fmt.Errorf("receive the userfaultfd: %w", err)
	}
	if len(fds) != 1 {
		closeFDs(fds)
		return fmt.Errorf("got %d descriptors, want 1", len(fds))
	}
	hello, err := decodeChainHello(buf[:nb])
	if err != nil {
		return err
	}
	u := uffd.NewFDMode(fds[0], hello.userModeOnly)
	// Blocking mode: read(2) sleeps until a fault arrives.
	if err := u.SetNonblock(false); err != nil {
		return err
	}
	debug.SetGCPercent(-1)
	runtime.LockOSThread()
	if _, err := conn.Write([]byte{1}); err != nil {
		return fmt.Errorf("tell the program A is ready: %w", err)
	}
	ps := uint64(uffd.PageSize)
	msgs := make([]uffd.Msg, 1)
	req := make([]byte, chainRequest)
	page := make([]byte, uffd.PageSize+1) // one more: a longer reply is an error, not a truncation
	var seq uint64
	for {
		k, err := u.ReadMsgs(msgs)
		if err != nil {
			return err
		}
		if k == 0 {
			continue
		}
		m := msgs[0]
		addr := m.Address &^ (ps - 1)
		if !m.IsMissing() || addr < hello.base || addr >= hello.base+hello.size {
			return fmt.Errorf("unexpected message %v", m)
		}
		seq++
		binary.LittleEndian.PutUint64(req[0:], addr)
		binary.LittleEndian.PutUint64(req[8:], seq)
		if err := sendDatagram(chainDaemonUDP, req); err != nil {
			return err
		}
		for {
			n, err := recvDatagram(chainDaemonUDP, page)
			if err != nil {
				return err
			}
			if n != uffd.PageSize {
				return fmt.Errorf("a reply of %d bytes, want %d", n, uffd.PageSize)
			}
			if binary.LittleEndian.Uint64(page[8:]) == seq {
				break
			}
			// A reply to an earlier request: cannot happen on loopback
			// with one request at a time, but a stale page must not be
			// installed.
		}
		// ErrExist: the fault was reported twice and the page is there;
		// the waiters have been woken either way.
		if err := u.Copy(uintptr(addr), page[:uffd.PageSize], false); err != nil && !errors.Is(err, uffd.ErrExist) {
			return err
		}
	}
}

// chainServerMain is server B: it answers every request with a page whose
// first 16 bytes are the request's (the address and A's sequence number),
// until it is killed.
func chainServerMain() error {
	debug.SetGCPercent(-1)
	runtime.LockOSThread()
	in := make([]byte, 65536)
	reply := make([]byte, uffd.PageSize)
	for i := range reply {
		reply[i] = byte(i*7 + 1)
	}
	for {
		n, err := recvDatagram(chainServerUDP, in)
		if err != nil {
			return err
		}
		if n < 16 {
			continue
		}
		copy(reply[:16], in[:16])
		if err := sendDatagram(chainServerUDP, reply); err != nil {
			return err
		}
	}
}

// recvDatagram blocks in recvfrom(2) on fd, a blocking connected socket,
// until a datagram arrives. It calls the system call itself: unix.Recvfrom
// allocates the sender's address, which a connected socket does not need.
func recvDatagram(fd int, b []byte) (int, error) {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, fmt.Errorf("recvfrom: %w", e)
		}
		return int(n), nil
	}
}

// sendDatagram sends b on fd, a blocking connected socket, with sendto(2).
func sendDatagram(fd int, b []byte) error {
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("sendto: %w", e)
		}
		if int(n) != len(b) {
			return fmt.Errorf("sendto: sent %d of %d bytes", n, len(b))
		}
		return nil
	}
}
