package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/node"
)

// What a fault costs beyond its latency: the measuring worker reads, just
// before and just after each of its timed windows, the voluntary context
// switches of its own process and of every node daemon (the sum over their
// threads, from /proc/PID/task/*/status), the daemons' CPU time (from
// /proc/PID/task/*/schedstat, in nanoseconds) and the UDP datagrams the
// daemons sent (their transports' per-peer counters, from their status).
// The windows hold the faulting loads only: the writer's rounds, the
// barriers and the checks between them are left out.

// FaultCost is what the faulting program and the node daemons spent during
// the timed windows of a run. The per-fault figures divide it by Faults.
type FaultCost struct {
	Windows int   `json:"windows"`
	Elapsed int64 `json:"elapsed_ns"` // the windows' total length
	// Faults counts the fault messages the faulting node's daemon took
	// in the windows; Ops the timed operations (loads or stores). They
	// differ when read-ahead installs pages before they are touched.
	Faults uint64 `json:"faults"`
	Ops    int    `json:"ops"`
	// ProgramSwitches are the voluntary context switches of the faulting
	// program, DaemonSwitches those of every daemon.
	ProgramSwitches uint64 `json:"program_voluntary_switches"`
	DaemonSwitches  uint64 `json:"daemon_voluntary_switches"`
	// DaemonCPU is the CPU time of every daemon, in nanoseconds.
	DaemonCPU uint64 `json:"daemon_cpu_ns"`
	// Datagrams are the UDP datagrams every daemon sent; Messages the
	// messages the daemons' transports sent in them, and Segments the KCP
	// data segments that carried those (small messages sent together
	// share one).
	Datagrams uint64 `json:"datagrams"`
	Messages  uint64 `json:"messages"`
	Segments  uint64 `json:"kcp_segments"`
}

// daemonRef is how the measuring worker finds a node daemon: its process
// for /proc, its control socket for its status.
type daemonRef struct {
	PID    int    `json:"pid"`
	Socket string `json:"socket"`
}

// daemonRefs returns the daemons of c, in node order.
func daemonRefs(c *cluster.Cluster) ([]daemonRef, error) {
	var out []daemonRef
	for _, d := range c.Daemons {
		pid := d.PID()
		if pid <= 0 {
			return nil, fmt.Errorf("daemon %d has no process", d.ID)
		}
		out = append(out, daemonRef{PID: pid, Socket: d.Socket})
	}
	return out, nil
}

// procCounters are what the kernel counted for a process, summed over its
// threads.
type procCounters struct {
	switches uint64 // voluntary context switches
	cpu      uint64 // ns on a CPU
}

// haveSchedstat tells whether the kernel keeps /proc/PID/schedstat
// (CONFIG_SCHED_INFO): CPU time in nanoseconds. Without it, CPU time comes
// from /proc/PID/stat in clock ticks.
var haveSchedstat = func() bool {
	_, err := os.Stat("/proc/self/schedstat")
	return err == nil
}()

// clockTick is the unit of the times in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// readProcCounters sums the counters of every thread of process pid. A
// thread that exits meanwhile is skipped; its counts are lost (Go threads
// rarely exit).
func readProcCounters(pid int) (procCounters, error) {
	var c procCounters
	if !haveSchedstat {
		cpu, err := statCPU(pid)
		if err != nil {
			return c, err
		}
		c.cpu = cpu
	}
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return c, fmt.Errorf("threads of process %d: %w", pid, err)
	}
	for _, t := range tasks {
		st, err := os.ReadFile(filepath.Join(dir, t.Name(), "status"))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			return c, err
		}
		sw, err := statusField(st, "voluntary_ctxt_switches")
		if err != nil {
			return c, fmt.Errorf("thread %s of process %d: %w", t.Name(), pid, err)
		}
		if !haveSchedstat {
			c.switches += sw
			continue
		}
		ss, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat"))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			return c, err
		}
		// "ns on CPU, ns waiting for a CPU, timeslices"
		f := bytes.Fields(ss)
		if len(f) < 1 {
			return c, fmt.Errorf("thread %s of process %d: empty schedstat", t.Name(), pid)
		}
		cpu, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil {
			return c, fmt.Errorf("thread %s of process %d: schedstat: %w", t.Name(), pid, err)
		}
		c.switches += sw
		c.cpu += cpu
	}
	return c, nil
}

// statCPU returns the CPU time (user and system) of every thread of
// process pid, living or exited, from /proc/PID/stat.
func statCPU(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses;
	// utime and stime are fields 14 and 15, the 12th and 13th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("process %d: malformed stat", pid)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("process %d: short stat", pid)
	}
	var ticks uint64
	for _, v := range f[11:13] {
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("process %d: stat: %w", pid, err)
		}
		ticks += n
	}
	return ticks * uint64(clockTick), nil
}

// statusField returns the number in the "key:\tvalue" line of a
// /proc/PID/status file.
func statusField(status []byte, key string) (uint64, error) {
	for line := range bytes.Lines(status) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if ok && string(k) == key {
			return strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in the status", key)
}

// costMeter measures FaultCost over the timed windows of a worker.
type costMeter struct {
	daemons []daemonRef
	mine    int // index in daemons of the faulting node's daemon
	total   FaultCost

	// At the start of the open window.
	t0       time.Time
	prog     procCounters
	daemonAt []procCounters
	wire     wireCounters
	faults   uint64
}

// wireCounters are what the daemons' transports have sent.
type wireCounters struct{ datagrams, messages, segments uint64 }

func newCostMeter(daemons []daemonRef, mine int) *costMeter {
	return &costMeter{daemons: daemons, mine: mine, daemonAt: make([]procCounters, len(daemons))}
}

// start opens a window. The daemons' status comes first: answering it
// wakes them, which belongs outside the window.
func (m *costMeter) start() error {
	var err error
	if m.wire, m.faults, err = m.daemonCounters(); err != nil {
		return err
	}
	for i, d := range m.daemons {
		if m.daemonAt[i], err = readProcCounters(d.PID); err != nil {
			return err
		}
	}
	if m.prog, err = readProcCounters(os.Getpid()); err != nil {
		return err
	}
	m.t0 = time.Now()
	return nil
}

// stop closes the window opened by start, in the opposite order, and adds
// what was spent in it to the total; ops is the timed operations in it.
func (m *costMeter) stop(ops int) error {
	elapsed := time.Since(m.t0)
	prog, err := readProcCounters(os.Getpid())
	if err != nil {
		return err
	}
	t := &m.total
	t.ProgramSwitches += prog.switches - m.prog.switches
	for i, d := range m.daemons {
		c, err := readProcCounters(d.PID)
		if err != nil {
			return err
		}
		t.DaemonSwitches += c.switches - m.daemonAt[i].switches
		t.DaemonCPU += c.cpu - m.daemonAt[i].cpu
	}
	wire, faults, err := m.daemonCounters()
	if err != nil {
		return err
	}
	t.Datagrams += wire.datagrams - m.wire.datagrams
	t.Messages += wire.messages - m.wire.messages
	t.Segments += wire.segments - m.wire.segments
	t.Faults += faults - m.faults
	t.Ops += ops
	t.Elapsed += int64(elapsed)
	t.Windows++
	return nil
}

// daemonCounters returns what every daemon has sent and the faults the
// faulting node's daemon has taken.
func (m *costMeter) daemonCounters() (wire wireCounters, faults uint64, err error) {
	for i, d := range m.daemons {
		var st node.Status
		if err := ctl.Call(d.Socket, ctl.Request{Op: ctl.OpStatus}, &st); err != nil {
			return wire, 0, fmt.Errorf("status of the daemon on %s: %w", d.Socket, err)
		}
		for _, p := range st.Peers {
			wire.datagrams += p.PacketsOut
			wire.messages += p.MessagesOut
			wire.segments += p.SegmentsOut
		}
		if i == m.mine {
			for _, n := range st.Faults {
				faults += n
			}
		}
	}
	return wire, faults, nil
}

// result returns the total, or nil when no window was measured.
func (m *costMeter) result() *FaultCost {
	if m == nil || m.total.Windows == 0 {
		return nil
	}
	t := m.total
	return &t
}

// setCost sets f's per-fault costs from c.
func (f *Figure) setCost(c *FaultCost) error {
	if c == nil || c.Faults == 0 {
		return errors.New("no fault cost was measured")
	}
	n := float64(c.Faults)
	f.Cost = c
	f.SwitchesPerFault = float64(c.ProgramSwitches+c.DaemonSwitches) / n
	f.DaemonCPUPerFault = float64(c.DaemonCPU) / n
	f.DatagramsPerFault = float64(c.Datagrams) / n
	f.MessagesPerFault = float64(c.Messages) / n
	f.SegmentsPerFault = float64(c.Segments) / n
	return nil
}
