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

// DetachAgent hangs up the host's end of the agent channel (hangUp) while listening to QMP
// events, and waits for the guest to close its port. The guest's virtio-serial port reads
// EOF once no host is connected, which ends its agent session; the agent closes the port
// and reopens it for a fresh session (guest.ServeReopening). After the VSERPORT_CHANGE
// "closed" event the guest no longer holds the old session, so a snapshot taken now resumes
// with an agent that waits for a new one. The monitor is held from before the hang-up, so
// the event cannot be missed.
func (m *Machine) DetachAgent(ctx context.Context, hangUp func()) error {
	if !slices.ContainsFunc(m.proc.Cmdline(), func(a string) bool {
		return strings.HasPrefix(a, "virtserialport,") && strings.Contains(a, ",id="+agentPortID+",")
	}) {
		// A VMM started by an older daemon: its port reports no events.
		return fmt.Errorf("detaching the agent of VM %s: its agent port has no id (started by an older bangerd)", m.spec.ID)
	}
	return m.withMonitor(ctx, detachTimeout, "detaching the agent of VM "+m.spec.ID, func(ctx context.Context, q *qmpConn) error {
		hangUp()
		return m.awaitAgentPortClosed(ctx, q)
	})
}

// awaitAgentPortClosed reads q's events until the guest has closed the agent port.
func (m *Machine) awaitAgentPortClosed(ctx context.Context, q *qmpConn) error {
	deadline, _ := ctx.Deadline()
	_ = q.conn.SetReadDeadline(deadline)
	for {
		var ev struct {
			Event string `json:"event"`
			Data  struct {
				ID   string `json:"id"`
				Open bool   `json:"open"`
			} `json:"data"`
		}
		if err := q.dec.Decode(&ev); err != nil {
			return fmt.Errorf("detaching the agent of VM %s: waiting for the guest to close its agent port: %w", m.spec.ID, ctxErr(ctx, err))
		}
		if ev.Event == "VSERPORT_CHANGE" && ev.Data.ID == agentPortID && !ev.Data.Open {
			return nil
		}
	}
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
