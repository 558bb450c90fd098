package dsm_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/internal/ctl"
)

func init() {
	workers["replies"] = workReplies
	workers["joins"] = workJoins
}

// workReplies: lock calls wait for their replies on reply connections,
// as many as calls wait at once up to ctl.MaxSlots, and the calls beyond
// that on the first connection; every call completes either way.
func workReplies(r *dsm.Region) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := r.Nodes()
	for i := range 20 {
		if err := r.Barrier(ctx, "replies/warm", n); err != nil {
			return fmt.Errorf("barrier %d: %w", i, err)
		}
	}
	if !dsm.HasLockStream(r) {
		return errors.New("no lock stream joined at attach")
	}
	if open, idle := dsm.ReplySlots(r); open != 1 || idle != 1 {
		return fmt.Errorf("after 20 barriers one after the other: %d reply connections (%d idle), want 1", open, idle)
	}
	// More goroutines of node 0 wait at once than there are slots: node
	// 1's goroutines come to their barriers later.
	const waiters = ctl.MaxSlots + 4
	if r.NodeID() == 1 {
		time.Sleep(300 * time.Millisecond)
	}
	var wg sync.WaitGroup
	errs := make([]error, waiters)
	for g := range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[g] = r.Barrier(ctx, fmt.Sprintf("replies/many/%d", g), n)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if open, _ := dsm.ReplySlots(r); r.NodeID() == 0 && open != ctl.MaxSlots {
		return fmt.Errorf("%d goroutines waited at once: %d reply connections, want %d", waiters, open, ctl.MaxSlots)
	}
	// A call that gives up (its context ends while another node holds
	// the lock) leaves no reply behind for the next call to take.
	m := r.Mutex("replies/held")
	if r.NodeID() == 0 {
		if err := m.Lock(ctx); err != nil {
			return err
		}
	}
	if err := r.Barrier(ctx, "replies/locked", n); err != nil {
		return err
	}
	if r.NodeID() == 1 {
		for i := range 3 {
			short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
			err := m.Lock(short)
			cancelShort()
			if !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("Lock %d while node 0 holds it: %v, want the deadline", i, err)
			}
		}
	}
	if err := r.Barrier(ctx, "replies/gaveup", n); err != nil {
		return err
	}
	if r.NodeID() == 0 {
		m.Unlock()
	}
	for i := range 50 {
		if err := m.Lock(ctx); err != nil {
			return fmt.Errorf("Lock %d after the give-ups: %w", i, err)
		}
		m.Unlock()
		if err := r.Barrier(ctx, "replies/after", n); err != nil {
			return fmt.Errorf("barrier %d after the give-ups: %w", i, err)
		}
	}
	if open, _ := dsm.ReplySlots(r); open == 0 || dsm.JoinSecret(r) == "" {
		return fmt.Errorf("after the give-ups: %d reply connections, joining on: %v", open, dsm.JoinSecret(r) != "")
	}
	fmt.Println("replies ok")
	return nil
}

// Lock calls read their replies on connections of their own (replyconn.go),
// concurrent calls beyond the slots fall back to the first connection, and
// calls that gave up leave nothing behind.
func TestLockRepliesOnJoinedConnections(t *testing.T) {
	c := startCluster(t, 2)
	out := runWorkers(t, c, "replies")
	require.Equal(t, 2, strings.Count(out, "replies ok"), out)
}

const envJoinSecret = "DSM_TEST_JOIN_SECRET"

// workJoins: a join with a wrong secret, a slot out of range, and one from
// another process holding the right secret are all refused.
func workJoins(r *dsm.Region) error {
	socket := os.Getenv(dsm.EnvSocket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// One barrier joins slot 0.
	if err := r.Barrier(ctx, "joins/warm", 1); err != nil {
		return err
	}
	secret := dsm.JoinSecret(r)
	if secret == "" {
		return errors.New("the attach reply carried no join secret")
	}
	join := func(secret string, slot int) error {
		c, err := joinConn(socket, ctl.Request{Join: secret, Slot: slot})
		if c != nil {
			c.Close()
		}
		return err
	}
	for _, c := range []struct {
		name, secret string
		slot         int
		want         string
	}{
		{"wrong secret", strings.Repeat("0", len(secret)), 1, "no attached program has that secret"},
		{"no secret", "", 1, "no attached program has that secret"},
		{"slot out of range", secret, ctl.MaxSlots, "out of range"},
		{"negative slot", secret, -1, "out of range"},
	} {
		if err := join(c.secret, c.slot); err == nil || !strings.Contains(err.Error(), c.want) {
			return fmt.Errorf("%s: join answered %v, want an error saying %q", c.name, err, c.want)
		}
	}
	// Another process of the same user, with the right secret.
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestJoinOtherProcess$")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envWorker+"=") { // a test, not a worker
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, envJoinSecret+"="+secret, envJoinOther+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("the other process: %w\n%s", err, out)
	}
	if !strings.Contains(string(out), "only the attached process may join it") {
		return fmt.Errorf("the other process's join was not refused as another process's:\n%s", out)
	}
	// The right secret from this process is taken, in a free slot and
	// again in the same slot (which replaces the first).
	for i := range 2 {
		if err := join(secret, ctl.MaxSlots-1); err != nil {
			return fmt.Errorf("join %d of the attached process: %w", i, err)
		}
	}
	if c, err := joinConn(socket, ctl.Request{Join: "bad", Stream: true}); err == nil || !strings.Contains(err.Error(), "no attached program has that secret") {
		if c != nil {
			c.Close()
		}
		return fmt.Errorf("a lock stream with a wrong secret: %v, want it refused", err)
	}
	// A lock stream that sends garbage: the daemon's loop drops what
	// does not parse, and goes on reading it. (It replaces this program's
	// own stream, which the daemon closes: the program's next lock call
	// goes on its first connection.)
	sc, err := joinConn(socket, ctl.Request{Join: secret, Stream: true})
	if err != nil {
		return fmt.Errorf("join a lock stream: %w", err)
	}
	defer sc.Close()
	before, err := ownStatus()
	if err != nil {
		return err
	}
	hint := ctl.LockMsg{Op: ctl.LockOpPrefetch, Text: string(ctl.AppendPrefetchHint(nil, 0, uint64(r.PageSize()), false))}
	for _, b := range [][]byte{
		[]byte("{not binary}"),
		{ctl.LockMagic, 99, 0, 0},
		make([]byte, 100<<10), // longer than the loop reads
		hint.AppendBinary(nil),
	} {
		if _, err := sc.Write(b); err != nil {
			return fmt.Errorf("write to the lock stream: %w", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := ownStatus()
		if err != nil {
			return fmt.Errorf("the daemon after garbage on a lock stream: %w", err)
		}
		if st.Migrations["prefetch"] > before.Migrations["prefetch"] {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("a prefetch hint after garbage on the lock stream was not served")
		}
		time.Sleep(time.Millisecond)
	}
	if err := r.Barrier(ctx, "joins/after", 1); err != nil {
		return fmt.Errorf("a barrier after the daemon closed the program's lock stream: %w", err)
	}
	if dsm.HasLockStream(r) {
		return errors.New("the program still sends on the lock stream the daemon closed")
	}
	fmt.Println("joins ok")
	return nil
}

// joinConn opens a connection to the daemon at socket and asks to join it
// with req (its Op and Version set here): the connection on success, the
// daemon's refusal otherwise (with the connection nil).
func joinConn(socket string, req ctl.Request) (*net.UnixConn, error) {
	c, err := ctl.Dial(socket)
	if err != nil {
		return nil, err
	}
	req.Op, req.Version = ctl.OpJoin, ctl.Version
	var rep ctl.Reply
	if err = ctl.Write(c, req); err == nil {
		_, err = ctl.Read(c, make([]byte, 64<<10), &rep)
	}
	if err == nil && rep.Error != "" {
		err = errors.New(rep.Error)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

const envJoinOther = "DSM_TEST_JOIN_OTHER"

// TestJoinOtherProcess is the other process of workJoins (it does nothing
// unless workJoins runs it).
func TestJoinOtherProcess(t *testing.T) {
	if os.Getenv(envJoinOther) == "" {
		t.Skip("run by TestJoinRefusals")
	}
	c, err := joinConn(os.Getenv(dsm.EnvSocket), ctl.Request{Join: os.Getenv(envJoinSecret), Slot: 3})
	if c != nil {
		c.Close()
	}
	fmt.Println("join answered:", err)
}

// Only the attached process, with its secret, joins connections to its
// attachment; the daemon refuses the others and says why.
func TestJoinRefusals(t *testing.T) {
	c := startCluster(t, 1)
	out := runWorkers(t, c, "joins")
	require.Contains(t, out, "joins ok", out)
}
