package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/node"
	"github.com/dsmrt/dsm/uffd"
)

func cmdServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	config := fs.String("config", "", "JSON file with the node configuration (flags override it)")
	id := fs.Int("id", -1, "this node's id, 0..nodes-1")
	nodes := fs.Int("nodes", 0, "cluster size")
	addr := fs.String("addr", "", "UDP address of this node, host:port")
	peers := fs.String("peers", "", "the other nodes: id=host:port,id=host:port,...")
	key := fs.String("key", "", "cluster key (same on every node; prefer --key-file)")
	keyFile := fs.String("key-file", "", "file holding the cluster key")
	socket := fs.String("socket", "", "unix socket programs attach to")
	socketGroup := fs.String("socket-group", "", "a group whose members may use the socket too (it is 0660 then; otherwise 0600)")
	size := fs.Uint64("size", 0, "region size in bytes (same on every node; default 64 MiB)")
	base := fs.Uint64("base", 0, "region base address (same on every node; default 0x600000000000)")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on this TCP address, host:port (at /metrics)")
	var df daemonFlags
	df.register(fs, true)
	if err := fs.Parse(args); err != nil {
		return exitError(2)
	}
	var cfg node.Config
	if *config != "" {
		b, err := os.ReadFile(*config)
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return fmt.Errorf("config %s: %w", *config, err)
		}
	}
	// Flags given on the command line override the file.
	overrides := map[string]func(){
		"id":           func() { cfg.ID = *id },
		"nodes":        func() { cfg.Nodes = *nodes },
		"addr":         func() { cfg.Addr = *addr },
		"socket":       func() { cfg.Socket = *socket },
		"socket-group": func() { cfg.SocketGroup = *socketGroup },
		"size":         func() { cfg.Size = *size },
		"base":         func() { cfg.Base = *base },
		"key":          func() { cfg.Key = *key },
		"metrics":      func() { cfg.Metrics = *metrics },
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) {
		set[f.Name] = true
		if o := overrides[f.Name]; o != nil {
			o()
		}
	})
	if err := df.check(set); err != nil {
		return err
	}
	df.apply(&cfg, set)
	if err := checkHolds(cfg); err != nil {
		return err
	}
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("read key file: %w", err)
		}
		cfg.Key = strings.TrimSpace(string(b))
	}
	if set["peers"] {
		cfg.Peers = map[int]string{}
		for _, kv := range strings.Split(*peers, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			i, err := strconv.Atoi(k)
			if !ok || err != nil || v == "" {
				return fmt.Errorf("--peers: %q is not id=host:port", kv)
			}
			cfg.Peers[i] = v
		}
	}
	if *config == "" && !set["id"] {
		fs.Usage()
		return errors.New("give --config FILE or --id, --nodes, --addr, --peers, --key-file and --socket")
	}
	return node.Serve(ctx, cfg)
}

func cmdStatus(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	socket := fs.String("socket", os.Getenv("DSM_SOCKET"), "the node's unix socket")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitError(2)
	}
	var st node.Status
	if err := ctl.Call(*socket, ctl.Request{Op: ctl.OpStatus}, &st); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(st)
	}
	return printStatus(os.Stdout, st)
}

// printStatus prints a node's status as a person reads it.
func printStatus(out io.Writer, st node.Status) error {
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintf(w, "node\t%d of %d\n", st.Node, st.Nodes)
	fmt.Fprintf(w, "region\t0x%x, %d bytes, %d-byte pages, %d homed here\n", st.Base, st.Size, st.PageSize, st.HomedPages)
	fmt.Fprintf(w, "transport\tdatagrams of up to %d bytes\n", st.MTU)
	fmt.Fprintf(w, "programs\t%d attached\n", st.Programs)
	fmt.Fprintf(w, "pages\tinvalid %d, shared %d, exclusive %d\n", st.Pages["invalid"], st.Pages["shared"], st.Pages["exclusive"])
	fmt.Fprintf(w, "faults\tread %d, write %d, write-protect %d\n", st.Faults["read"], st.Faults["write"], st.Faults["write_protect"])
	fmt.Fprintf(w, "migrations\tin %d, out %d (installs %d, drops %d), %d bytes sent\n", st.Migrations["in"], st.Migrations["out"], st.Migrations["installs"], st.Migrations["drops"], st.BytesOut)
	l := st.Latency
	fmt.Fprintf(w, "fault latency\tp50 %v, p90 %v, p99 %v, max %v (last %d of %d faults)\n", l.P50, l.P90, l.P99, l.Max, l.Window, l.Count)
	if sg := st.Stages; sg.Remote.Count > 0 {
		fmt.Fprintf(w, "remote faults\tp50 %v to send the request, %v until the page or grant came, %v to install and wake (%d faults)\n",
			sg.Send.P50, sg.Remote.P50, sg.Install.P50, sg.Remote.Count)
	}
	if rc := st.RC; rc != nil {
		e := rc.Engine
		fmt.Fprintf(w, "release-consistent\t%d pages; %d releases, %d acquires (%d queued); %d fetches (%d stale), %d diffs of %d bytes, %d invalidations; %d data races found here as a home\n",
			rc.Pages, rc.Releases, rc.Acquires, rc.Queued, e.Fetches, e.Stale, e.Diffs, e.DiffBytes, e.Invalidations, rc.RacesFound)
	}
	for _, p := range st.Peers {
		state := "down"
		if p.Up {
			state = "up"
		}
		fmt.Fprintf(w, "peer %d\t%s %s, rtt %v, sent %d B, received %d B\n", p.ID, p.Addr, state, p.RTT, p.BytesOut, p.BytesIn)
	}
	if len(st.Locks) > 0 {
		fmt.Fprintln(w, "locks homed here:")
		for _, lk := range st.Locks {
			fmt.Fprintf(w, "  %s\t%s\n", lk.Name, lk.String())
		}
	}
	return w.Flush()
}

func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	socket := fs.String("socket", os.Getenv("DSM_SOCKET"), "the node's unix socket")
	asJSON := fs.Bool("json", false, "print JSON")
	out := fs.String("out", "", "directory for PNG plots (heat map, migrations per variable)")
	if err := fs.Parse(args); err != nil {
		return exitError(2)
	}
	req := ctl.Request{Op: ctl.OpReport}
	if *out != "" {
		// The daemon draws; this process writes the files, as its user.
		req.Args, _ = json.Marshal(node.ReportArgs{Plots: true})
	}
	var rep node.ReportReply
	if err := ctl.Call(*socket, req, &rep); err != nil {
		return err
	}
	// Name the node that recorded the report, and what it recorded as the
	// giving end, so that the JSON of every node of a run can be merged.
	var st node.Status
	if err := ctl.Call(*socket, ctl.Request{Op: ctl.OpStatus}, &st); err != nil {
		return err
	}
	rep.Recorders = []analyzer.Recorder{{Node: uint16(st.Node), Sent: int(st.Migrations["out"])}}
	var written []string
	if *out != "" {
		var err error
		if written, err = rep.WritePlots(*out); err != nil {
			return err
		}
	}
	if *asJSON {
		return printJSON(struct {
			analyzer.Report
			Plots []string `json:"plots,omitempty"`
		}{rep.Report, written})
	}
	fmt.Print(rep.Text())
	for _, p := range written {
		fmt.Println("wrote", p)
	}
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdProbe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitError(2)
	}
	res := uffd.Probe()
	if *asJSON {
		if err := printJSON(res); err != nil {
			return err
		}
	} else {
		fmt.Print(res.String())
	}
	if !res.OK() {
		return exitError(1)
	}
	return nil
}

func cmdKeygen(args []string) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	fmt.Println(hex.EncodeToString(b))
	return nil
}
