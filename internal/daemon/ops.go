package daemon

import (
	"context"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/oplog"
	"banger/internal/rpc"
)

// operation is an async operation whose stages clients poll (vm.create.begin, image pulls).
// Its id is the op id of the call that began it, so logs and status share one id.
type operation struct {
	id   string
	kind string

	mu      sync.Mutex
	stages  []api.Stage
	done    bool
	vm      *model.VM
	image   *model.Image
	err     *rpc.ErrorResponse
	changed chan struct{} // closed and replaced on every change, to wake waiters
	ended   time.Time
}

func newOperation(id, kind string) *operation {
	return &operation{id: id, kind: kind, changed: make(chan struct{})}
}

func (o *operation) notifyLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// stage records one step. Download progress updates the last stage in place when it is
// the same stage, so polling clients see a moving counter rather than thousands of stages.
// It reports whether the stage was updated in place rather than added.
func (o *operation) stage(name, msg string, done, total int64) (updated bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	defer o.notifyLocked()
	if n := len(o.stages); n > 0 && o.stages[n-1].Name == name && (done > 0 || total > 0) {
		o.stages[n-1].Done, o.stages[n-1].Total, o.stages[n-1].Message = done, total, msg
		o.stages[n-1].At = time.Now().UTC()
		return true
	}
	o.stages = append(o.stages, api.Stage{Name: name, Message: msg, At: time.Now().UTC(), Done: done, Total: total})
	return false
}

func (o *operation) finish(vm *model.VM, im *model.Image, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.done = true
	o.ended = time.Now()
	o.vm, o.image = vm, im
	if err != nil {
		o.err = rpc.ToWire(err, o.id)
	}
	o.notifyLocked()
}

// status returns the operation's state. With wait, it blocks until the operation has more
// than after stages, changes in any way (download progress), ends, or wait passes.
func (o *operation) status(ctx context.Context, after int, wait time.Duration) api.OpStatusResult {
	o.mu.Lock()
	if !o.done && len(o.stages) <= after && wait > 0 {
		ch := o.changed
		o.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		o.mu.Lock()
	}
	defer o.mu.Unlock()
	return api.OpStatusResult{OpID: o.id, Kind: o.kind, Stages: append([]api.Stage{}, o.stages...),
		Done: o.done, VM: o.vm, Image: o.image, Error: o.err}
}

// opRegistry keeps operations for a while after they end so late pollers see the result.
type opRegistry struct {
	mu  sync.Mutex
	ops map[string]*operation
}

const opRetention = 30 * time.Minute

// add registers o. An id still known is refused: a client that reuses an op id for a
// second async call would otherwise lose track of the first, or (once it ended) replace
// the result a late poller is about to read.
func (r *opRegistry) add(o *operation) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ops == nil {
		r.ops = map[string]*operation{}
	}
	for id, old := range r.ops {
		old.mu.Lock()
		expired := old.done && time.Since(old.ended) > opRetention
		old.mu.Unlock()
		if expired {
			delete(r.ops, id)
		}
	}
	if old, ok := r.ops[o.id]; ok {
		old.mu.Lock()
		running := !old.done
		old.mu.Unlock()
		if running {
			return errdefs.New(errdefs.ErrConflict, "operation %s is already running; use a new op id", o.id)
		}
		return errdefs.New(errdefs.ErrAlreadyExists, "operation %s already ran and its result is kept for op.status; use a new op id", o.id)
	}
	r.ops[o.id] = o
	return nil
}

func (r *opRegistry) get(id string) (*operation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.ops[id]
	if !ok {
		return nil, errdefs.NotFound("operation", id)
	}
	return o, nil
}

// progress is where daemon work reports its steps. stage is the one call per step: it
// records the stage for the async operation's pollers (when the work runs as one; the zero
// progress has none) and logs it with the op id, so the two can never drift.
type progress struct{ op *operation }

// stage reports step name: msg for people polling, attrs for the log.
func (p progress) stage(ctx context.Context, name, msg string, attrs ...any) {
	if p.op != nil {
		p.op.stage(name, msg, 0, 0)
	}
	oplog.Stage(ctx, name, attrs...)
}

// count updates a stage that moves (a download): pollers see every update, the log only
// the stage's first, so a large pull does not write thousands of records.
func (p progress) count(ctx context.Context, name, msg string, done, total int64) {
	if p.op == nil || p.op.stage(name, msg, done, total) {
		return
	}
	oplog.Stage(ctx, name, "done", done, "total", total)
}
