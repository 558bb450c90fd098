// Command dsmnode runs and inspects the nodes of a DSM cluster.
//
//	dsmnode run -n 3 -- ./myprog          a 3-node cluster on loopback, one ./myprog per node
//	dsmnode run --report DIR -- ./myprog  ... and the false-sharing report of the whole run in DIR
//	dsmnode serve --config node1.json     one node of a real cluster (flags work too)
//	dsmnode status --socket PATH          pages by state, faults, migrations, latency percentiles
//	dsmnode report --socket PATH          false-sharing findings of a running node
//	dsmnode probe                         can this machine and user run a node?
//	dsmnode keygen                        a new cluster key
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/dsmrt/dsm/node"
)

const usage = `usage: dsmnode <command> [flags]

commands:
  run -n N [flags] -- PROGRAM [ARGS]   run a local cluster of N nodes and PROGRAM once per node
                                       (--report DIR: the report of the whole run; --status;
                                       --metrics HOST:PORT; the daemon flags of serve)
  serve [--config FILE] [flags]        run one node of a cluster
  status --socket PATH [--json]        show a node's pages, faults, migrations, latency, peers, locks
  report --socket PATH [--json] [--out DIR]
                                       show a node's false-sharing findings (and write PNG plots)
  probe                                check that this machine and user can run a node
  keygen                               print a new random cluster key

Run 'dsmnode <command> -h' for the flags of a command.
`

func main() {
	node.RunDaemonIfChild()
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx := context.Background()
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(ctx, args)
	case "serve":
		err = cmdServe(ctx, args)
	case "status":
		err = cmdStatus(args)
	case "report":
		err = cmdReport(args)
	case "probe":
		err = cmdProbe(args)
	case "keygen":
		err = cmdKeygen(args)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "dsmnode: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		if ee, ok := err.(exitError); ok {
			os.Exit(int(ee))
		}
		fmt.Fprintf(os.Stderr, "dsmnode %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// exitError ends the command with a status and no further message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
