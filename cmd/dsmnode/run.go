package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/node"
)

func cmdRun(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	n := fs.Int("n", 2, "number of nodes")
	size := fs.Uint64("size", 64<<20, "region size in bytes")
	base := fs.Uint64("base", 0, fmt.Sprintf("region base address (default 0x%x)", node.DefaultBase))
	logLevel := fs.String("log", "warn", "daemon log level: debug, info, warn, error")
	reportDir := fs.String("report", "", "when the programs exit, write the report of the whole run (every node's, merged) into this directory: report.txt, report.json and PNG plots")
	status := fs.Bool("status", false, "when the programs exit, print each node's status")
	metrics := fs.String("metrics", "", "serve each node's Prometheus metrics: node i on HOST:PORT+i")
	var df daemonFlags
	// On loopback compressing a page (s2: ~5 us) costs more than sending
	// 4 KiB.
	df.register(fs, false)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: dsmnode run -n N [flags] -- PROGRAM [ARGS]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitError(2)
	}
	if err := df.check(nil); err != nil {
		return err
	}
	tune := func(cfg *node.Config) { df.apply(cfg, nil) }
	var probe node.Config
	tune(&probe)
	if err := checkHolds(probe); err != nil {
		return err
	}
	var metricsAt []string
	if *metrics != "" {
		var err error
		if metricsAt, err = metricsAddrs(*metrics, *n); err != nil {
			return err
		}
		tune = func(cfg *node.Config) {
			df.apply(cfg, nil)
			cfg.Metrics = metricsAt[cfg.ID]
		}
	}
	prog := fs.Args()
	if len(prog) == 0 {
		fs.Usage()
		return errors.New("no program given after --")
	}
	p, err := lookProgram(prog[0])
	if err != nil {
		return err
	}
	prog[0] = p
	if *reportDir != "" {
		// Refuse a directory that cannot be made before the run, not after.
		if err := os.MkdirAll(*reportDir, 0o755); err != nil {
			return fmt.Errorf("--report: %w", err)
		}
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: *n, Size: *size, Base: *base, LogLevel: *logLevel, Tune: tune})
	if err != nil {
		return fmt.Errorf("start the cluster: %w", err)
	}
	defer c.Stop()
	// Where to reach the nodes while the run lives: dsmnode status and
	// report take these sockets.
	for i, d := range c.Daemons {
		line := fmt.Sprintf("dsmnode run: node %d: socket %s", i, d.Socket)
		if metricsAt != nil {
			line += fmt.Sprintf(", metrics http://%s/metrics", metricsAt[i])
		}
		fmt.Fprintln(os.Stderr, line)
	}
	runErr := c.Run(ctx, prog, os.Stdout)
	// The daemons still run: ask them before they stop, whether or not the
	// programs succeeded.
	var errs []error
	if *status {
		errs = append(errs, printStatuses(os.Stdout, c))
	}
	if *reportDir != "" {
		errs = append(errs, writeRunReport(os.Stdout, c, *reportDir))
	}
	if runErr != nil {
		return errors.Join(append([]error{runErr}, errs...)...)
	}
	errs = append(errs, c.Stop())
	return errors.Join(errs...)
}

// printStatuses prints the status of every node of c, as dsmnode status
// does, a blank line between nodes.
func printStatuses(w io.Writer, c *cluster.Cluster) error {
	var errs []error
	for i := range c.Daemons {
		if i > 0 {
			fmt.Fprintln(w)
		}
		st, err := c.Status(i)
		if err != nil {
			errs = append(errs, fmt.Errorf("status of node %d: %w", i, err))
			continue
		}
		if err := printStatus(w, st); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// writeRunReport merges the reports of every node of c and writes them
// into dir: report.txt, report.json and the PNG plots. It prints the paths
// written to w.
func writeRunReport(w io.Writer, c *cluster.Cluster, dir string) error {
	rep, err := c.MergedReport()
	if rep.Parts == 0 {
		return fmt.Errorf("report: %w", err)
	}
	// A node that did not answer is missing from the report, which says
	// so; the others' are worth writing.
	paths, werr := writeReport(dir, rep)
	for _, p := range paths {
		fmt.Fprintln(w, "wrote", p)
	}
	if err != nil {
		err = fmt.Errorf("report: %w", err)
	}
	return errors.Join(err, werr)
}

// writeReport writes a report into dir, creating it if needed: its plots,
// report.txt (as dsmnode report prints it) and report.json (as dsmnode
// report --json prints it, with the plots' paths). It returns the paths
// written.
func writeReport(dir string, rep analyzer.Report) ([]string, error) {
	plots, err := rep.Plots()
	if err != nil {
		return nil, err
	}
	paths, err := node.ReportReply{Plots: plots}.WritePlots(dir)
	if err != nil {
		return paths, err
	}
	txt := filepath.Join(dir, "report.txt")
	if err := os.WriteFile(txt, []byte(rep.Text()), 0o644); err != nil {
		return paths, err
	}
	b, err := json.MarshalIndent(struct {
		analyzer.Report
		Plots []string `json:"plots,omitempty"`
	}{rep, paths}, "", "  ")
	if err != nil {
		return paths, err
	}
	js := filepath.Join(dir, "report.json")
	if err := os.WriteFile(js, append(b, '\n'), 0o644); err != nil {
		return paths, err
	}
	return append([]string{txt, js}, paths...), nil
}

// lookProgram resolves the program like a shell would, with a clear error.
func lookProgram(p string) (string, error) {
	if strings.Contains(p, "/") {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return "", fmt.Errorf("program %s: %w", p, err)
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("program %s is not executable (build it with go build -o %s first)", p, p)
		}
		return abs, nil
	}
	return p, nil
}
