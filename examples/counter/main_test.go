package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/internal/uffdtest"
	"github.com/dsmrt/dsm/node"
)

// The test binary is the program when envMain is set: a real cluster runs
// it once per node.
const envMain = "COUNTER_TEST_MAIN"

func TestMain(m *testing.M) {
	node.RunDaemonIfChild()
	if os.Getenv(envMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestEveryNodeSeesEveryAdd(t *testing.T) {
	uffdtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: 3, Size: 16 << 20})
	require.NoError(t, err)
	t.Cleanup(func() { c.Stop() })
	var out bytes.Buffer
	require.NoError(t, c.Run(ctx, []string{os.Args[0], "-test.run=^$"}, &out, envMain+"=1"), out.String())
	require.Equal(t, 3, strings.Count(out.String(), fmt.Sprintf("counter = %d\n", 3*adds)), out.String())
}
