package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/internal/uffdtest"
)

// A program must not share a Go runtime with the daemon that serves its
// faults, so the program that faults is this test binary started again,
// with envMetricsWorker naming the socket it attaches to and
// envMetricsWork what it does. It is run from init: TestMain lives in
// another file and need not know about it.
const (
	envMetricsWorker = "DSM_NODE_TEST_METRICS_WORKER"
	envMetricsWork   = "DSM_NODE_TEST_METRICS_WORK"
)

func init() {
	if sock := os.Getenv(envMetricsWorker); sock != "" {
		if err := metricsWorker(sock, os.Getenv(envMetricsWork)); err != nil {
			fmt.Fprintln(os.Stderr, "metrics worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// Pages the workers touch: the writer's pages, which the reader then reads
// and writes, and pages only the reader writes.
const (
	sharedPages = 16
	ownPage     = 64 // first of sharedPages pages beyond any read-ahead
)

// metricsWorker attaches to the daemon at sock. Work "write" writes the
// shared pages; work "read" reads them (read faults, pages migrating from
// the writer's node), writes them (write-protect faults), writes pages of
// its own (write faults) and takes a lock once.
func metricsWorker(sock, work string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := dsm.Attach(ctx, dsm.Options{Socket: sock})
	if err != nil {
		return err
	}
	defer r.Close()
	ps := r.PageSize()
	// Plain loads and stores, not sync/atomic: under the race detector
	// an atomic store to a missing page faults as a read first (then a
	// write-protect fault), and no write fault is seen. One goroutine
	// touches the region.
	word := func(page int) *uint64 { return (*uint64)(r.Ptr(page * ps)) }
	switch work {
	case "write":
		for i := range sharedPages {
			*word(i) = uint64(i) + 1
		}
	case "read":
		for i := range sharedPages {
			if v := *word(i); v != uint64(i)+1 {
				return fmt.Errorf("page %d holds %d, not what the writer wrote", i, v)
			}
		}
		for i := range sharedPages {
			*word(i) += 100
			*word(ownPage + i) = 1
		}
		m := r.Mutex("metrics-test")
		if err := m.Lock(ctx); err != nil {
			return err
		}
		if err := m.Unlock(); err != nil {
			return err
		}
	case "rcwrite", "rcread":
		off, err := r.Alloc("metrics_rc", sharedPages*ps, ps, dsm.ReleaseConsistent)
		if err != nil {
			return err
		}
		w := func(i int) *uint64 { return (*uint64)(r.Ptr(off + i*ps)) }
		if work == "rcwrite" {
			for i := range sharedPages {
				*w(i) = uint64(i) + 7
			}
			return r.Release(ctx)
		}
		if err := r.Acquire(ctx); err != nil {
			return err
		}
		for i := range sharedPages {
			if v := *w(i); v != uint64(i)+7 {
				return fmt.Errorf("release-consistent page %d holds %d after the acquire, not what the writer released", i, v)
			}
		}
	default:
		return fmt.Errorf("unknown work %q", work)
	}
	return nil
}

// runMetricsWorker runs a worker against the daemon at sock and waits for
// it to finish.
func runMetricsWorker(t *testing.T, sock, work string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envMetricsWorker+"="+sock, envMetricsWork+"="+work)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "worker %s: %s", work, out)
}

// scrape fetches and parses node n's metrics.
// metricsPair starts two nodes serving metrics, with a release-consistent
// area of rcSize bytes, and waits until they see each other. Locks are
// granted at once: no lease from an earlier run to wait out.
func metricsPair(t *testing.T, rcSize uint64) (a, b Config, na, nb *Node) {
	t.Helper()
	a, b = pair(t, nil)
	for _, c := range []*Config{&a, &b} {
		c.Metrics = "127.0.0.1:0"
		c.RCSize = rcSize
		c.FreshLocks = true
	}
	na, nb = start(t, a), start(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, na.WaitPeers(ctx))
	require.NoError(t, nb.WaitPeers(ctx))
	return a, b, na, nb
}

func scrape(t *testing.T, n *Node) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + n.MetricsAddr().String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return fams
}

// metric returns the metric of family name whose labels include want
// (pairs of name and value), failing the test if there is none.
func metric(t *testing.T, fams map[string]*dto.MetricFamily, name string, want ...string) *dto.Metric {
	t.Helper()
	f := fams[name]
	require.NotNil(t, f, "no family %s", name)
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == want[i] && l.GetValue() == want[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	t.Fatalf("no %s with labels %v", name, want)
	return nil
}

// value is the value of a counter or gauge.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	m := metric(t, fams, name, want...)
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

// A two-node cluster with metrics on: after programs fault and lock, a
// scrape of each node parses, and the families say what happened.
func TestMetricsScrape(t *testing.T) {
	uffdtest.Require(t)
	a, b, na, nb := metricsPair(t, 0)

	runMetricsWorker(t, b.Socket, "write")
	runMetricsWorker(t, a.Socket, "read")

	// Every fault the reader needed was served before it exited, but a
	// fault its runtime retried may still be read after: wait until node
	// 0 has none left, so that every fault counted is also resolved.
	var fa map[string]*dto.MetricFamily
	for deadline := time.Now().Add(10 * time.Second); ; {
		fa = scrape(t, na)
		if value(t, fa, "dsm_faults_waiting") == 0 {
			break
		}
		require.False(t, time.Now().After(deadline), "faults still waiting on node 0")
		time.Sleep(10 * time.Millisecond)
	}
	fb := scrape(t, nb)

	read := value(t, fa, "dsm_faults_total", "kind", "read")
	write := value(t, fa, "dsm_faults_total", "kind", "write")
	wp := value(t, fa, "dsm_faults_total", "kind", "write_protect")
	require.Positive(t, read, "read faults (fewer than the pages read: read-ahead)")
	require.GreaterOrEqual(t, write, float64(sharedPages), "write faults")
	require.Positive(t, wp, "write-protect faults")

	lat := metric(t, fa, "dsm_fault_latency_seconds").GetHistogram()
	require.Equal(t, uint64(read+write+wp), lat.GetSampleCount(), "one latency per fault")
	require.Positive(t, lat.GetSampleSum())
	var prev uint64
	for _, bk := range lat.GetBucket() {
		require.GreaterOrEqual(t, bk.GetCumulativeCount(), prev, "cumulative buckets")
		prev = bk.GetCumulativeCount()
	}
	require.LessOrEqual(t, prev, lat.GetSampleCount())

	local := value(t, fa, "dsm_faults_resolved_total", "source", "local")
	remote := value(t, fa, "dsm_faults_resolved_total", "source", "remote")
	require.Equal(t, lat.GetSampleCount(), uint64(local+remote), "every fault resolved once")
	require.Positive(t, remote, "faults on pages node 1 wrote")
	stage := metric(t, fa, "dsm_fault_stage_seconds", "stage", "remote").GetHistogram()
	require.Positive(t, stage.GetSampleCount())
	require.LessOrEqual(t, stage.GetSampleCount(), uint64(remote), "one stage timeline per page, for all its faults")

	require.Positive(t, value(t, fa, "dsm_migrations_total", "direction", "in"), "node 0 received pages node 1 wrote")
	require.Positive(t, value(t, fb, "dsm_migrations_total", "direction", "out"), "node 1 handed them over")

	lock := metric(t, fa, "dsm_lock_wait_seconds", "outcome", "granted").GetHistogram()
	require.Equal(t, uint64(1), lock.GetSampleCount(), "one lock taken")
	require.Zero(t, value(t, fa, "dsm_lock_requests_waiting"))

	for id, fams := range []map[string]*dto.MetricFamily{fa, fb} {
		peer := fmt.Sprint(1 - id)
		require.Equal(t, 1.0, value(t, fams, "dsm_peers_up"), "node %d", id)
		require.Equal(t, 1.0, value(t, fams, "dsm_peer_up", "peer", peer), "node %d", id)
		require.Positive(t, value(t, fams, "dsm_transport_sent_bytes_total", "peer", peer))
		require.Positive(t, value(t, fams, "dsm_transport_received_bytes_total", "peer", peer))
		require.Positive(t, value(t, fams, "dsm_transport_sent_datagrams_total", "peer", peer))
		require.Positive(t, value(t, fams, "dsm_transport_received_datagrams_total", "peer", peer))
		value(t, fams, "dsm_transport_retransmits_total", "peer", peer)
		require.Positive(t, value(t, fams, "dsm_coherence_sent_bytes_total"))
		require.Equal(t, 1.0, value(t, fams, "dsm_attaches_total"), "node %d", id)
		require.Zero(t, value(t, fams, "dsm_coherence_anomalies_total"))
		var pages float64
		for _, st := range []string{"invalid", "shared", "exclusive"} {
			pages += value(t, fams, "dsm_pages", "state", st)
		}
		require.Equal(t, float64(a.Size)/float64(os.Getpagesize()), pages, "node %d", id)
		// Every family of the node's own carries its id.
		for name, f := range fams {
			if !strings.HasPrefix(name, "dsm_") {
				continue
			}
			for _, m := range f.GetMetric() {
				require.Contains(t, m.GetLabel(), &dto.LabelPair{Name: ptr("node"), Value: ptr(fmt.Sprint(id))}, name)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

// The release-consistent area's counters: node 1 writes one word in each of
// 16 pages and releases, node 0 acquires and reads them. (The allocator's
// lock adds a release or acquire of its own to each node's count.)
func TestMetricsReleaseConsistent(t *testing.T) {
	uffdtest.Require(t)
	a, b, na, nb := metricsPair(t, 256<<10)

	runMetricsWorker(t, b.Socket, "rcwrite")
	runMetricsWorker(t, a.Socket, "rcread")
	fa, fb := scrape(t, na), scrape(t, nb)

	require.GreaterOrEqual(t, value(t, fb, "dsm_rc_operations_total", "op", "release"), 1.0)
	require.GreaterOrEqual(t, value(t, fa, "dsm_rc_operations_total", "op", "acquire"), 1.0)
	diffs := value(t, fb, "dsm_rc_diffs_total", "home", "local") + value(t, fb, "dsm_rc_diffs_total", "home", "remote")
	require.Equal(t, float64(sharedPages), diffs, "one diff per written page")
	require.Positive(t, value(t, fb, "dsm_rc_diffs_total", "home", "remote"), "pages homed on node 0 (by the DHT)")
	require.GreaterOrEqual(t, value(t, fb, "dsm_rc_diff_bytes_total"), float64(sharedPages), "at least a byte a page")
	require.GreaterOrEqual(t, value(t, fa, "dsm_rc_fetches_total"), float64(sharedPages), "node 0 fetched every page it read")
	for _, f := range []map[string]*dto.MetricFamily{fa, fb} {
		require.Zero(t, value(t, f, "dsm_rc_races_total"))
		require.Zero(t, value(t, f, "dsm_rc_shared_pages_total"), "no page is homed in blocks")
		value(t, f, "dsm_rc_invalidations_total")
		value(t, f, "dsm_rc_payload_notices_total")
	}
}

// A metrics address that is malformed or taken is refused with an error
// that names it, and the node releases what it had bound.
func TestMetricsBadAddress(t *testing.T) {
	a, _ := pair(t, nil)
	for _, addr := range []string{"nonsense", "127.0.0.1:noport", "127.0.0.1:99999"} {
		c := a
		c.Metrics = addr
		_, err := New(c)
		require.ErrorContains(t, err, addr)
		require.ErrorContains(t, err, "metrics")
	}

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	c := a
	c.Metrics = taken.Addr().String()
	_, err = New(c)
	require.ErrorContains(t, err, "metrics on "+c.Metrics)
	require.ErrorContains(t, err, "address already in use")
	taken.Close()
	// The failed node let go of its socket and UDP port: the same
	// configuration now starts.
	n := start(t, c)
	require.Equal(t, c.Metrics, n.MetricsAddr().String())

	a.Socket += ".off"
	a.Addr = freeAddrs(t, 1)[0]
	require.Nil(t, start(t, a).MetricsAddr(), "no metrics unless asked")
}
