package imagecat

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"banger/internal/model"
)

func waitWaiters(t *testing.T, g *Group, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		g.mu.Lock()
		c := g.calls[key]
		joined := c != nil && len(c.waiters) == n
		g.mu.Unlock()
		if joined {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("%d callers never joined %q", n, key)
}

func TestGroupCallerLeavesOthersStay(t *testing.T) {
	var g Group
	started := make(chan struct{})
	release := make(chan struct{})
	var workCancelled atomic.Bool
	work := func(ctx context.Context, _ func(Progress)) (*model.Image, error) {
		close(started)
		select {
		case <-release:
			return &model.Image{Name: "x"}, nil
		case <-ctx.Done():
			workCancelled.Store(true)
			return nil, ctx.Err()
		}
	}

	ctx1, cancel1 := context.WithCancel(context.Background())
	res := make(chan error, 2)
	go func() { _, err := g.Do(ctx1, "k", work, nil); res <- err }()
	<-started
	var img *model.Image
	go func() {
		var err error
		img, err = g.Do(context.Background(), "k", work, nil)
		res <- err
	}()
	waitWaiters(t, &g, "k", 2)
	cancel1()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v", err)
	}
	if workCancelled.Load() {
		t.Fatal("shared work cancelled while another caller still waits")
	}
	close(release)
	if err := <-res; err != nil || img == nil || img.Name != "x" {
		t.Fatalf("remaining caller got %v, %v", img, err)
	}
}

func TestGroupLastCallerLeavingCancels(t *testing.T) {
	var g Group
	started := make(chan struct{})
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go g.Do(ctx, "k", func(ctx context.Context, _ func(Progress)) (*model.Image, error) {
		close(started)
		<-ctx.Done()
		close(done)
		return nil, ctx.Err()
	}, nil)
	<-started
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("work not cancelled after the last caller left")
	}
	// A new caller starts fresh rather than joining the torn-down call.
	img, err := g.Do(context.Background(), "k", func(context.Context, func(Progress)) (*model.Image, error) {
		return &model.Image{Name: "fresh"}, nil
	}, nil)
	if err != nil || img.Name != "fresh" {
		t.Fatalf("fresh call got %v, %v", img, err)
	}
}

func TestGroupErrorNotCached(t *testing.T) {
	var g Group
	calls := 0
	fail := func(context.Context, func(Progress)) (*model.Image, error) {
		calls++
		return nil, errors.New("boom")
	}
	for range 2 {
		if _, err := g.Do(context.Background(), "k", fail, nil); err == nil {
			t.Fatal("error lost")
		}
	}
	if calls != 2 {
		t.Fatalf("failed call reused: %d runs", calls)
	}
}
