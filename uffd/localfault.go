package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ChildEnv is the environment variable that makes RunChildIfRequested play a
// child role instead of returning.
const ChildEnv = "DSM_UFFD_CHILD"

const (
	childArgEnv     = "DSM_UFFD_CHILD_ARG"
	roleLocalFault  = "localfault"
	childMemfdFD    = 3 // first of exec.Cmd.ExtraFiles
	childSocketFD   = 4
	localFaultBase  = uintptr(0x600000000000)
	handshakeWait   = 20 * time.Second
	faultWait       = 20 * time.Second
	defaultLFWindow = 1024
)

// RunChildIfRequested runs a child role of this package and exits if the
// environment asks for one (ChildEnv is set); otherwise it returns at once.
// A program that uses MeasureLocalFault or StartLocalFault must call it
// first thing in main (or TestMain), because those functions re-execute the
// program's own binary to get a second process.
func RunChildIfRequested() {
	role, ok := os.LookupEnv(ChildEnv)
	if !ok {
		return
	}
	var err error
	switch role {
	case roleLocalFault:
		err = localFaultChild(os.Getenv(childArgEnv))
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "uffd child %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// LocalFaultResult is what a run of local faults measured.
type LocalFaultResult struct {
	// Samples holds, per fault, the time the faulting load took in the
	// child (timestamps taken just before and after it): fault entry,
	// message to the resolver, UFFDIO_COPY, wake-up and return.
	Samples []time.Duration
	// Elapsed is the child's wall time for all its faulting loads
	// (excluding the hole punching between passes).
	Elapsed time.Duration
}

// LocalFault measures a MISSING fault resolved with UFFDIO_COPY across two
// processes: a child process (this binary, re-executed) maps a memfd,
// registers it and reads one byte of each page in turn; this process serves
// each fault with UFFDIO_COPY, as the node daemon does. Between passes over
// the window this process punches the pages out again.
type LocalFault struct {
	cmd    *exec.Cmd
	conn   *net.UnixConn
	uffd   *FD
	memfd  int
	pages  int
	src    []byte
	exited chan error
}

// StartLocalFault starts the child with a window of pages pages (0 means
// 1024) and waits until it has registered its mapping. The binary must call
// RunChildIfRequested at the start of main or TestMain.
func StartLocalFault(pages int) (*LocalFault, error) {
	if pages <= 0 {
		pages = defaultLFWindow
	}
	ps := PageSize
	size := pages * ps
	l := &LocalFault{pages: pages, memfd: -1, src: make([]byte, size)}
	for i := 0; i < pages; i++ {
		l.src[i*ps] = byte(i%251 + 1)
	}
	var err error
	if l.memfd, err = Memfd("dsm-localfault", int64(size)); err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("uffd: local fault: find own binary: %w", err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), ChildEnv+"="+roleLocalFault,
		fmt.Sprintf("%s=%#x:%d", childArgEnv, localFaultBase, pages))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	l.conn, l.cmd, err = startChild(cmd, l.memfd)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("uffd: local fault: %w", err)
	}
	l.exited = make(chan error, 1)
	go func() { l.exited <- cmd.Wait() }()

	l.conn.SetReadDeadline(time.Now().Add(handshakeWait))
	buf := make([]byte, 64)
	n, fds, err := RecvFDs(l.conn, buf, 1)
	l.conn.SetReadDeadline(time.Time{})
	if err != nil || len(fds) != 1 {
		closeAll(fds)
		l.Close()
		if err == nil {
			err = fmt.Errorf("got %d descriptors, want 1", len(fds))
		}
		return nil, fmt.Errorf("uffd: local fault: no userfaultfd from the child (does the binary call uffd.RunChildIfRequested first?): %w", err)
	}
	if n < 1 || buf[0] > 1 {
		closeAll(fds)
		l.Close()
		return nil, fmt.Errorf("uffd: local fault: bad handshake %q", buf[:n])
	}
	l.uffd = NewFDMode(fds[0], buf[0] == 1)
	return l, nil
}

// startChild starts cmd with memfd as descriptor 3 and one end of a new
// unix socket pair as descriptor 4, and returns the other end.
func startChild(cmd *exec.Cmd, memfd int) (*net.UnixConn, *exec.Cmd, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	mine := os.NewFile(uintptr(pair[0]), "uffd-parent")
	theirs := os.NewFile(uintptr(pair[1]), "uffd-child")
	defer theirs.Close()
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("socket: %w", err)
	}
	conn := fc.(*net.UnixConn)
	dup, err := unix.FcntlInt(uintptr(memfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("dup memfd: %w", err)
	}
	mf := os.NewFile(uintptr(dup), "memfd")
	defer mf.Close()
	cmd.ExtraFiles = []*os.File{mf, theirs}
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return conn, cmd, nil
}

// Run makes the child take n faults and serves them on the calling
// goroutine (locked to its thread). It checks that the child read the data
// this process copied.
func (l *LocalFault) Run(n int) (LocalFaultResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	res := LocalFaultResult{Samples: make([]time.Duration, 0, n)}
	ps := PageSize
	msgs := make([]Msg, 16)
	reply := make([]byte, 8*l.pages+16)
	for left := n; left > 0; {
		k := min(left, l.pages)
		var cmd [8]byte
		binary.LittleEndian.PutUint64(cmd[:], uint64(k))
		if _, err := l.conn.Write(cmd[:]); err != nil {
			return res, fmt.Errorf("uffd: local fault: command child: %w", err)
		}
		for served := 0; served < k; {
			ready, err := l.uffd.Wait(faultWait)
			if err != nil {
				return res, fmt.Errorf("uffd: local fault: %w", err)
			}
			if !ready {
				return res, fmt.Errorf("uffd: local fault: no fault from the child in %v (%d of %d served)%s", faultWait, served, k, l.exitStatus())
			}
			got, err := l.uffd.ReadMsgs(msgs)
			if err != nil {
				return res, fmt.Errorf("uffd: local fault: %w", err)
			}
			for _, m := range msgs[:got] {
				page := int((uintptr(m.Address) - localFaultBase) / uintptr(ps))
				if !m.IsMissing() || uintptr(m.Address) < localFaultBase || page >= l.pages {
					return res, fmt.Errorf("uffd: local fault: unexpected message %v", m)
				}
				if err := l.uffd.Copy(localFaultBase+uintptr(page*ps), l.src[page*ps:(page+1)*ps], false); err != nil && !errors.Is(err, ErrExist) {
					return res, fmt.Errorf("uffd: local fault: %w", err)
				}
				served++
			}
		}
		r := reply[:8*k+16]
		l.conn.SetReadDeadline(time.Now().Add(faultWait))
		_, err := io.ReadFull(l.conn, r)
		l.conn.SetReadDeadline(time.Time{})
		if err != nil {
			return res, fmt.Errorf("uffd: local fault: read the child's timings: %w%s", err, l.exitStatus())
		}
		var want uint64
		for i := 0; i < k; i++ {
			res.Samples = append(res.Samples, time.Duration(binary.LittleEndian.Uint64(r[8*i:])))
			want += uint64(l.src[i*ps])
		}
		res.Elapsed += time.Duration(binary.LittleEndian.Uint64(r[8*k:]))
		if sum := binary.LittleEndian.Uint64(r[8*k+8:]); sum != want {
			return res, fmt.Errorf("uffd: local fault: the child read checksum %d, want %d: copied data not visible", sum, want)
		}
		if err := PunchHole(l.memfd, 0, int64(k*ps)); err != nil {
			return res, err
		}
		left -= k
	}
	return res, nil
}

func (l *LocalFault) exitStatus() string {
	select {
	case err := <-l.exited:
		l.exited <- err
		return fmt.Sprintf("; the child exited: %v", err)
	default:
		return ""
	}
}

// Close stops the child and releases everything.
func (l *LocalFault) Close() error {
	var err error
	if l.conn != nil {
		var cmd [8]byte // a pass of 0 faults asks the child to exit
		l.conn.Write(cmd[:])
		if l.exited != nil {
			select {
			case err = <-l.exited:
			case <-time.After(5 * time.Second):
				l.cmd.Process.Kill()
				err = fmt.Errorf("uffd: local fault: child did not exit; killed: %v", <-l.exited)
			}
		}
		l.conn.Close()
	}
	if l.uffd != nil {
		l.uffd.Close()
	}
	if l.memfd >= 0 {
		unix.Close(l.memfd)
	}
	return err
}

// MeasureLocalFault runs n MISSING faults resolved with UFFDIO_COPY across
// two processes and returns the time of each as measured in the faulting
// process. See LocalFault; the binary must call RunChildIfRequested first.
func MeasureLocalFault(n int) (samples []time.Duration, err error) {
	l, err := StartLocalFault(min(n, defaultLFWindow))
	if err != nil {
		return nil, err
	}
	res, err := l.Run(n)
	if cerr := l.Close(); err == nil {
		err = cerr
	}
	return res.Samples, err
}

// localFaultChild is the faulting side: it maps the memfd, registers it,
// sends the userfaultfd, then on each command reads one byte of each of the
// first k pages, timing every load.
func localFaultChild(arg string) error {
	baseS, pagesS, ok := strings.Cut(arg, ":")
	base, err1 := strconv.ParseUint(baseS, 0, 64)
	pages, err2 := strconv.Atoi(pagesS)
	if !ok || err1 != nil || err2 != nil || pages <= 0 {
		return fmt.Errorf("bad %s %q", childArgEnv, arg)
	}
	ps := PageSize
	mem, err := MapShared(childMemfdFD, uintptr(base), pages*ps, true)
	if err != nil {
		return err
	}
	u, err := Open()
	if err != nil {
		return err
	}
	// Keep u open until exit: if the server's copy were the only one, its
	// death would silently unregister the range.
	defer u.Close()
	if _, err := u.API(FeatureMissingShmem); err != nil {
		return err
	}
	if _, err := u.Register(Addr(mem), uintptr(len(mem)), RegisterMissing); err != nil {
		return err
	}
	f := os.NewFile(childSocketFD, "socket")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	conn := fc.(*net.UnixConn)
	mode := byte(0)
	if u.UserModeOnly() {
		mode = 1
	}
	if err := SendFDs(conn, []byte{mode}, u.Fd()); err != nil {
		return err
	}
	out := make([]byte, 8*pages+16)
	var cmd [8]byte
	for {
		if _, err := io.ReadFull(conn, cmd[:]); err != nil {
			return fmt.Errorf("read command: %w", err)
		}
		k := int(binary.LittleEndian.Uint64(cmd[:]))
		if k == 0 {
			return nil
		}
		if k > pages {
			return fmt.Errorf("pass of %d pages exceeds the window of %d", k, pages)
		}
		var sum uint64
		start := time.Now()
		for i := 0; i < k; i++ {
			t0 := time.Now()
			v := mem[i*ps] // faults: MISSING, resolved by the parent
			d := time.Since(t0)
			sum += uint64(v)
			binary.LittleEndian.PutUint64(out[8*i:], uint64(d))
		}
		binary.LittleEndian.PutUint64(out[8*k:], uint64(time.Since(start)))
		binary.LittleEndian.PutUint64(out[8*k+8:], sum)
		if _, err := conn.Write(out[:8*k+16]); err != nil {
			return fmt.Errorf("send timings: %w", err)
		}
	}
}
