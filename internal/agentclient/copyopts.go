package agentclient

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"banger/internal/errdefs"
)

// Defaults for CopyOptions.
const (
	// DefaultCopyMaxBytes caps a guest→host copy: large enough for build outputs and
	// images, small enough that a hostile guest cannot fill the host's disk unasked.
	DefaultCopyMaxBytes = 4 << 30
	// DefaultCopyIdleTimeout is how long a copy may see no byte move before it gives up.
	// Under TCG a busy guest stalls for seconds, never for a minute.
	DefaultCopyIdleTimeout = time.Minute
)

// CopyOptions bound Put and Get; zero fields take the defaults.
type CopyOptions struct {
	// MaxBytes caps what Get accepts from the guest: the archive's bytes and, separately,
	// the file sizes its headers claim.
	MaxBytes int64
	// IdleTimeout ends a copy during which no byte moved in either direction for this
	// long; every byte restarts it, so a large copy may take as long as it needs.
	IdleTimeout time.Duration
}

func (o CopyOptions) withDefaults() CopyOptions {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultCopyMaxBytes
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultCopyIdleTimeout
	}
	return o
}

// idleWatch cancels a context once nothing marked progress for a while.
type idleWatch struct {
	last     atomic.Int64 // unix nanoseconds of the last progress
	done     chan struct{}
	stopOnce sync.Once
	cancel   context.CancelCauseFunc
}

// watchIdle returns a context that is cancelled, with an unavailable error naming d as its
// cause, once d passes without progress (see progressConn). Call stop when done.
func watchIdle(ctx context.Context, d time.Duration) (context.Context, *idleWatch) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &idleWatch{done: make(chan struct{}), cancel: cancel}
	w.progress()
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				idle := time.Since(time.Unix(0, w.last.Load()))
				if idle >= d {
					cancel(errdefs.New(errdefs.ErrUnavailable, "the guest moved no data for %s (the copy's idle timeout; raise it with --idle-timeout)", d))
					return
				}
				t.Reset(d - idle)
			}
		}
	}()
	return ctx, w
}

func (w *idleWatch) progress() { w.last.Store(time.Now().UnixNano()) }

func (w *idleWatch) stop() {
	w.stopOnce.Do(func() {
		close(w.done)
		w.cancel(nil)
	})
}

// progressConn marks every read or write that moved bytes as progress.
type progressConn struct {
	io.ReadWriteCloser
	watch *idleWatch
}

func (c progressConn) Read(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Read(p)
	if n > 0 {
		c.watch.progress()
	}
	return n, err
}

func (c progressConn) Write(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Write(p)
	if n > 0 {
		c.watch.progress()
	}
	return n, err
}
