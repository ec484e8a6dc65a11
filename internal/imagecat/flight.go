package imagecat

import (
	"context"
	"sync"

	"banger/internal/model"
)

// Group runs at most one fetch per key at a time and shares its result with every caller
// that asked for the key meanwhile. Unlike golang.org/x/sync/singleflight it counts
// waiters: a caller whose context ends stops waiting without aborting the shared work for
// the others, and the work is cancelled only when no waiter is left. Progress of the shared
// work is fanned out to every current waiter. The zero value is ready to use.
type Group struct {
	mu    sync.Mutex
	calls map[string]*call
}

type call struct {
	done    chan struct{}
	img     *model.Image
	err     error
	cancel  context.CancelFunc
	waiters map[int]func(Progress)
	nextID  int
}

// Do runs fn once for key among concurrent callers and returns its result to all of them.
// fn gets a context detached from any single caller's cancellation (it keeps the first
// caller's values, such as the op id) and a progress function that reaches every current
// waiter; progress (may be nil) is this caller's subscription. The caller that started the
// work and the ones that joined it are treated alike.
func (g *Group) Do(ctx context.Context, key string,
	fn func(ctx context.Context, progress func(Progress)) (*model.Image, error),
	progress func(Progress)) (*model.Image, error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*call{}
	}
	c, joined := g.calls[key]
	if !joined {
		workCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &call{done: make(chan struct{}), cancel: cancel, waiters: map[int]func(Progress){}}
		g.calls[key] = c
		go g.run(workCtx, key, c, fn)
	}
	id := c.nextID
	c.nextID++
	c.waiters[id] = progress
	g.mu.Unlock()

	select {
	case <-c.done:
		return c.img, c.err
	case <-ctx.Done():
		g.mu.Lock()
		delete(c.waiters, id)
		if len(c.waiters) == 0 {
			// Nobody wants the result any more. Forget the call so a later caller starts
			// afresh instead of joining work that is being torn down.
			c.cancel()
			if g.calls[key] == c {
				delete(g.calls, key)
			}
		}
		g.mu.Unlock()
		return nil, ctx.Err()
	}
}

func (g *Group) run(ctx context.Context, key string, c *call,
	fn func(ctx context.Context, progress func(Progress)) (*model.Image, error)) {
	defer c.cancel()
	fanout := func(p Progress) {
		g.mu.Lock()
		fns := make([]func(Progress), 0, len(c.waiters))
		for _, f := range c.waiters {
			if f != nil {
				fns = append(fns, f)
			}
		}
		g.mu.Unlock()
		for _, f := range fns {
			f(p)
		}
	}
	c.img, c.err = fn(ctx, fanout)
	g.mu.Lock()
	// Remove the key before waking waiters so a caller arriving after a failure starts a
	// fresh attempt instead of receiving the stale error.
	if g.calls[key] == c {
		delete(g.calls, key)
	}
	g.mu.Unlock()
	close(c.done)
}
