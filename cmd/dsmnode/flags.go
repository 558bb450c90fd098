package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	dsmnet "github.com/dsmrt/dsm/net"
	"github.com/dsmrt/dsm/node"
)

// Bounds of the daemon options, as the node and its transport take them.
const (
	maxReadAhead = 1024
	maxFECData   = 64
	maxFECParity = 32
)

// daemonFlags are the options of a node daemon that serve and run share:
// how the daemon behaves, not where it is. run applies them to every node
// of its cluster.
type daemonFlags struct {
	readAhead          int
	faultTimeout, tick time.Duration
	minHold, maxHold   time.Duration
	noHold             bool
	compress           bool
	fecData, fecParity int
	loss               float64
	rcSize             uint64
	mtu                int
}

// nodeDefaults returns the defaults a node fills in, so that the flags show
// them and the two never disagree.
func nodeDefaults() node.Config {
	c := node.Config{Nodes: 1, Key: strings.Repeat("k", 16), Socket: "unused"}
	if err := c.Validate(); err != nil {
		panic(fmt.Sprintf("the minimal node configuration is refused: %v", err))
	}
	return c
}

// register defines the flags on fs. compress is the default of --compress:
// on loopback compressing a page costs more than sending it.
func (d *daemonFlags) register(fs *flag.FlagSet, compress bool) {
	def := nodeDefaults()
	fs.IntVar(&d.readAhead, "read-ahead", def.ReadAhead, fmt.Sprintf("pages asked for ahead of a program's sequential read faults, 0 to %d (0: none)", maxReadAhead))
	fs.DurationVar(&d.faultTimeout, "fault-timeout", time.Duration(def.FaultTimeout), "how long a fault may wait for a down peer or a silent home before its program is stopped")
	fs.DurationVar(&d.tick, "tick", time.Duration(def.Tick), "coherence engine tick: how often unanswered requests are retried")
	fs.DurationVar(&d.minHold, "min-hold", time.Duration(def.MinHold), "how long a contended page stays after a read fault made it accessible")
	fs.DurationVar(&d.maxHold, "max-hold", time.Duration(def.MaxHold), "the longest a contended page stays after a fault made it accessible")
	fs.BoolVar(&d.noHold, "no-hold", false, "no hold of contended pages (and no pipelining of requests at their home)")
	fs.BoolVar(&d.compress, "compress", compress, "compress the pages sent (s2)")
	fs.IntVar(&d.fecData, "fec-data", 0, fmt.Sprintf("forward error correction: datagrams per group, 1 to %d, with --fec-parity (0: off)", maxFECData))
	fs.IntVar(&d.fecParity, "fec-parity", 0, fmt.Sprintf("forward error correction: parity datagrams per group, 1 to %d, with --fec-data (0: off)", maxFECParity))
	fs.Float64Var(&d.loss, "loss", 0, "drop this fraction of the datagrams sent, from 0 up to 1: injected packet loss, for tests")
	fs.IntVar(&d.mtu, "mtu", 0, fmt.Sprintf("the largest UDP datagram sent, %d to %d bytes (0: %d when every node is on loopback, else %d; 9000 on jumbo frames)", dsmnet.MinMTU, dsmnet.MaxMTU, dsmnet.LoopbackMTU, dsmnet.DefaultMTU))
	fs.Uint64Var(&d.rcSize, "rc-size", 0, "bytes of the region kept for release-consistent allocations (dsm.ReleaseConsistent), a multiple of 65536, the same on every node (0: none)")
}

// check refuses values the daemon would refuse or misread, naming the
// flag: all of them when set is nil (run), else those named in set.
func (d *daemonFlags) check(set map[string]bool) error {
	given := func(name string) bool { return set == nil || set[name] }
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if given("read-ahead") && (d.readAhead < 0 || d.readAhead > maxReadAhead) {
		bad("--read-ahead %d: give 0 to %d pages (0: none)", d.readAhead, maxReadAhead)
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"fault-timeout", d.faultTimeout}, {"tick", d.tick}, {"min-hold", d.minHold}, {"max-hold", d.maxHold}} {
		if given(f.name) && f.v <= 0 {
			bad("--%s %v: give a positive duration, such as 30s or 200us", f.name, f.v)
		}
	}
	if given("fec-data") || given("fec-parity") {
		switch {
		case d.fecData == 0 && d.fecParity == 0:
		case d.fecData == 0 || d.fecParity == 0:
			bad("--fec-data %d and --fec-parity %d: give both, or neither to turn forward error correction off", d.fecData, d.fecParity)
		case d.fecData < 0 || d.fecData > maxFECData || d.fecParity < 0 || d.fecParity > maxFECParity:
			bad("--fec-data %d and --fec-parity %d: give 1 to %d data and 1 to %d parity datagrams", d.fecData, d.fecParity, maxFECData, maxFECParity)
		}
	}
	if given("mtu") && d.mtu != 0 && (d.mtu < dsmnet.MinMTU || d.mtu > dsmnet.MaxMTU) {
		bad("--mtu %d: give %d to %d bytes (0: the default)", d.mtu, dsmnet.MinMTU, dsmnet.MaxMTU)
	}
	if given("rc-size") && d.rcSize%(64<<10) != 0 {
		bad("--rc-size %d: give a multiple of 65536 (64 KiB), such as 16777216", d.rcSize)
	}
	if given("loss") && !(d.loss >= 0 && d.loss < 1) {
		bad("--loss %v: give a fraction from 0 up to, not including, 1, such as 0.05", d.loss)
	}
	return errors.Join(errs...)
}

// checkHolds refuses a configuration whose minimum hold is longer than its
// maximum, once the flags are applied and the defaults filled in: serve
// may take one from its config file and the other from a flag.
func checkHolds(cfg node.Config) error {
	def := nodeDefaults()
	lo, hi := cmp.Or(cfg.MinHold, def.MinHold), cmp.Or(cfg.MaxHold, def.MaxHold)
	if lo > hi {
		return fmt.Errorf("the minimum hold %v is longer than the maximum hold %v (--min-hold, --max-hold)", time.Duration(lo), time.Duration(hi))
	}
	return nil
}

// apply sets the options in cfg: all of them when set is nil (run), else
// only the flags named in set (serve, whose flags override its config
// file).
func (d *daemonFlags) apply(cfg *node.Config, set map[string]bool) {
	given := func(name string) bool { return set == nil || set[name] }
	if given("read-ahead") {
		cfg.ReadAhead = d.readAhead
		if d.readAhead == 0 {
			cfg.ReadAhead = -1 // in a node's configuration 0 means the default
		}
	}
	if given("fault-timeout") {
		cfg.FaultTimeout = node.Duration(d.faultTimeout)
	}
	if given("tick") {
		cfg.Tick = node.Duration(d.tick)
	}
	if given("min-hold") {
		cfg.MinHold = node.Duration(d.minHold)
	}
	if given("max-hold") {
		cfg.MaxHold = node.Duration(d.maxHold)
	}
	if given("no-hold") {
		cfg.NoHold = d.noHold
	}
	if given("compress") {
		cfg.NoCompress = !d.compress
	}
	if given("fec-data") || given("fec-parity") {
		cfg.FECData, cfg.FECParity = d.fecData, d.fecParity
	}
	if given("loss") {
		cfg.Loss = d.loss
	}
	if given("rc-size") {
		cfg.RCSize = d.rcSize
	}
	if given("mtu") {
		cfg.MTU = d.mtu
	}
}

// metricsAddrs returns the metrics address of each of n nodes from
// HOST:PORT: node i serves on PORT+i.
func metricsAddrs(hostPort string, n int) ([]string, error) {
	host, p, err := net.SplitHostPort(hostPort)
	port, perr := strconv.Atoi(p)
	if err != nil || perr != nil || port < 1 || port+n-1 > 65535 {
		return nil, fmt.Errorf("--metrics %q: give HOST:PORT with a port from 1 to %d, such as 127.0.0.1:9100: node i serves on PORT+i", hostPort, 65535-(n-1))
	}
	out := make([]string, n)
	for i := range out {
		out[i] = net.JoinHostPort(host, strconv.Itoa(port+i))
	}
	return out, nil
}
