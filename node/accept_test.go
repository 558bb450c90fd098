package node

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/internal/ctl"
)

// syncBuffer is a bytes.Buffer safe for a process's output and a test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDaemonProcess runs a one-node daemon as a child process of the
// test binary (TestMain serves it), stopped when the test ends, and waits
// until its socket answers.
func startDaemonProcess(t *testing.T) (*exec.Cmd, Config, *syncBuffer) {
	t.Helper()
	cfg := Config{
		ID: 0, Nodes: 1, Addr: freeAddrs(t, 1)[0],
		Key:    "0123456789abcdef0123456789abcdef",
		Socket: filepath.Join(t.TempDir(), "n0.sock"), Size: 1 << 20,
	}
	js, err := json.Marshal(cfg)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), EnvDaemon+"="+string(js))
	logs := &syncBuffer{}
	cmd.Stderr = logs
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st Status
		err := ctl.Call(cfg.Socket, ctl.Request{Op: ctl.OpStatus}, &st)
		if err == nil {
			return cmd, cfg, logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not answer: %v\n%s", err, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A daemon that runs out of file descriptors (many idle connections, a low
// nofile limit) keeps its control socket: once the connections close, it
// answers again.
func TestAcceptSurvivesDescriptorExhaustion(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to lower another process's nofile limit")
	}
	cmd, cfg, logs := startDaemonProcess(t)
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/fd")
	require.NoError(t, err)
	limit := uint64(len(fds) + 8)
	require.NoError(t, unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil))

	var conns []*net.UnixConn
	for i := 0; i < 64; i++ {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: cfg.Socket, Net: "unixpacket"})
		require.NoError(t, err)
		conns = append(conns, c)
	}
	// Let the daemon accept until it has no descriptor left.
	time.Sleep(300 * time.Millisecond)
	for _, c := range conns {
		c.Close()
	}
	closed := time.Now()

	done := make(chan error, 1)
	go func() {
		var st Status
		done <- ctl.Call(cfg.Socket, ctl.Request{Op: ctl.OpStatus}, &st)
	}()
	select {
	case err := <-done:
		require.NoError(t, err, "status after the connections closed\n%s", logs)
		t.Logf("status answered %v after the connections closed", time.Since(closed).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatalf("no status 20 s after the connections closed: the control socket is dead\n%s", logs)
	}
	require.Contains(t, logs.String(), "too many open files")
}

// A client call to a daemon that is stopped (SIGSTOP, as a long pause or a
// frozen VM would) ends at its deadline with an error that says so,
// instead of hanging.
func TestCallToStoppedDaemonEnds(t *testing.T) {
	cmd, cfg, _ := startDaemonProcess(t)
	require.NoError(t, cmd.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGCONT) })
	// The signal is delivered asynchronously: wait until every thread is
	// stopped ('T' in /proc/PID/stat), or the call could still be served.
	require.Eventually(t, func() bool { return stopped(cmd.Process.Pid) }, 10*time.Second, time.Millisecond)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		var st Status
		done <- ctl.CallContext(ctx, cfg.Socket, ctl.Request{Op: ctl.OpStatus}, &st)
	}()
	select {
	case err := <-done:
		require.ErrorContains(t, err, "did not answer status in time")
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(20 * time.Second):
		t.Fatal("the call to a stopped daemon did not end at its deadline")
	}
}

// stopped reports whether every thread of process pid is stopped.
func stopped(pid int) bool {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/stat")
		if err != nil {
			return false
		}
		// The state follows the command name, which is in parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}
