package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"time"

	"banger/internal/agentproto"
	"banger/internal/vmm"
)

// Machine is one running Firecracker.
type Machine struct {
	proc *vmm.Process
	spec vmm.Spec
	api  *Client
	log  *slog.Logger
}

var _ vmm.Machine = (*Machine)(nil)

// PID returns Firecracker's process id.
func (m *Machine) PID() int { return m.proc.PID() }

// Accel returns "kvm": Firecracker has no emulation.
func (m *Machine) Accel() string { return "kvm" }

// Done is closed when Firecracker has exited.
func (m *Machine) Done() <-chan struct{} { return m.proc.Done() }

// Kill sends SIGKILL to Firecracker.
func (m *Machine) Kill() error { return m.proc.Kill() }

// API returns the client of this Firecracker's API socket.
func (m *Machine) API() *Client { return m.api }

// DialAgent opens a new stream to the guest agent's vsock port through hybrid vsock. Each
// call is an independent connection.
func (m *Machine) DialAgent(ctx context.Context) (net.Conn, error) {
	if m.proc.Exited() {
		return nil, fmt.Errorf("dialing agent of VM %s: %w", m.spec.ID, vmm.ErrNotRunning)
	}
	conn, err := DialVsock(ctx, m.spec.ChannelPath, agentproto.AgentPort)
	if err != nil {
		return nil, fmt.Errorf("dialing agent of VM %s: %w", m.spec.ID, err)
	}
	return conn, nil
}

// Shutdown sends Ctrl-Alt-Del to the guest, which the guest init treats as power off.
func (m *Machine) Shutdown(ctx context.Context) error {
	if m.proc.Exited() {
		return fmt.Errorf("shutting down VM %s: %w", m.spec.ID, vmm.ErrNotRunning)
	}
	if err := m.api.Action(ctx, ActionSendCtrlAltDel); err != nil {
		return fmt.Errorf("shutting down VM %s: %w", m.spec.ID, err)
	}
	m.log.Info("vmm ctrl-alt-del sent", "pid", m.proc.PID())
	return nil
}

// Status returns Firecracker's instance state ("Not started", "Running", "Paused").
func (m *Machine) Status(ctx context.Context) (string, error) {
	info, err := m.api.InstanceInfo(ctx)
	if err != nil {
		return "", fmt.Errorf("querying state of VM %s: %w", m.spec.ID, err)
	}
	return info.State, nil
}

// configure waits for the API socket, describes the microVM and starts it.
func (m *Machine) configure(ctx context.Context, spec vmm.Spec, logPath, metricsPath string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := m.waitAPI(ctx); err != nil {
		return err
	}
	bootArgs := bootArgsBase
	if s := strings.TrimSpace(spec.BootArgs); s != "" {
		bootArgs += " " + s
	}
	steps := []func() error{
		func() error { return m.api.PutLogger(ctx, Logger{LogPath: logPath, Level: "Info", ShowLevel: true}) },
		func() error { return m.api.PutMetrics(ctx, Metrics{MetricsPath: metricsPath}) },
		func() error {
			return m.api.PutMachineConfig(ctx, MachineConfig{VCPUCount: spec.VCPU, MemSizeMiB: spec.MemoryMiB})
		},
		func() error {
			return m.api.PutBootSource(ctx, BootSource{KernelImagePath: spec.Kernel, InitrdPath: spec.Initrd, BootArgs: bootArgs})
		},
	}
	// Firecracker names the root device vda and the others in the order they are added.
	for _, d := range spec.Drives {
		steps = append(steps, func() error {
			return m.api.PutDrive(ctx, Drive{DriveID: d.ID, PathOnHost: d.Path, IsRootDevice: d.Root, IsReadOnly: d.ReadOnly})
		})
	}
	if spec.Net != nil {
		steps = append(steps, func() error {
			return m.api.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: spec.Net.Tap, GuestMAC: spec.Net.MAC})
		})
	}
	steps = append(steps,
		func() error { return m.api.PutVsock(ctx, Vsock{GuestCID: spec.CID, UDSPath: spec.ChannelPath}) },
		func() error { return m.api.Action(ctx, ActionInstanceStart) },
	)
	for _, step := range steps {
		if err := step(); err != nil {
			if m.proc.Exited() {
				return fmt.Errorf("firecracker exited while being configured: %w", err)
			}
			return err
		}
	}
	return nil
}

// waitAPI polls until the API socket accepts connections or Firecracker exits.
func (m *Machine) waitAPI(ctx context.Context) error {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", m.api.socket)
		if err == nil {
			conn.Close()
			return nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) && ctx.Err() == nil {
			return fmt.Errorf("connecting to firecracker API %s: %w", m.api.socket, err)
		}
		select {
		case <-m.proc.Done():
			return errors.New("firecracker exited before serving its API")
		case <-ctx.Done():
			return fmt.Errorf("waiting for firecracker API %s: %w", m.api.socket, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

var _ vmm.Pauser = (*Machine)(nil)

// Pause stops the microVM's vCPUs (PATCH /vm Paused).
func (m *Machine) Pause(ctx context.Context) error {
	return m.setState(ctx, VMStatePaused)
}

// Resume restarts them (PATCH /vm Resumed).
func (m *Machine) Resume(ctx context.Context) error {
	return m.setState(ctx, VMStateResumed)
}

func (m *Machine) setState(ctx context.Context, state string) error {
	if m.proc.Exited() {
		return fmt.Errorf("setting VM %s %s: %w", m.spec.ID, state, vmm.ErrNotRunning)
	}
	if err := m.api.PatchVM(ctx, state); err != nil {
		return fmt.Errorf("setting VM %s %s: %w", m.spec.ID, state, err)
	}
	m.log.Info("vmm run state changed", "state", state)
	return nil
}
