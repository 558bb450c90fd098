package dsm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/internal/ctl"
)

// The layouts run by real daemons and programs; the analyzer must find
// exactly the false sharing in each, from what the daemons recorded.

const envLayout = "DSM_TEST_LAYOUT"

type stats struct {
	Hits   uint64
	Misses uint64
}

func init() { workers["layout"] = workLayout }

// layoutRun is how long the nodes contend: long enough for dozens of
// migrations whatever the machine's speed.
const layoutRun = 150 * time.Millisecond

func workLayout(r *dsm.Region) error {
	ps := r.PageSize()
	if _, err := r.Alloc("start", 16, ps); err != nil {
		return err
	}
	var mine *uint64
	switch l := os.Getenv(envLayout); l {
	case "packed", "padded":
		align := 8
		if l == "padded" {
			align = ps
		}
		a, err := r.Alloc("counter_A", 8, ps) // each layout starts on a fresh page
		if err != nil {
			return err
		}
		b, err := r.Alloc("counter_B", 8, align)
		if err != nil {
			return err
		}
		mine = word(r, []int{a, b}[r.NodeID()])
	case "true":
		off, err := r.Alloc("shared_counter", 8, ps)
		if err != nil {
			return err
		}
		mine = word(r, off)
	case "struct":
		off, err := r.AllocStruct("Stats", (*stats)(nil), ps)
		if err != nil {
			return err
		}
		s := (*stats)(r.Ptr(off))
		mine = []*uint64{&s.Hits, &s.Misses}[r.NodeID()]
	case "statsarray":
		// The most common false-sharing layout: one element per node.
		off, err := r.AllocStruct("Stats", (*[2]stats)(nil), ps)
		if err != nil {
			return err
		}
		s := (*[2]stats)(r.Ptr(off))
		mine = &s[r.NodeID()].Hits
	case "readmostly":
		table, err := r.Alloc("table", 512, ps)
		if err != nil {
			return err
		}
		hot, err := r.Alloc("hot_counter", 8, ps)
		if err != nil {
			return err
		}
		if r.NodeID() == 0 {
			for i := 0; i < 64; i++ {
				atomic.StoreUint64(word(r, table+8*i), uint64(i))
			}
		}
		if err := syncStart(r, 0); err != nil {
			return err
		}
		// Everyone reads the table again and again while node 0 alone
		// writes the hot counter on its own page.
		for i := 0; i < 2000; i++ {
			if got := atomic.LoadUint64(word(r, table+8*(i%64))); got != uint64(i%64) && got != 0 {
				return fmt.Errorf("table[%d] = %d", i%64, got)
			}
			if r.NodeID() == 0 {
				atomic.AddUint64(word(r, hot), 1)
			}
		}
		return nil
	default:
		return fmt.Errorf("unknown layout %q", l)
	}
	if err := syncStart(r, 0); err != nil {
		return err
	}
	end := time.Now().Add(layoutRun)
	for i := 0; ; i++ {
		atomic.AddUint64(mine, 1)
		if i%256 == 0 && time.Now().After(end) {
			return nil
		}
	}
}

func TestAnalyzerFindsExactlyTheFalseSharing(t *testing.T) {
	cases := []struct {
		layout string
		names  []string       // the variables a false-sharing finding must name; nil: no false sharing
		other  analyzer.Class // another finding that must be there
		fix    string         // what the false-sharing fix must say, when set
	}{
		{layout: "packed", names: []string{"counter_A", "counter_B"}},
		{layout: "padded"},
		{layout: "true", other: analyzer.TrueSharing},
		{layout: "struct", names: []string{"Stats.Hits", "Stats.Misses"}},
		{layout: "statsarray", names: []string{"Stats[0].Hits", "Stats[1].Hits"}, fix: "_ [4080]byte"},
		{layout: "readmostly"},
	}
	for _, tc := range cases {
		t.Run(tc.layout, func(t *testing.T) {
			c := startCluster(t, 2)
			runWorkers(t, c, "layout", envLayout+"="+tc.layout)
			rep, err := c.Report(0, "")
			require.NoError(t, err)
			var fs []analyzer.Finding
			other := false
			for _, f := range rep.Findings {
				if f.Class == analyzer.FalseSharing {
					fs = append(fs, f)
				}
				other = other || f.Class == tc.other
			}
			if tc.other != 0 {
				require.True(t, other, "no %v finding:\n%s", tc.other, rep.Text())
			}
			if tc.names == nil {
				require.Empty(t, fs, "false sharing reported where there is none:\n%s", rep.Text())
				return
			}
			require.Len(t, fs, 1, rep.Text())
			var got []string
			for _, v := range fs[0].Vars {
				got = append(got, v.Name)
			}
			require.ElementsMatch(t, tc.names, got, rep.Text())
			require.NotEmpty(t, fs[0].Fix, rep.Text())
			require.Contains(t, fs[0].Fix, tc.fix, rep.Text())
			t.Logf("%s", fs[0].Summary)
		})
	}
}

// The daemon (often root) writes no file where a client names: a report
// request with a directory is refused and nothing appears there; the
// pictures come back as bytes and the client writes them (cluster.Report
// and dsmnode report --out do).
func TestReportPicturesWrittenByTheClient(t *testing.T) {
	c := startCluster(t, 2)
	runWorkers(t, c, "layout", envLayout+"=packed")
	dir := t.TempDir()
	args, err := json.Marshal(map[string]string{"out": dir})
	require.NoError(t, err)
	var rep json.RawMessage
	err = ctl.Call(c.Daemons[0].Socket, ctl.Request{Op: ctl.OpReport, Args: args}, &rep)
	require.ErrorContains(t, err, "writes no files")
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, left, "the daemon wrote into a directory a client named")

	out := filepath.Join(t.TempDir(), "plots")
	r, err := c.Report(0, out)
	require.NoError(t, err)
	require.Len(t, r.Plots, 2)
	for _, p := range r.Plots {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")), "%s is no PNG", p)
	}
}
