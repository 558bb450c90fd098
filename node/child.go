package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
)

// EnvDaemon names the environment variable that turns a process into a node
// daemon: it holds the node's Config as JSON. A launcher (package cluster)
// starts its own executable with it set, so that a single binary (dsmnode,
// the demo, a test binary) can serve as its own daemon.
const EnvDaemon = "DSM_NODE_DAEMON"

// EnvCPUProfile, when set, makes a daemon write a CPU profile to its value
// with ".<node id>" appended: for finding where the fault path spends time.
const EnvCPUProfile = "DSM_CPUPROFILE"

// EnvMemProfile, when set, makes a daemon record every allocation and
// write the allocation profile to its value with ".<node id>" appended when
// it stops: for counting what the fault path allocates (it slows the
// daemon down).
const EnvMemProfile = "DSM_MEMPROFILE"

// EnvLogLevel sets the daemon's log level: debug, info, warn or error.
const EnvLogLevel = "DSM_LOG_LEVEL"

// RunDaemonIfChild runs a node daemon and exits if the process was started
// as one (EnvDaemon is set); otherwise it returns at once. Call it first in
// main, and in TestMain of tests that start clusters.
func RunDaemonIfChild() {
	js, ok := os.LookupEnv(EnvDaemon)
	if !ok {
		return
	}
	os.Unsetenv(EnvDaemon)
	var cfg Config
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "dsmnode: bad %s: %v\n", EnvDaemon, err)
		os.Exit(2)
	}
	if path := os.Getenv(EnvCPUProfile); path != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", path, cfg.ID))
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	memPath := os.Getenv(EnvMemProfile)
	if memPath != "" {
		runtime.MemProfileRate = 1 // every allocation: for counting them per fault
	}
	err := Serve(context.Background(), cfg)
	if memPath != "" {
		if f, ferr := os.Create(fmt.Sprintf("%s.%d", memPath, cfg.ID)); ferr == nil {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "dsmnode: node %d: %v\n", cfg.ID, err)
		os.Exit(1)
	}
	pprof.StopCPUProfile()
	os.Exit(0)
}

// daemonGCPercent is the collector's GOGC that Serve sets for the daemon's
// process, unless the GOGC environment variable is set.
//
// A daemon's heap is mostly page state that lives as long as it does (the
// coherence engine's, the analyzer's), beside the messages and pages of
// each fault, which live for a moment. With GOGC=100 the heap grows to
// twice the long-lived state before each collection, and that headroom was
// a third of the daemon's resident memory: the memory part of the
// benchmark (1 GiB region, 3 nodes) measured 74 MiB RssAnon at 100 and 61
// at 50. The collector then runs twice as often, but its work is marking
// the long-lived state, a few milliseconds a cycle, under 3% of the
// daemon's CPU, and fills run side by side took the same time.
const daemonGCPercent = 50

// Serve runs a node with cfg until SIGINT or SIGTERM (or ctx ends).
func Serve(ctx context.Context, cfg Config) error {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(daemonGCPercent)
	}
	if cfg.Logger == nil {
		cfg.Logger = NewLogger(os.Getenv(EnvLogLevel)).With("node", cfg.ID)
	}
	n, err := New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg = n.Config()
	cfg.Logger.Info("node serving", "socket", cfg.Socket, "addr", n.tr.LocalAddr().String(),
		"nodes", cfg.Nodes, "base", fmt.Sprintf("0x%x", cfg.Base), "size", cfg.Size)
	return n.Run(ctx)
}

// NewLogger makes a text logger on stderr at the named level (info when
// empty or unknown).
func NewLogger(level string) *slog.Logger {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
