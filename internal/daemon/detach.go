package daemon

import (
	"context"
	"time"

	"banger/internal/agentclient"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/oplog"
	"banger/internal/vmm"
)

// detachAgent makes a running guest drop its agent session before it is paused. A guest
// paused inside a session resumes inside it — a VM restored from a snapshot, or one paused
// long enough for the host's keepalive to give up — and the host's next session collides
// with the old one ("yamux: duplicate stream declared"), its requests never answered.
// Detached, the guest's agent waits for a fresh session, and the first request after the
// resume or restore is answered at once. A session with streams in use (a running exec, a
// copy) is left alone: ending it would end them; the identity retry (restore.go) covers
// restores of such snapshots. Failures are logged, never fatal: the pause goes on. The
// caller holds rt.mu and pauses next; resumeLocked (or a failed pause) ends the detach.
func (d *Daemon) detachAgent(ctx context.Context, rt *vmRuntime, vm *model.VM) {
	m := rt.getMachine()
	det, ok := m.(vmm.AgentDetacher)
	if !ok {
		return
	}
	log := oplog.G(ctx).With("vm", vm.Name)
	began := time.Now()
	if err := touchAgent(ctx, rt); err != nil {
		log.Warn("pinging the guest agent before its detach failed", "error", err.Error())
	}
	if n := rt.beginDetach(); n > 0 {
		log.Info("agent session kept across the pause: streams are in use", "streams", n)
		return
	}
	if err := det.DetachAgent(ctx, rt.hangUp); err != nil {
		log.Warn("detaching the guest agent before the pause failed; a restore may wait for its old session", "error", err.Error())
		return
	}
	oplog.Stage(ctx, "agent_detached", "vm", vm.Name, "ms", time.Since(began).Milliseconds())
}

// detachPing bounds touchAgent's ping: the guest is running and answers in milliseconds.
const detachPing = 2 * time.Second

// touchAgent pings the guest so that its agent's current session has served a stream:
// the agent continues an idle session (one that served nothing) on its open port rather
// than closing it (closing would discard a request a host sent meanwhile, see
// guest.servePort), so only the end of a used session shows as the guest closing its port,
// which DetachAgent waits for.
func touchAgent(ctx context.Context, rt *vmRuntime) error {
	pctx, cancel := context.WithTimeout(ctx, detachPing)
	defer cancel()
	st, err := rt.openStream(pctx)
	if err != nil {
		return err
	}
	defer st.Close()
	_, err = agentclient.Ping(pctx, st, opid.From(ctx))
	return err
}

// streamDrain bounds the wait for streams that are closing: a stream whose request just
// ended stays in the session until the guest's close reaches the host, a round trip later.
const streamDrain = 500 * time.Millisecond

// beginDetach stops new agent sessions and streams, unless streams are still open after
// streamDrain (their count is returned, and nothing changes).
func (rt *vmRuntime) beginDetach() int {
	rt.machMu.Lock()
	defer rt.machMu.Unlock()
	// New streams are refused from here (session checks detached) while old ones drain.
	rt.detached = true
	deadline := time.Now().Add(streamDrain)
	for rt.sess != nil && !rt.sess.IsClosed() {
		n := rt.sess.NumStreams()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			rt.detached = false
			return n
		}
		rt.machMu.Unlock()
		time.Sleep(10 * time.Millisecond)
		rt.machMu.Lock()
	}
	return 0
}

// hangUp closes the host's session and its channel connection (the guest reads EOF).
func (rt *vmRuntime) hangUp() {
	rt.resetSession()
}

// endDetach lets agent sessions be dialed again.
func (rt *vmRuntime) endDetach() {
	rt.machMu.Lock()
	defer rt.machMu.Unlock()
	rt.detached = false
}
