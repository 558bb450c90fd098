package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Run starts argv once per node, with that node's environment (Env) plus
// env, and waits for every instance. Each line an instance prints is
// prefixed with "[i] ". When an instance fails, or a daemon dies, or ctx
// ends, the other instances are stopped (SIGTERM, then SIGKILL), since they
// may wait forever for the one that is gone. The error names every instance
// that failed.
func (c *Cluster) Run(ctx context.Context, argv []string, out io.Writer, env ...string) error {
	if len(argv) == 0 {
		return errors.New("no program to run: give it after --")
	}
	if out == nil {
		out = os.Stdout
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := len(c.Daemons)
	errs := make([]error, n)
	cmds := make([]*exec.Cmd, n)
	var wg sync.WaitGroup
	var once sync.Once
	var cause error
	fail := func(err error) {
		once.Do(func() { cause = err; cancel() })
	}
	for i := 0; i < n; i++ {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(append(os.Environ(), c.Env(i)...), env...)
		w := prefixWriter(out, fmt.Sprintf("[%d] ", i))
		cmd.Stdout, cmd.Stderr = w, w
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			w.Close()
			fail(fmt.Errorf("start instance %d: %w", i, err))
			errs[i] = err
			break
		}
		cmds[i] = cmd
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := cmd.Wait()
			w.Close() // every line is out before Run returns
			if err != nil {
				errs[i] = err
				fail(fmt.Errorf("instance %d failed: %w", i, err))
			}
		}(i)
	}
	// Watch the daemons: a program whose daemon died cannot finish.
	for _, d := range c.Daemons {
		go func(d *Daemon) {
			select {
			case <-d.exited:
				fail(fmt.Errorf("daemon %d exited: %v", d.ID, d.err))
			case <-ctx.Done():
			}
		}(d)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		for _, cmd := range cmds {
			if cmd != nil && cmd.ProcessState == nil {
				cmd.Process.Signal(syscall.SIGTERM)
			}
		}
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			for _, cmd := range cmds {
				if cmd != nil {
					cmd.Process.Kill()
				}
			}
			<-done
		}
	}
	var all []error
	for i, err := range errs {
		if err != nil {
			all = append(all, fmt.Errorf("instance %d: %w", i, err))
		}
	}
	if len(all) == 0 && cause != nil {
		// No instance failed on its own: a daemon died, or ctx ended.
		all = append(all, cause)
	}
	if cause == nil && ctx.Err() != nil && len(all) == 0 {
		all = append(all, ctx.Err())
	}
	return errors.Join(all...)
}
