// Command bench measures what page migration costs in the DSM runtime,
// beside the limits of the machine measured in the same run, and what its
// distributed locks cost, beside a sync.Mutex (-run locks).
//
// It starts the local clusters it needs (its own binary serves as node
// daemon and as the program on every node), runs each part of the suite
// and writes into the output directory a Markdown table (results.md), every
// figure with the machine it ran on (results.json) and PNG plots.
//
//	go run ./bench                       # the whole suite (a few minutes)
//	go run ./bench -quick                # a short version, under a minute
//	go run ./bench -run readfault,scan   # some parts (names or a regexp)
//	go run ./bench -list                 # the parts
//
// The limits, measured at the start and again at the end of the run (the
// lower median of each is used):
//
//   - limit/chain, the machine's floor for a remote read fault: a program's
//     load faults on a memfd page registered with userfaultfd; a second
//     process reads the fault with read(2), sends a 64-byte UDP request to
//     a third, which answers with 4 KiB; the second installs the page with
//     UFFDIO_COPY, which wakes the program. Blocking system calls on
//     locked OS threads, loopback, nothing else on the path;
//   - a userfaultfd fault resolved locally with UFFDIO_COPY;
//   - a 4 KiB round trip over raw UDP and over our KCP transport on
//     loopback, in one process and between two.
//
// Every figure is given as median, p99 and count. A fault figure is also
// given as a ratio to the limit, the median of limit/chain, and to the
// KCP limit, the local fault plus the KCP round trip (medians). The
// remote read fault, the ownership write fault and the scan also give what
// a fault costs beyond its time, over their timed loads: voluntary context
// switches of the program and of both daemons, the daemons' CPU time and
// the UDP datagrams they sent, per fault.
//
// It is a command of its own, not a set of Go benchmarks, because what it
// measures needs several processes (node daemons, one program per node)
// and because the figures must stand beside limits measured in the same
// run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	childMain()
	cfg := FullConfig()
	quick := flag.Bool("quick", false, "run a short version of the suite (under a minute)")
	out := flag.String("out", "", "directory for the results (default bench/results in the module)")
	run := flag.String("run", "", "parts to run: comma-separated names or a regexp (see -list); limits always run")
	list := flag.Bool("list", false, "list the parts and exit")
	sizes := flag.String("sizes", "", "cluster sizes for the size part, e.g. 2,4,8 (default 2,4,8; -quick 2,4)")
	depths := flag.String("scan-depths", "", "read-ahead depths for the scan part (1 = no read-ahead; d = d-1 pages asked for ahead of a sequential read fault; default 1,2,4,8,16, -quick 1,8)")
	verbose := flag.Bool("v", false, "show the daemons' logs and the workers' output as they come")
	flag.Parse()
	if flag.NArg() > 0 {
		fatal(fmt.Errorf("unexpected arguments %q (flags only; see -h)", flag.Args()))
	}
	if *list {
		for _, p := range parts {
			fmt.Printf("%-11s %s\n", p.name, p.what)
		}
		return
	}
	if *quick {
		cfg = QuickConfig()
	}
	cfg.Out = *out
	if cfg.Out == "" {
		cfg.Out = defaultOut()
	}
	if *sizes != "" {
		s, err := parseInts(*sizes)
		if err != nil {
			fatal(fmt.Errorf("-sizes: %w", err))
		}
		cfg.Sizes = s
	}
	if *depths != "" {
		d, err := parseInts(*depths)
		if err != nil {
			fatal(fmt.Errorf("-scan-depths: %w", err))
		}
		cfg.ScanDepths = d
	}
	cfg.Run = *run
	cfg.Progress = os.Stderr
	if *verbose {
		cfg.Log = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := Run(ctx, cfg)
	if res != nil {
		fmt.Print(res.markdown())
		fmt.Fprintf(os.Stderr, "wrote %s/results.md, results.json", cfg.Out)
		for _, p := range res.Plots {
			fmt.Fprintf(os.Stderr, ", %s", p)
		}
		fmt.Fprintln(os.Stderr)
	}
	if err != nil {
		fatal(err)
	}
}

// defaultOut is bench/results in the module that holds the working
// directory, or bench/results under it when there is none.
func defaultOut() string {
	dir, err := os.Getwd()
	if err != nil {
		return filepath.Join("bench", "results")
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.Contains(string(b), "module "+modulePath+"\n") {
			return filepath.Join(d, "bench", "results")
		}
		if filepath.Dir(d) == d {
			return filepath.Join("bench", "results")
		}
	}
}

// modulePath is the module this command belongs to.
const modulePath = "github.com/dsmrt/dsm"

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q is not a list of integers: %w", s, err)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
