package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"banger/internal/agentclient"
	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// vmRuntime is the daemon's in-memory side of one VM: its lock, its VMM process, and the
// multiplexed session to its guest agent.
type vmRuntime struct {
	// mu serialises lifecycle operations (start, stop, delete) of this VM only, so work on
	// different VMs overlaps fully.
	mu sync.Mutex

	// rmMu guards the vm run --rm bookkeeping: attached vm.agent streams and the grace
	// timer of a VM no run has attached to yet.
	rmMu     sync.Mutex
	attached int
	lease    *time.Timer

	machMu  sync.Mutex
	machine vmm.Machine
	sess    *yamux.Session
	conn    net.Conn
	// detached is set while the guest has been made to drop its agent session ahead of a
	// pause (detach.go): no session is dialed until the VM is resumed or replaced.
	detached bool
}

func (d *Daemon) runtime(id string) *vmRuntime {
	d.vmsMu.Lock()
	defer d.vmsMu.Unlock()
	rt, ok := d.vms[id]
	if !ok {
		rt = &vmRuntime{}
		d.vms[id] = rt
	}
	return rt
}

func (d *Daemon) dropRuntime(id string) {
	d.vmsMu.Lock()
	defer d.vmsMu.Unlock()
	delete(d.vms, id)
}

func (rt *vmRuntime) setMachine(m vmm.Machine) {
	rt.machMu.Lock()
	defer rt.machMu.Unlock()
	rt.machine = m
	rt.detached = false
}

func (rt *vmRuntime) getMachine() vmm.Machine {
	rt.machMu.Lock()
	defer rt.machMu.Unlock()
	return rt.machine
}

// session returns the agent session, dialing the VM's channel when there is none or the
// previous one died (the guest rebooted, or this daemon restarted).
func (rt *vmRuntime) session(ctx context.Context) (*yamux.Session, error) {
	rt.machMu.Lock()
	defer rt.machMu.Unlock()
	if rt.machine == nil {
		return nil, errdefs.New(errdefs.ErrConflict, "vm is not running")
	}
	if rt.detached {
		return nil, errdefs.New(errdefs.ErrConflict, "vm is being paused or snapshotted")
	}
	if rt.sess != nil && !rt.sess.IsClosed() {
		return rt.sess, nil
	}
	if rt.conn != nil {
		rt.conn.Close()
	}
	conn, err := rt.machine.DialAgent(ctx)
	if err != nil {
		return nil, fmt.Errorf("dialing guest agent channel: %w", err)
	}
	sess, err := agentclient.NewClientSession(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("starting agent session: %w", err)
	}
	rt.conn, rt.sess = conn, sess
	return sess, nil
}

// openStream opens one agent stream; each agent request uses its own.
func (rt *vmRuntime) openStream(ctx context.Context) (net.Conn, error) {
	sess, err := rt.session(ctx)
	if err != nil {
		return nil, err
	}
	st, err := sess.OpenStream()
	if err != nil {
		rt.resetSession()
		return nil, fmt.Errorf("opening agent stream: %w", err)
	}
	return st, nil
}

func (rt *vmRuntime) resetSession() {
	rt.machMu.Lock()
	defer rt.machMu.Unlock()
	if rt.sess != nil {
		rt.sess.Close()
		rt.sess = nil
	}
	if rt.conn != nil {
		rt.conn.Close()
		rt.conn = nil
	}
}

// waitReady pings the agent until it answers, the VMM exits, or ctx ends. A single ping is
// left pending rather than retried: over virtio-serial the request waits in the channel
// until the guest opens its port, so the answer comes the moment the agent serves. (A
// restored guest is not pinged: its identity request is its readiness check, bounded per
// attempt and retried on a fresh session, see sendIdentity.)
func (d *Daemon) waitReady(ctx context.Context, rt *vmRuntime, opID string) (agentclient.PingInfo, error) {
	m := rt.getMachine()
	if m == nil {
		return agentclient.PingInfo{}, errdefs.New(errdefs.ErrConflict, "vm is not running")
	}
	for {
		type res struct {
			info agentclient.PingInfo
			err  error
		}
		attemptCtx, cancel := context.WithCancel(ctx)
		ch := make(chan res, 1)
		go func() {
			st, err := rt.openStream(attemptCtx)
			if err != nil {
				ch <- res{err: err}
				return
			}
			defer st.Close()
			info, err := agentclient.Ping(attemptCtx, st, opID)
			ch <- res{info, err}
		}()
		select {
		case r := <-ch:
			cancel()
			if r.err == nil {
				return r.info, nil
			}
			if _, ok := errors.AsType[*agentclient.ProtocolMismatchError](r.err); ok {
				return agentclient.PingInfo{}, r.err
			}
			if ctx.Err() != nil {
				return agentclient.PingInfo{}, ctx.Err()
			}
			// The session broke (e.g. the VMM was not listening yet): start over shortly.
			rt.resetSession()
			select {
			case <-time.After(200 * time.Millisecond):
			case <-m.Done():
				return agentclient.PingInfo{}, errVMMExited
			case <-ctx.Done():
				return agentclient.PingInfo{}, ctx.Err()
			}
		case <-m.Done():
			cancel()
			return agentclient.PingInfo{}, errVMMExited
		case <-ctx.Done():
			cancel()
			return agentclient.PingInfo{}, ctx.Err()
		}
	}
}

var errVMMExited = fmt.Errorf("the VMM exited before the guest agent answered")

func (d *Daemon) closeSessions() {
	d.vmsMu.Lock()
	defer d.vmsMu.Unlock()
	for _, rt := range d.vms {
		rt.resetSession()
	}
}
