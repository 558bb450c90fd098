package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Results is everything a run of the suite measured: results.json.
type Results struct {
	Machine Machine   `json:"machine"`
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	Quick   bool      `json:"quick"`
	Parts   []string  `json:"parts"`
	Config  any       `json:"config"`
	Limits  Limits    `json:"limits"`
	Aim     *Aim      `json:"aim,omitempty"`
	Figures []Figure  `json:"figures"`
	Plots   []string  `json:"plots,omitempty"`
	Errors  []string  `json:"errors,omitempty"`
}

// Machine is what the suite ran on.
type Machine struct {
	Kernel     string `json:"kernel"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	MemoryMiB  uint64 `json:"memory_mib"`
	GoVersion  string `json:"go_version"`
	Date       string `json:"date"`
	// LoadStart and LoadEnd are /proc/loadavg at the start and the end:
	// other work on the machine disturbs the figures.
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
}

// Limits are the machine's limits measured in the run, and the yardstick
// every figure is compared with.
type Limits struct {
	// Chain is the remote read fault chain (limit/chain): a fault served
	// over raw UDP by processes that do nothing else, with blocking
	// system calls.
	Chain     Stat `json:"chain"`
	UffdFault Stat `json:"uffd_local_fault"`
	UDP       Stat `json:"udp_rtt_4k"`
	KCP       Stat `json:"kcp_rtt_4k"`
	// LimitNs is the chain's median: the machine's limit for a remote
	// read fault, which every ratio uses.
	LimitNs float64 `json:"limit_ns"`
	// SumNs is the local userfaultfd fault median plus the UDP round-trip
	// median, the limit the ratios used before the chain was measured;
	// kept to show what the chain adds to the sum of its parts.
	SumNs float64 `json:"uffd_plus_udp_ns"`
	// SumKCPNs is the local userfaultfd fault median plus our KCP
	// transport's round-trip median: the yardstick of RatioKCP.
	SumKCPNs float64 `json:"limit_kcp_ns"`
	// Measurements are every measurement of each limit (at the start and
	// at the end of the run); the one with the lower median is used.
	Measurements []LimitMeasurement `json:"measurements,omitempty"`
}

// LimitMeasurement is the measurements of one limit.
type LimitMeasurement struct {
	Limit string     `json:"limit"` // the figure key
	Runs  []LimitRun `json:"runs"`
}

// LimitRun is one measurement of a limit.
type LimitRun struct {
	When string `json:"when"` // "start" or "end" of the suite
	Stat
}

// DaemonLatency is a daemon's own measure of its fault latency.
type DaemonLatency struct {
	Window int     `json:"window"` // faults it covers (the most recent)
	Median float64 `json:"median_ns"`
	P99    float64 `json:"p99_ns"`
}

// Aim is the project's target for the remote read fault.
type Aim struct {
	ReadFaultMedianNs float64 `json:"read_fault_median_ns"`
	LimitNs           float64 `json:"limit_ns"`
	Ratio             float64 `json:"ratio"`
	TargetRatio       float64 `json:"target_ratio"`
	TargetNs          float64 `json:"target_ns"`
	WithinRatio       bool    `json:"within_ratio"`
	UnderTarget       bool    `json:"under_target"`
}

// Aim figures.
const (
	aimRatio = 1.5
	aimNs    = 25000
)

// How a figure is compared with the limit.
const (
	cmpNone       = ""           // a limit itself
	cmpLatency    = "latency"    // median / limit
	cmpThroughput = "throughput" // pages/s / (1 / limit)
	cmpMigrations = "migrations" // migrations/s / (1 / limit)
	cmpFloor      = "floor"      // median / the median of the figure Floor
)

// Figure is one measured figure.
type Figure struct {
	Key    string         `json:"key"`
	Part   string         `json:"part"`
	Name   string         `json:"name"`
	Nodes  int            `json:"nodes,omitempty"`
	Params map[string]any `json:"params,omitempty"`
	// Latency is the distribution of the timed operation (ns).
	Latency          Stat    `json:"latency"`
	PagesPerSec      float64 `json:"pages_per_sec,omitempty"`
	MBPerSec         float64 `json:"mb_per_sec,omitempty"` // 10^6 bytes
	MigrationsPerSec float64 `json:"migrations_per_sec,omitempty"`
	Migrations       uint64  `json:"migrations,omitempty"`
	// AcquisitionsPerSec is the rate of lock acquisitions (all holders)
	// under contention.
	AcquisitionsPerSec float64 `json:"acquisitions_per_sec,omitempty"`
	// BytesPerPage is what the daemons handed to the transport (coherence
	// messages of all nodes, before FEC and retransmission) per measured
	// page fault.
	BytesPerPage float64 `json:"bytes_sent_per_fault,omitempty"`
	// Bytes is a figure counted in bytes rather than timed (rc/diff_bytes).
	Bytes float64 `json:"bytes,omitempty"`
	// Daemon is the fault latency the faulting node's daemon measured
	// itself (from reading the fault message to waking the thread) over
	// its most recent faults: the rest of the program's time is the
	// kernel's delivery and wake-up.
	Daemon *DaemonLatency `json:"daemon,omitempty"`
	// SwitchesPerFault, DaemonCPUPerFault and DatagramsPerFault are
	// what a fault cost during the timed windows, beyond its latency:
	// voluntary context switches of the faulting program and of every
	// daemon, CPU time of every daemon (ns), and UDP datagrams every
	// daemon sent, each divided by the faults of the windows; beside them
	// the messages the daemons sent and the KCP data segments that carried
	// them. Cost holds the totals they come from.
	SwitchesPerFault  float64    `json:"switches_per_fault,omitempty"`
	DaemonCPUPerFault float64    `json:"daemon_cpu_ns_per_fault,omitempty"`
	DatagramsPerFault float64    `json:"datagrams_per_fault,omitempty"`
	MessagesPerFault  float64    `json:"messages_per_fault,omitempty"`
	SegmentsPerFault  float64    `json:"kcp_segments_per_fault,omitempty"`
	Cost              *FaultCost `json:"cost,omitempty"`
	// Compare says how Ratio is computed: "latency" (median / limit),
	// "throughput" or "migrations" (rate / (1 / limit)); "floor" means
	// FloorRatio instead.
	Compare string `json:"compare,omitempty"`
	// Floor is the key of the figure this one is compared with when the
	// machine's limits are not its yardstick (a distributed lock beside a
	// sync.Mutex measured in the same run); FloorNs is that figure's
	// median and FloorRatio this figure's median / FloorNs.
	Floor      string  `json:"floor,omitempty"`
	FloorNs    float64 `json:"floor_ns,omitempty"`
	FloorRatio float64 `json:"floor_ratio,omitempty"`

	// LimitNs is the limit Ratio uses: the median of limit/chain.
	// RatioKCP uses the local userfaultfd fault plus the KCP round trip
	// (Limits.SumKCPNs) instead.
	LimitNs  float64 `json:"limit_ns,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`
	RatioKCP float64 `json:"ratio_kcp,omitempty"`
	Note     string  `json:"note,omitempty"`
}

func (r *Results) add(f Figure) { r.Figures = append(r.Figures, f) }

// figure returns the figure with key k.
func (r *Results) figure(k string) (Figure, bool) {
	for _, f := range r.Figures {
		if f.Key == k {
			return f, true
		}
	}
	return Figure{}, false
}

// finish computes every figure's ratio to the limits and the aim.
func (r *Results) finish() {
	l := &r.Limits
	l.LimitNs = l.Chain.Median
	if l.UffdFault.Count > 0 && l.UDP.Count > 0 {
		l.SumNs = l.UffdFault.Median + l.UDP.Median
	}
	if l.UffdFault.Count > 0 && l.KCP.Count > 0 {
		l.SumKCPNs = l.UffdFault.Median + l.KCP.Median
	}
	for i := range r.Figures {
		f := &r.Figures[i]
		if f.Compare != cmpFloor {
			continue
		}
		if fl, ok := r.figure(f.Floor); ok && fl.Latency.Median > 0 {
			f.FloorNs = fl.Latency.Median
			f.FloorRatio = f.Latency.Median / fl.Latency.Median
		}
	}
	if l.LimitNs <= 0 {
		return
	}
	for i := range r.Figures {
		f := &r.Figures[i]
		f.LimitNs = l.LimitNs
		var v float64
		switch f.Compare {
		case cmpLatency:
			v = f.Latency.Median
			f.Ratio = v / l.LimitNs
			if l.SumKCPNs > 0 {
				f.RatioKCP = v / l.SumKCPNs
			}
		case cmpThroughput, cmpMigrations:
			v = f.PagesPerSec
			if f.Compare == cmpMigrations {
				v = f.MigrationsPerSec
			}
			f.Ratio = v / (1e9 / l.LimitNs)
			if l.SumKCPNs > 0 {
				f.RatioKCP = v / (1e9 / l.SumKCPNs)
			}
		default:
			f.LimitNs = 0
		}
	}
	if f, ok := r.figure("read_fault"); ok {
		a := &Aim{ReadFaultMedianNs: f.Latency.Median, LimitNs: l.LimitNs, Ratio: f.Ratio, TargetRatio: aimRatio, TargetNs: aimNs}
		a.WithinRatio = a.Ratio <= aimRatio
		a.UnderTarget = a.ReadFaultMedianNs < aimNs
		r.Aim = a
	}
}

// write writes results.json and results.md into dir.
func (r *Results) write(dir string) error {
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.markdown()), 0o644); err != nil {
		return fmt.Errorf("write results.md: %w", err)
	}
	return nil
}

func trimFloat(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }

func fmtRatio(v float64) string {
	if v == 0 {
		return "—"
	}
	if v < 0.1 {
		return trimFloat(v, 3) + "×"
	}
	if v >= 100 {
		return trimFloat(v, 0) + "×"
	}
	return trimFloat(v, 2) + "×"
}

func fmtRate(v float64, unit string) string {
	if v == 0 {
		return ""
	}
	switch {
	case v >= 1e6:
		return trimFloat(v/1e6, 2) + " M" + unit
	case v >= 1e4:
		return trimFloat(v/1e3, 1) + " k" + unit
	default:
		return trimFloat(v, 0) + " " + unit
	}
}

// partTitles head the sections of results.md.
var partTitles = map[string]string{
	"limits":       "Limits of the machine (measured in this run)",
	"readfault":    "Remote read fault (2 nodes)",
	"ownerwrite":   "Write fault taking ownership (2 nodes)",
	"invalidate":   "Write fault invalidating k readers",
	"scan":         "Sequential scan of a remote region",
	"pingpong":     "Page ping-pong between two nodes",
	"size":         "Against cluster size",
	"content":      "By page content, with and without compression (2 nodes)",
	"loss":         "Under injected packet loss, KCP with and without FEC (2 nodes)",
	"locks":        "Distributed locks",
	"heap":         "Shared heap: dsm.New and dsm.Free beside Go's new",
	"rc":           "Release-consistent memory (write-fault tracking)",
	"falsesharing": "The false-sharing demo's counters, by layout",
	"memory":       "Daemon memory beyond the memfd",
	"stencil":      "Jacobi heat stencil (examples/stencil), by cluster size",
}

// markdown renders results.md.
func (r *Results) markdown() string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "# DSM benchmark results\n\n")
	mode := "full"
	if r.Quick {
		mode = "quick (-quick)"
	}
	fmt.Fprintf(&b, "Run %s, %s, %.1f s, parts: %s.  \n", m.Date, mode, r.Seconds, strings.Join(r.Parts, ", "))
	fmt.Fprintf(&b, "Machine: %s, %d cores (GOMAXPROCS %d), %d MiB, Linux %s, %s, %s/%s; load average %s at the start, %s at the end.\n\n",
		m.CPU, m.Cores, m.GOMAXPROCS, m.MemoryMiB, m.Kernel, m.GoVersion, m.OS, m.Arch, m.LoadStart, m.LoadEnd)
	l := r.Limits
	if l.LimitNs > 0 {
		fmt.Fprintf(&b, "**Limit** for a remote read fault = the fault chain (limit/chain): **%s** median, %s p99 "+
			"(a program's load faults on a memfd page registered with userfaultfd; daemon A reads the fault with read(2), sends a 64 B UDP request, "+
			"server B replies with 4 KiB, A installs it with UFFDIO_COPY; three processes, blocking system calls on locked threads, loopback; "+
			"measured at the start and the end of this run, the lower median kept, as for every limit). "+
			"Its parts measured alone: local userfaultfd fault %s + UDP 4 KiB round trip %s = %s. "+
			"Every ratio below is ours / the chain (for a latency: median / limit; for a rate: rate / (1 / limit)); "+
			"the \"× KCP limit\" column uses local userfaultfd fault + our KCP transport's round trip (%s) = %s instead. "+
			"\"daemon-side\" in the notes is the faulting node's daemon's own measure (median / p99), from reading the fault message "+
			"to waking the thread, when its window of recent faults holds only the run's faults. "+
			"\"per fault\" in the notes is counted over the timed loads only and divided by the faults the faulting node's daemon took in them: "+
			"voluntary context switches of the program and both daemons (all threads), the daemons' CPU time, and the UDP datagrams the daemons sent.\n\n",
			fmtNs(l.Chain.Median), fmtNs(l.Chain.P99), fmtNs(l.UffdFault.Median), fmtNs(l.UDP.Median), fmtNs(l.SumNs), fmtNs(l.KCP.Median), fmtNs(l.SumKCPNs))
	}
	if a := r.Aim; a != nil {
		verdict := func(ok bool) string {
			if ok {
				return "met"
			}
			return "**not met**"
		}
		fmt.Fprintf(&b, "**Aim**: remote read fault within %.1f× the limit: %s× (%s); under %s median: %s (median %s).\n\n",
			a.TargetRatio, trimFloat(a.Ratio, 2), verdict(a.WithinRatio), fmtNs(a.TargetNs), verdict(a.UnderTarget), fmtNs(a.ReadFaultMedianNs))
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(&b, "**Errors** (the figures of these parts are missing):\n\n")
		for _, e := range r.Errors {
			first, _, _ := strings.Cut(e, "\n")
			fmt.Fprintf(&b, "- %s\n", first)
		}
		b.WriteString("\n")
	}
	for _, part := range r.Parts {
		var figs []Figure
		for _, f := range r.Figures {
			if f.Part == part {
				figs = append(figs, f)
			}
		}
		if len(figs) == 0 {
			continue
		}
		fmt.Fprintf(&b, "## %s\n\n", partTitles[part])
		switch part {
		case "scan":
			b.WriteString("Read-ahead depth d: the reader's daemon asks for d-1 pages ahead once a program's read faults come on consecutive pages (depth 1: none). " +
				"The latency columns are the first load of each page; throughput counts whole pages read (MB = 10^6 bytes).\n\n")
		case "pingpong":
			b.WriteString("Turns: the nodes take turns incrementing a word on one page, the word itself says whose turn it is; " +
				"a handover is half the time between two turns of node 0. Hammer: both nodes increment a word as fast as they can for a fixed time; " +
				"latency is each increment (from a histogram of 1/32 resolution). Migrations/s counts page installs from another node " +
				"(the daemons' counters) over the run.\n\n")
		case "content":
			b.WriteString("B/fault: bytes of coherence messages the daemons handed to the transport (all nodes, the writer's invalidations included) " +
				"per measured read fault, before FEC and KCP retransmission.\n\n")
		case "locks":
			r.locksTable(&b, figs)
			continue
		case "loss":
			b.WriteString("Loss is injected on every datagram each node sends (both directions). " +
				"B/fault counts coherence messages handed to the transport per fault: FEC parity and KCP retransmissions are not in it; " +
				"the rise without FEC comes from the protocol's own retries.\n\n")
		}
		b.WriteString("| figure | nodes | median | p99 | count | rate | × limit | × KCP limit | notes |\n")
		b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
		for _, f := range figs {
			var rate []string
			if f.PagesPerSec > 0 {
				rate = append(rate, fmtRate(f.PagesPerSec, "pages/s"), trimFloat(f.MBPerSec, 1)+" MB/s")
			}
			if f.MigrationsPerSec > 0 {
				rate = append(rate, fmtRate(f.MigrationsPerSec, "migrations/s"))
			}
			if f.BytesPerPage > 0 {
				rate = append(rate, trimFloat(f.BytesPerPage, 0)+" B/fault")
			}
			if f.Bytes > 0 {
				rate = append(rate, trimFloat(f.Bytes, 1)+" B")
			}
			nodes := ""
			if f.Nodes > 0 {
				nodes = strconv.Itoa(f.Nodes)
			}
			note := f.Note
			if d := f.Daemon; d != nil {
				if note != "" {
					note += "; "
				}
				note += fmt.Sprintf("daemon-side %s / %s", fmtNs(d.Median), fmtNs(d.P99))
			}
			if f.Cost != nil {
				if note != "" {
					note += "; "
				}
				note += fmt.Sprintf("per fault: %s context switches, %s daemon CPU, %s datagrams",
					trimFloat(f.SwitchesPerFault, 2), fmtNs(f.DaemonCPUPerFault), trimFloat(f.DatagramsPerFault, 2))
				if f.Cost.Messages > 0 { // the chain sends raw datagrams
					note += fmt.Sprintf(" (%s messages in %s KCP segments)", trimFloat(f.MessagesPerFault, 2), trimFloat(f.SegmentsPerFault, 2))
				}
				if f.Cost.Ops != int(f.Cost.Faults) {
					note += fmt.Sprintf(" (%d faults for %d pages)", f.Cost.Faults, f.Cost.Ops)
				}
			}
			if f.FloorRatio > 0 {
				if note != "" {
					note += "; "
				}
				note += fmt.Sprintf("%s× its floor (%s)", trimFloat(f.FloorRatio, 2), f.Floor)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %s | %s | %s |\n",
				f.Name, nodes, fmtNs(f.Latency.Median), fmtNs(f.Latency.P99), f.Latency.Count,
				strings.Join(rate, ", "), fmtRatio(f.Ratio), fmtRatio(f.RatioKCP), note)
		}
		b.WriteString("\n")
	}
	if len(r.Plots) > 0 {
		b.WriteString("## Plots\n\n")
		for _, p := range r.Plots {
			fmt.Fprintf(&b, "![%s](%s)\n", strings.TrimSuffix(p, ".png"), p)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// machineInfo describes this machine.
func machineInfo() Machine {
	m := Machine{
		OS: runtime.GOOS, Arch: runtime.GOARCH, Cores: runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(),
		Date: time.Now().UTC().Format(time.RFC3339),
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Version[:])
	}
	m.LoadStart = loadAvg()
	m.CPU = procField("/proc/cpuinfo", "model name")
	if m.CPU == "" {
		m.CPU = "unknown CPU"
	}
	if mem := procField("/proc/meminfo", "MemTotal"); mem != "" {
		kb, _ := strconv.ParseUint(strings.Fields(mem)[0], 10, 64)
		m.MemoryMiB = kb / 1024
	}
	return m
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// procField returns the value of the first "key: value" line of a /proc
// file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// publicConfig is the part of the configuration recorded in the results.
func publicConfig(c Config) map[string]any {
	return map[string]any{
		"sizes": c.Sizes, "invalidate_nodes": c.InvalidateNodes, "region_bytes": c.RegionSize,
		"content": c.Content, "seed": c.Seed, "limit_count": c.LimitCount,
		"read_pages": c.ReadPages, "read_rounds": c.ReadRounds, "owner_pages": c.OwnerPages,
		"invalidate_pages": c.InvPages, "invalidate_rounds": c.InvRounds,
		"scan_pages": c.ScanPages, "scan_rounds": c.ScanRounds, "scan_depths": c.ScanDepths,
		"turns": c.Turns, "hammer_seconds": c.HammerTime.Seconds(),
		"size_pages": c.SizePages, "size_rounds": c.SizeRounds, "size_owner_pages": c.SizeOwnerPages,
		"content_pages": c.ContentPages, "content_rounds": c.ContentRounds,
		"loss_pages": c.LossPages, "loss_rounds": c.LossRounds, "losses": c.Losses,
		"fec":        fmt.Sprintf("%d/%d", c.FECData, c.FECParity),
		"lock_pairs": c.LockPairs, "lock_handoffs": c.LockHandoffs, "mutex_ops": c.MutexOps,
	}
}

// locksTable renders the locks section: each distributed figure beside its
// sync.Mutex floor.
func (r *Results) locksTable(b *strings.Builder, figs []Figure) {
	b.WriteString("The distributed Mutex of package dsm on a 2-node cluster, beside a sync.Mutex in one process (the floor) measured in the same run. " +
		"Uncontended: node 0 times Lock+Unlock of a mutex homed on itself, then of one homed on node 1, while node 1 stays idle. " +
		"Reacquire: node 1 holds a mutex homed on itself once, then node 0 takes it and times Lock+Unlock again and again, " +
		"each pair right after its own Unlock (node 0 held the lock last and keeps it, cached, until another asks: no message). " +
		"After their first pairs, the uncontended figures are cached re-acquisitions too. " +
		"Hand-off: both nodes loop Lock; increment a shared word of the region (a plain, non-atomic increment); Unlock. " +
		"The holder stores its release time beside the word just before Unlock; the next holder, when it is the other node, " +
		"takes the time Lock returned minus that release time (both nodes are processes of this machine: one clock). " +
		"A holder re-acquires its cached lock until the other's request recalls it, so most acquisitions are local and the hand-offs are the recalled ones. " +
		"The sync.Mutex hand-off is the same between two goroutines. Acquisitions/s counts every acquisition of both holders. " +
		"The counter must end exact and fencing tokens must strictly increase, or the run fails.\n\n")
	if l := r.Limits; l.UDP.Median > 0 {
		fmt.Fprintf(b, "A lock homed on another node needs at least a network round trip: the UDP round trip (4 KiB reply) measured in this run is %s.\n\n", fmtNs(l.UDP.Median))
	}
	b.WriteString("| figure | nodes | median | p99 | count | rate | sync.Mutex floor | × floor | notes |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, f := range figs {
		nodes := ""
		if f.Nodes > 0 {
			nodes = strconv.Itoa(f.Nodes)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %d | %s | %s | %s | %s |\n",
			f.Name, nodes, fmtNs(f.Latency.Median), fmtNs(f.Latency.P99), f.Latency.Count,
			fmtRate(f.AcquisitionsPerSec, "acquisitions/s"), fmtNs(f.FloorNs), fmtRatio(f.FloorRatio), f.Note)
	}
	b.WriteString("\n")
}
