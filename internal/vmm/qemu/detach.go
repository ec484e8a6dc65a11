package qemu

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"banger/internal/vmm"
)

var _ vmm.AgentDetacher = (*Machine)(nil)

// agentPortID is the qdev id of the agent's virtserialport; QEMU names it in the
// VSERPORT_CHANGE events it sends when the guest opens or closes the port.
const agentPortID = "agentport"

// detachTimeout bounds the wait for the guest to close its port when the caller allows
// longer: the guest's agent closes it as soon as it reads the host's hang-up.
const detachTimeout = 5 * time.Second

// agentChardevID is the id of the agent port's chardev (the -chardev socket in buildArgs).
const agentChardevID = "agent"

// portPollInterval paces query-chardev while waiting for the guest to close its port.
const portPollInterval = 2 * time.Millisecond

// DetachAgent hangs up the host's end of the agent channel (hangUp) and waits for the guest
// to close its port. The guest's virtio-serial port reads EOF once no host is connected,
// which ends its agent session; the agent closes the port and reopens it for a fresh
// session (guest.ServeReopening). Once the port is seen closed after the hang-up the guest
// no longer holds the old session, so a snapshot taken now resumes with an agent that
// waits for a new one.
//
// The port's state is polled (query-chardev's frontend-open), not awaited as a
// VSERPORT_CHANGE event: QEMU rate-limits that event to one a second per port, and an
// agent with no host attached opens and closes its port every reopen cycle, so the event
// saying "closed" came up to a second late (measured: 0.15–0.95 s per detach).
func (m *Machine) DetachAgent(ctx context.Context, hangUp func()) error {
	if !slices.ContainsFunc(m.proc.Cmdline(), func(a string) bool {
		return strings.HasPrefix(a, "virtserialport,") && strings.Contains(a, ",id="+agentPortID+",")
	}) {
		// A VMM started by an older daemon: its agent port is not the one this code knows.
		return fmt.Errorf("detaching the agent of VM %s: its agent port has no id (started by an older bangerd)", m.spec.ID)
	}
	return m.withMonitor(ctx, detachTimeout, "detaching the agent of VM "+m.spec.ID, func(ctx context.Context, q *qmpConn) error {
		hangUp()
		return m.awaitAgentPortClosed(ctx, q)
	})
}

// awaitAgentPortClosed polls q until the guest's end of the agent port is closed.
func (m *Machine) awaitAgentPortClosed(ctx context.Context, q *qmpConn) error {
	for {
		open, err := agentPortOpen(q)
		if err != nil {
			return fmt.Errorf("detaching the agent of VM %s: waiting for the guest to close its agent port: %w", m.spec.ID, err)
		}
		if !open {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("detaching the agent of VM %s: the guest kept its agent port open: %w", m.spec.ID, ctx.Err())
		case <-m.proc.Done():
			return fmt.Errorf("detaching the agent of VM %s: %w", m.spec.ID, vmm.ErrNotRunning)
		case <-time.After(portPollInterval):
		}
	}
}

// agentPortOpen reports whether the guest holds the agent port open (query-chardev's
// frontend-open of the agent's chardev: the virtio-serial port sets it as the guest opens
// and closes the port).
func agentPortOpen(q *qmpConn) (bool, error) {
	var chardevs []struct {
		Label        string `json:"label"`
		FrontendOpen bool   `json:"frontend-open"`
	}
	if err := q.call("query-chardev", nil, &chardevs); err != nil {
		return false, err
	}
	for _, c := range chardevs {
		if c.Label == agentChardevID {
			return c.FrontendOpen, nil
		}
	}
	return false, fmt.Errorf("qemu has no chardev %q", agentChardevID)
}

var _ vmm.SnapshotAborter = (*Machine)(nil)

// AbortSnapshot cancels a migration still running (a snapshot whose daemon died) and waits
// until QEMU has given it up. A migration that completed left the guest in "postmigrate",
// from which a cont resumes it; one still running would otherwise complete after the
// caller's resume and stop the guest again.
func (m *Machine) AbortSnapshot(ctx context.Context) error {
	return m.withMonitor(ctx, detachTimeout, "aborting the snapshot of VM "+m.spec.ID, m.cancelMigration)
}

// cancelMigration cancels q's migration, if one runs, and waits until QEMU has given it up.
func (m *Machine) cancelMigration(ctx context.Context, q *qmpConn) error {
	canceled := false
	for {
		var st struct {
			Status string `json:"status"`
		}
		if err := q.call("query-migrate", nil, &st); err != nil {
			return fmt.Errorf("aborting the snapshot of VM %s: %w", m.spec.ID, err)
		}
		switch st.Status {
		case "", "none", "completed", "failed", "cancelled":
			if canceled {
				m.log.Info("an interrupted snapshot's migration was cancelled", "vm", m.spec.ID, "status", st.Status)
			}
			return nil
		}
		if !canceled {
			if err := q.call("migrate_cancel", nil, nil); err != nil {
				return fmt.Errorf("aborting the snapshot of VM %s: %w", m.spec.ID, err)
			}
			canceled = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("aborting the snapshot of VM %s: migration still %s: %w", m.spec.ID, st.Status, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// withMonitor runs fn on a fresh QMP connection to m, holding qmpMu so that no other
// monitor session interleaves, with ctx bounded by timeout unless it has a deadline. A
// failed dial is reported as doing (what was being done, naming the VM).
func (m *Machine) withMonitor(ctx context.Context, timeout time.Duration, doing string, fn func(context.Context, *qmpConn) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	m.qmpMu.Lock()
	defer m.qmpMu.Unlock()
	q, err := dialQMP(ctx, m.qmpPath)
	if err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	defer q.close()
	return fn(ctx, q)
}

var _ vmm.AgentWatcher = (*Machine)(nil)

// watchEvery paces WatchAgent's looks at the agent port.
const watchEvery = 25 * time.Millisecond

// WatchAgent polls the agent port's state (query-chardev's frontend-open) until ctx ends,
// and closes the returned channel when the guest closes the port after having opened it.
// A restored guest's first session has been seen to end while its first request was in
// hand ("sending the reply: stream closed" in its log, about one restore in twenty under
// vm fork --count 10); the host then waited out the request's 5 s attempt. Watched, it
// retries as soon as the guest closes its port.
//
// Each look also wakes QEMU's main loop: what the host writes while the guest's port is
// closed stays in the socket, as QEMU stops polling a chardev whose frontend cannot take
// input and re-checks only when its main loop runs again. The guest opening its port is
// handled on the vCPU thread and does not wake that loop, so an otherwise idle restored
// guest (nothing on its disks, its NIC link down) could leave the first request unread
// until some other event came.
func (m *Machine) WatchAgent(ctx context.Context) <-chan struct{} {
	closed := make(chan struct{})
	go func() {
		seenOpen := false
		for {
			// One connection per look, so other monitor users (the link, a stop) never
			// wait behind the whole watch.
			var open bool
			err := m.withMonitor(ctx, detachTimeout, "watching the agent channel of VM "+m.spec.ID, func(_ context.Context, q *qmpConn) error {
				var err error
				open, err = agentPortOpen(q)
				return err
			})
			if err != nil && ctx.Err() != nil {
				return
			}
			if err == nil {
				if open {
					seenOpen = true
				} else if seenOpen {
					close(closed)
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-m.proc.Done():
				return
			case <-time.After(watchEvery):
			}
		}
	}()
	return closed
}
