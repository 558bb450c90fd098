// Package cluster starts a local cluster of node daemons on loopback, each
// in a process of its own, and runs one copy of a program per node, the way
// mpirun does for MPI programs.
//
// It has its own package because dsmnode run, the false-sharing demo, the
// benchmarks and the multi-process tests all need the same thing: real
// daemons, real processes, real UDP sockets, and nothing left running
// afterwards. The daemons are the caller's own executable started with
// node.EnvDaemon set, so the caller's main (or TestMain) must call
// node.RunDaemonIfChild first.
package cluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/node"
)

// Environment variables a program started by Run receives.
const (
	EnvSocket = "DSM_SOCKET"
	EnvNodeID = "DSM_NODE_ID"
	EnvNodes  = "DSM_NODES"
)

// Options configure a local cluster.
type Options struct {
	Nodes      int           // number of nodes (default 2)
	Size       uint64        // region size (default 64 MiB)
	Base       uint64        // region base (default node.DefaultBase)
	Dir        string        // directory for sockets (default: a new temporary one, removed by Stop)
	Executable string        // the daemon binary (default: this executable)
	Args       []string      // arguments for the daemon binary, before the environment takes over
	Log        io.Writer     // daemons' log lines, prefixed with [dN] (default os.Stderr)
	LogLevel   string        // daemons' log level (default warn)
	Env        []string      // extra environment for the daemons
	Ready      time.Duration // how long to wait for the cluster to form (default 20s)
	// Tune, when set, adjusts each node's configuration before its daemon
	// starts (compression, FEC, injected loss, ...).
	Tune func(*node.Config)
	// Addrs, when set, is each node's UDP address (default: free ports on
	// loopback).
	Addrs []string
	// Netns, when set, names a network namespace per node that its daemon
	// runs in (ip netns exec): for tests that cut a node off the network.
	Netns []string
}

// Daemon is one node daemon of a local cluster.
type Daemon struct {
	ID     int
	cfg    node.Config
	Socket string
	Addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// Cluster is a running local cluster.
type Cluster struct {
	Daemons []*Daemon
	opts    Options
	tmp     bool
	mu      sync.Mutex
	stopped bool
}

// Start launches the daemons and waits until every node has completed the
// handshake with every other. On error, everything it started is stopped.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Nodes < 1 || o.Nodes > 64 {
		return nil, fmt.Errorf("a local cluster has 1..64 nodes, not %d", o.Nodes)
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	if o.Ready == 0 {
		o.Ready = 20 * time.Second
	}
	if o.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find this executable to start daemons: %w", err)
		}
		o.Executable = exe
	}
	c := &Cluster{opts: o}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "dsm-cluster-")
		if err != nil {
			return nil, fmt.Errorf("socket directory: %w", err)
		}
		c.opts.Dir, c.tmp = d, true
	}
	if (o.Addrs != nil && len(o.Addrs) != o.Nodes) || (o.Netns != nil && len(o.Netns) != o.Nodes) {
		c.Stop()
		return nil, fmt.Errorf("%d nodes need %d addresses and namespaces, not %d and %d", o.Nodes, o.Nodes, len(o.Addrs), len(o.Netns))
	}
	addrs := o.Addrs
	if addrs == nil {
		var err error
		if addrs, err = freeUDPAddrs(o.Nodes); err != nil {
			c.Stop()
			return nil, err
		}
	}
	key := make([]byte, 16)
	rand.Read(key)
	for i := 0; i < o.Nodes; i++ {
		cfg := node.Config{
			ID: i, Nodes: o.Nodes, Addr: addrs[i], Peers: map[int]string{},
			Key:    hex.EncodeToString(key),
			Socket: filepath.Join(c.opts.Dir, fmt.Sprintf("node%d.sock", i)),
			Base:   o.Base, Size: o.Size,
			FreshLocks: true,
			// On loopback compressing a page costs more (s2: ~5 us) than
			// sending 4 KiB; Tune can turn it back on.
			NoCompress: true,
		}
		for j, a := range addrs {
			if j != i {
				cfg.Peers[j] = a
			}
		}
		if o.Tune != nil {
			o.Tune(&cfg)
		}
		d, err := c.startDaemon(cfg)
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Daemons = append(c.Daemons, d)
	}
	rctx, cancel := context.WithTimeout(ctx, o.Ready)
	defer cancel()
	if err := c.waitReady(rctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func freeUDPAddrs(n int) ([]string, error) {
	var conns []net.PacketConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var out []string
	for i := 0; i < n; i++ {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free UDP port on loopback: %w", err)
		}
		conns = append(conns, pc)
		out = append(out, pc.LocalAddr().String())
	}
	return out, nil
}

func (c *Cluster) startDaemon(cfg node.Config) (*Daemon, error) {
	js, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(c.opts.Executable, c.opts.Args...)
	if c.opts.Netns != nil {
		// ip execs the daemon in place: the process is the daemon's.
		cmd = exec.Command("ip", append([]string{"netns", "exec", c.opts.Netns[cfg.ID], c.opts.Executable}, c.opts.Args...)...)
	}
	cmd.Env = append(os.Environ(), c.opts.Env...)
	cmd.Env = append(cmd.Env, node.EnvDaemon+"="+string(js), node.EnvLogLevel+"="+c.opts.LogLevel)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Stdout = prefixWriter(c.opts.Log, fmt.Sprintf("[d%d] ", cfg.ID))
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start daemon %d (%s): %w", cfg.ID, c.opts.Executable, err)
	}
	d := &Daemon{ID: cfg.ID, cfg: cfg, Socket: cfg.Socket, Addr: cfg.Addr, cmd: cmd, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		cmd.Stdout.(io.Closer).Close()
		close(d.exited)
	}()
	return d, nil
}

// waitReady polls every daemon's status until all peers are up.
func (c *Cluster) waitReady(ctx context.Context) error {
	for _, d := range c.Daemons {
		for {
			var st node.Status
			err := ctl.Call(d.Socket, ctl.Request{Op: ctl.OpStatus}, &st)
			if err == nil && allUp(st) {
				break
			}
			select {
			case <-d.exited:
				return fmt.Errorf("daemon %d exited while the cluster formed: %v (its log above says why)", d.ID, d.err)
			case <-ctx.Done():
				if err != nil {
					return fmt.Errorf("daemon %d did not answer on %s: %w", d.ID, d.Socket, err)
				}
				return fmt.Errorf("daemon %d did not reach every peer: %s", d.ID, downPeers(st))
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

func allUp(st node.Status) bool {
	up := 0
	for _, p := range st.Peers {
		if p.Up {
			up++
		}
	}
	return up == st.Nodes-1
}

func downPeers(st node.Status) string {
	s := ""
	for _, p := range st.Peers {
		if !p.Up {
			s += fmt.Sprintf(" node %d (%s)", p.ID, p.Addr)
		}
	}
	return "down:" + s
}

// PID returns the process id of the daemon, for reading what it spends
// (/proc/PID). After a Restart it is the new process's.
func (d *Daemon) PID() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Env is the environment a program attached to node i needs.
func (c *Cluster) Env(i int) []string {
	return []string{
		EnvSocket + "=" + c.Daemons[i].Socket,
		EnvNodeID + "=" + strconv.Itoa(i),
		EnvNodes + "=" + strconv.Itoa(len(c.Daemons)),
	}
}

// Kill sends SIGKILL to daemon i and waits for it to exit.
func (c *Cluster) Kill(i int) {
	d := c.Daemons[i]
	d.cmd.Process.Kill()
	<-d.exited
}

// Restart starts daemon i again with the same configuration, after Kill. It
// does not wait for the new daemon to reach its peers.
func (c *Cluster) Restart(i int) error {
	d, err := c.startDaemon(c.Daemons[i].cfg)
	if err != nil {
		return err
	}
	c.Daemons[i] = d
	return nil
}

// Status asks daemon i for its status.
func (c *Cluster) Status(i int) (node.Status, error) {
	var st node.Status
	err := ctl.Call(c.Daemons[i].Socket, ctl.Request{Op: ctl.OpStatus}, &st)
	return st, err
}

// Report is a daemon's analyzer report and the paths of the pictures
// written for it.
type Report struct {
	analyzer.Report
	Plots []string `json:"plots,omitempty"`
}

// Report asks daemon i for its analyzer report; when out is not empty it
// also asks for the pictures and writes them there (this process writes
// them, not the daemon). The report names node i as its recorder, for
// analyzer.Merge.
func (c *Cluster) Report(i int, out string) (Report, error) {
	rep, err := c.nodeReport(i, out != "")
	if err != nil {
		return Report{}, err
	}
	r := Report{Report: rep.Report}
	if out != "" {
		paths, err := rep.WritePlots(out)
		r.Plots = paths
		if err != nil {
			return r, err
		}
	}
	return r, nil
}

// nodeReport asks daemon i for its report, with the pictures when plots is
// set, and names the node that recorded it with the migrations it recorded
// as the node that gave the page away (its status counts them out): what
// analyzer.Merge needs to count each transfer once.
func (c *Cluster) nodeReport(i int, plots bool) (node.ReportReply, error) {
	req := ctl.Request{Op: ctl.OpReport}
	if plots {
		req.Args, _ = json.Marshal(node.ReportArgs{Plots: true})
	}
	var rep node.ReportReply
	if err := ctl.Call(c.Daemons[i].Socket, req, &rep); err != nil {
		return rep, fmt.Errorf("report of node %d: %w", i, err)
	}
	// Asked after the report, so that a live node's count covers the
	// records in it; Merge bounds what it leaves out by what is there.
	st, err := c.Status(i)
	if err != nil {
		return rep, fmt.Errorf("status of node %d: %w", i, err)
	}
	rep.Recorders = []analyzer.Recorder{{Node: uint16(i), Sent: int(st.Migrations["out"])}}
	return rep, nil
}

// MergedReport asks every daemon for its analyzer report and merges them
// (analyzer.Merge) into one report over the whole cluster. When some
// daemons do not answer, it merges the reports of the others and the error
// names the ones missing.
func (c *Cluster) MergedReport() (analyzer.Report, error) {
	var parts []analyzer.Report
	var errs []error
	for i := range c.Daemons {
		rep, err := c.nodeReport(i, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		parts = append(parts, rep.Report)
	}
	if len(parts) == 0 {
		return analyzer.Report{}, errors.Join(errs...)
	}
	return analyzer.Merge(parts...), errors.Join(errs...)
}

// Stop stops every daemon (SIGTERM, then SIGKILL after two seconds) and
// removes the temporary directory. It is safe to call more than once.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	var errs []error
	for _, d := range c.Daemons {
		d.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(2 * time.Second)
	for _, d := range c.Daemons {
		select {
		case <-d.exited:
		case <-deadline:
			d.cmd.Process.Kill()
			<-d.exited
			errs = append(errs, fmt.Errorf("daemon %d ignored SIGTERM and was killed", d.ID))
		}
	}
	if c.tmp {
		os.RemoveAll(c.opts.Dir)
	}
	return errors.Join(errs...)
}

// prefixWriter returns a writer that prefixes every line with prefix. Close
// it when the writer is done.
func prefixWriter(w io.Writer, prefix string) io.WriteCloser {
	pr, pw := io.Pipe()
	p := &prefixed{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			fmt.Fprintf(w, "%s%s\n", prefix, s.Bytes())
		}
		io.Copy(io.Discard, pr)
	}()
	return p
}

// prefixed is prefixWriter's writer: Close returns once every line written
// before it has reached the underlying writer.
type prefixed struct {
	pw   *io.PipeWriter
	done chan struct{}
}

func (p *prefixed) Write(b []byte) (int, error) { return p.pw.Write(b) }

func (p *prefixed) Close() error {
	err := p.pw.Close()
	<-p.done
	return err
}
