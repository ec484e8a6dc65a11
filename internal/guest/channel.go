package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

// reopenBackoff paces reopening the serial port. With no host attached a virtio port reads
// EOF at once, so this is also the idle polling rate.
const reopenBackoff = 150 * time.Millisecond

// VirtioPortsDir is where the kernel lists virtio-serial ports with their names.
const VirtioPortsDir = "/sys/class/virtio-ports"

// ServeReopening serves a byte stream that outlives yamux sessions, the virtio-serial
// port: open it, run one yamux server session until it ends (host gone, EOF, garbage),
// close it, wait reopenBackoff, and again, until ctx ends. Failing to open is retried the
// same way, so a port that is briefly gone does not end the loop. On a serial port (see
// servePort) a session that served nothing is followed by another on the still open port.
func (a *Agent) ServeReopening(ctx context.Context, open func(context.Context) (io.ReadWriteCloser, error)) error {
	var lastOpenErr string
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		conn, err := open(ctx)
		if err != nil {
			if err.Error() != lastOpenErr {
				a.log.Warn("opening the agent channel failed; retrying", "err", err)
				lastOpenErr = err.Error()
			}
		} else {
			lastOpenErr = ""
			a.servePort(ctx, conn)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(reopenBackoff):
		}
	}
}

// keptPort is a channel that keeps what the host sent until the guest closes it, and
// reads EOF while no host is attached: a virtio-serial port (serialPort).
type keptPort interface {
	io.ReadWriteCloser
	SetReadDeadline(time.Time) error
	keepsUnreadData()
}

// serialPort is an open virtio-serial port.
type serialPort struct{ *os.File }

func (serialPort) keepsUnreadData() {}

// servePort serves sessions on conn and closes it. A virtio-serial port discards what it
// received but nobody read when the guest closes it (virtio_console's release), so a host
// attaching between an idle session's EOF and the close lost its first request, and the
// host waited out an attempt's bound (seen in about one restore in forty). So on a kept
// port a session that ended at EOF having served no stream is followed, after
// reopenBackoff, by a fresh session on the same open port. A session that served streams
// still ends with the close: that is how the host learns the guest dropped the session
// (vmm.AgentDetacher).
func (a *Agent) servePort(ctx context.Context, conn io.ReadWriteCloser) {
	port, kept := conn.(keptPort)
	if !kept {
		a.serveConn(ctx, conn)
		return
	}
	defer conn.Close()
	for {
		_ = port.SetReadDeadline(time.Time{})
		start := time.Now()
		n, err := a.serveSession(ctx, unclosedPort{port})
		if n > 0 || !errors.Is(err, io.EOF) {
			// Closed before the log line: the console is slow under emulation, and the
			// host waits for this close to pause the guest.
			conn.Close()
			logEnded(a, n, start)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(reopenBackoff):
		}
	}
}

// unclosedPort is a kept port whose Close only interrupts a pending read (yamux closes
// its connection when the session ends), leaving the port open for the next session.
type unclosedPort struct{ keptPort }

func (p unclosedPort) Close() error { return p.SetReadDeadline(time.Now()) }

// serveConn runs one yamux server session on conn and closes conn when it ends.
func (a *Agent) serveConn(ctx context.Context, conn io.ReadWriteCloser) {
	start := time.Now()
	n, _ := a.serveSession(ctx, conn)
	conn.Close()
	logEnded(a, n, start)
}

// serveSession runs one yamux server session on conn (closed by the session as it ends)
// and returns the streams it served and what ended it.
func (a *Agent) serveSession(ctx context.Context, conn io.ReadWriteCloser) (int, error) {
	sess, err := newServerSession(conn, a.log)
	if err != nil {
		a.log.Error("starting the agent session failed", "err", err)
		return 0, err
	}
	return a.serve(ctx, sess)
}

// logEnded logs a session that served n streams. One that served nothing is the idle
// cycle of a port with no host attached; logging it would flood the console several
// times a second.
func logEnded(a *Agent, n int, start time.Time) {
	if n > 0 {
		a.log.Info("agent session ended", "streams", n, "duration_ms", time.Since(start).Milliseconds())
	}
}

// FindSerialPort returns the /dev node of the virtio-serial port called name, by reading
// sysRoot/*/name (the kernel's /sys/class/virtio-ports without udev's symlinks).
func FindSerialPort(sysRoot, name string) (string, error) {
	entries, err := os.ReadDir(sysRoot)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", errdefs.New(errdefs.ErrNotFound, "no virtio-serial ports (%s is missing; is virtio_console loaded?)", sysRoot)
		}
		return "", fmt.Errorf("listing virtio-serial ports: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysRoot, e.Name(), "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return "/dev/" + e.Name(), nil
		}
	}
	return "", errdefs.New(errdefs.ErrNotFound, "no virtio-serial port named %q in %s", name, sysRoot)
}

// waitSerialPort polls for the port until it appears or the wait ends: the port shows up
// only once virtio_console has probed the device.
func waitSerialPort(ctx context.Context, name string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		dev, err := FindSerialPort(VirtioPortsDir, name)
		if err == nil {
			if _, serr := os.Stat(dev); serr == nil {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%s did not appear", dev)
			}
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var pollWarn sync.Once

// ServeSerial serves the virtio-serial port at dev (see FindSerialPort), reopening it until
// ctx ends.
func (a *Agent) ServeSerial(ctx context.Context, dev string) error {
	a.log.Info("serving the agent on virtio-serial", "device", dev)
	return a.ServeReopening(ctx, func(context.Context) (io.ReadWriteCloser, error) {
		// The port is pollable, so os.File uses non-blocking I/O and Close interrupts a
		// pending read or write when the session is torn down.
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", dev, err)
		}
		if err := f.SetReadDeadline(time.Time{}); errors.Is(err, os.ErrNoDeadline) {
			pollWarn.Do(func() {
				a.log.Warn("the serial port is not pollable; a stuck session cannot be interrupted", "device", dev)
			})
			// Without deadlines an idle session's end could not be interrupted.
			return f, nil
		}
		return serialPort{f}, nil
	})
}

// ServeListener gives each accepted connection its own yamux server session, until ctx
// ends or the listener fails. It closes l.
func (a *Agent) ServeListener(ctx context.Context, l net.Listener) error {
	defer agentproto.BindContext(ctx, l)()
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("accepting agent connections on %s: %w", l.Addr(), err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serveConn(ctx, conn)
		}()
	}
}

// ListenVsock listens on AF_VSOCK port agentproto.AgentPort, firecracker's agent channel.
func ListenVsock() (net.Listener, error) {
	l, err := vsock.Listen(agentproto.AgentPort, nil)
	if err != nil {
		return nil, fmt.Errorf("listening on vsock port %d: %w", agentproto.AgentPort, err)
	}
	return l, nil
}

// vsockAvailable reports whether a guest-side vsock transport exists: with only the vsock
// core module loaded a listener would succeed yet never see a connection.
func vsockAvailable() error {
	cid, err := vsock.ContextID()
	if err != nil {
		return fmt.Errorf("no vsock: %w", err)
	}
	if cid < 3 || cid == 0xffffffff {
		return fmt.Errorf("no vsock transport (local CID %d)", int64(cid))
	}
	return nil
}

// ServeChannels serves every agent channel this VM has: vsock (firecracker) and the
// virtio-serial port (qemu), waiting up to wait for the serial port to appear. ready is
// called once, when the first channel serves. It returns an error when neither channel
// exists, otherwise it runs until ctx ends.
func (a *Agent) ServeChannels(ctx context.Context, wait time.Duration, ready func()) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	// Each probe reports once: nil when its channel serves.
	probes := make(chan error, 2)

	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := vsockAvailable(); err != nil {
			probes <- err
			return
		}
		l, err := ListenVsock()
		if err != nil {
			probes <- err
			return
		}
		a.log.Info("serving the agent on vsock", "port", agentproto.AgentPort)
		probes <- nil
		if err := a.ServeListener(ctx, l); err != nil && ctx.Err() == nil {
			a.log.Error("vsock agent channel failed", "err", err)
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		dev, err := waitSerialPort(ctx, agentproto.AgentSerialName, wait)
		if err != nil {
			probes <- err
			return
		}
		probes <- nil
		_ = a.ServeSerial(ctx, dev)
	}()

	var problems []string
	for range 2 {
		err := <-probes
		if err == nil {
			if ready != nil {
				ready()
			}
			<-ctx.Done()
			return ctx.Err()
		}
		problems = append(problems, err.Error())
	}
	return errdefs.New(errdefs.ErrUnavailable, "no agent channel: %s", strings.Join(problems, "; "))
}
