// Command counter is the smallest useful program that links package dsm:
// every node adds to one counter in the shared region and, once every node
// is done, prints what it sees. The README measures its binary's size.
//
//	go build -o counter ./examples/counter
//	go run ./cmd/dsmnode run -n 3 -- ./counter
package main

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/dsmrt/dsm/dsm"
)

// adds is how many times each node adds one.
const adds = 1000

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "counter:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	r, err := dsm.Attach(ctx, dsm.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	off, err := r.Alloc("counter", 8, 8)
	if err != nil {
		return err
	}
	c := (*uint64)(r.Ptr(off))
	for range adds {
		atomic.AddUint64(c, 1)
	}
	if err := r.Barrier(ctx, "counted", r.Nodes()); err != nil {
		return err
	}
	fmt.Printf("node %d: counter = %d\n", r.NodeID(), atomic.LoadUint64(c))
	return nil
}
