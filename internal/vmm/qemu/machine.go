package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"banger/internal/vmm"
)

// Machine is one running QEMU.
type Machine struct {
	proc    *vmm.Process
	spec    vmm.Spec
	accel   string
	qmpPath string
	log     *slog.Logger

	// QEMU serves one QMP client at a time; a second would wait in the listen backlog.
	qmpMu sync.Mutex
}

var _ vmm.Machine = (*Machine)(nil)

// dialRetry bounds how long DialAgent waits for QEMU to create the channel socket.
const dialRetry = 5 * time.Second

// PID returns QEMU's process id.
func (m *Machine) PID() int { return m.proc.PID() }

// Accel returns kvm or tcg.
func (m *Machine) Accel() string { return m.accel }

// Done is closed when QEMU has exited.
func (m *Machine) Done() <-chan struct{} { return m.proc.Done() }

// Kill sends SIGKILL to QEMU.
func (m *Machine) Kill() error { return m.proc.Kill() }

// DialAgent connects to the virtio-serial chardev socket of the guest agent. QEMU accepts
// one host connection at a time on it, so the caller keeps a single connection per VM and
// multiplexes sessions over it.
func (m *Machine) DialAgent(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialRetry)
	defer cancel()
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", m.spec.ChannelPath)
		if err == nil {
			return conn, nil
		}
		// The socket appears while QEMU initialises; anything else is a real failure.
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("dialing agent channel %s: %w", m.spec.ChannelPath, err)
		}
		select {
		case <-m.proc.Done():
			return nil, fmt.Errorf("dialing agent channel of VM %s: %w", m.spec.ID, vmm.ErrNotRunning)
		case <-ctx.Done():
			return nil, fmt.Errorf("dialing agent channel %s: %w (last error: %v)", m.spec.ChannelPath, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Shutdown presses the ACPI power button; the guest decides how to power off.
func (m *Machine) Shutdown(ctx context.Context) error {
	if m.proc.Exited() {
		return fmt.Errorf("shutting down VM %s: %w", m.spec.ID, vmm.ErrNotRunning)
	}
	m.qmpMu.Lock()
	defer m.qmpMu.Unlock()
	if err := qmpCall(ctx, m.qmpPath, "system_powerdown", nil, nil); err != nil {
		return fmt.Errorf("shutting down VM %s: %w", m.spec.ID, err)
	}
	m.log.Info("vmm powerdown requested", "pid", m.proc.PID())
	return nil
}

// Status returns QEMU's run state ("running", "paused", "shutdown", …) from query-status.
func (m *Machine) Status(ctx context.Context) (string, error) {
	m.qmpMu.Lock()
	defer m.qmpMu.Unlock()
	var st struct {
		Status string `json:"status"`
	}
	if err := qmpCall(ctx, m.qmpPath, "query-status", nil, &st); err != nil {
		return "", fmt.Errorf("querying state of VM %s: %w", m.spec.ID, err)
	}
	return st.Status, nil
}

// waitRunning polls QMP until QEMU reports the guest running, QEMU exits, or the start
// deadline passes.
func (m *Machine) waitRunning(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last error
	for {
		qctx, qcancel := context.WithTimeout(ctx, time.Second)
		st, err := m.Status(qctx)
		qcancel()
		switch {
		case err == nil && st == "running":
			return nil
		case err == nil:
			last = fmt.Errorf("qemu state is %q", st)
		default:
			last = err
		}
		select {
		case <-m.proc.Done():
			return errors.New("qemu exited during startup")
		case <-ctx.Done():
			return fmt.Errorf("waiting for qemu to run the guest: %w (last: %v)", ctx.Err(), last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

var _ vmm.Pauser = (*Machine)(nil)

// Pause stops the guest's vCPUs (QMP stop). QEMU treats a stop of a stopped guest as done.
func (m *Machine) Pause(ctx context.Context) error {
	return m.runState(ctx, "stop", "paused")
}

// Resume restarts the guest's vCPUs (QMP cont).
func (m *Machine) Resume(ctx context.Context) error {
	return m.runState(ctx, "cont", "running")
}

// runState runs a QMP run-state command and checks that QEMU reports want afterwards: the
// command's return only says QEMU accepted it.
func (m *Machine) runState(ctx context.Context, command, want string) error {
	if m.proc.Exited() {
		return fmt.Errorf("qmp %s on VM %s: %w", command, m.spec.ID, vmm.ErrNotRunning)
	}
	m.qmpMu.Lock()
	err := qmpCall(ctx, m.qmpPath, command, nil, nil)
	m.qmpMu.Unlock()
	if err != nil {
		return fmt.Errorf("qmp %s on VM %s: %w", command, m.spec.ID, err)
	}
	st, err := m.Status(ctx)
	if err != nil {
		return err
	}
	if st != want {
		return fmt.Errorf("qmp %s on VM %s: qemu reports state %q, want %q", command, m.spec.ID, st, want)
	}
	m.log.Info("vmm run state changed", "command", command, "state", st)
	return nil
}

var _ vmm.Linker = (*Machine)(nil)

// SetLink sets the NIC's link state (QMP set_link).
func (m *Machine) SetLink(ctx context.Context, up bool) error {
	m.qmpMu.Lock()
	defer m.qmpMu.Unlock()
	if err := qmpCall(ctx, m.qmpPath, "set_link", map[string]any{"name": nicID, "up": up}, nil); err != nil {
		return fmt.Errorf("setting the link of VM %s: %w", m.spec.ID, err)
	}
	return nil
}
