package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/model"
	"banger/internal/rpc"
)

// A pool whose image exists nowhere does not crash or spin: pool.list shows it failing
// with the error and the next retry, the retries back off, and the daemon serves creates
// meanwhile.
func TestFailingPoolIsShownAndBacksOff(t *testing.T) {
	td := startDaemonWith(t, t.TempDir(), func(c *config.Config) {
		c.Pools = []config.Pool{{Name: "ghost", Image: "no-such-image", Size: 2}}
	}, Options{})
	ctx := context.Background()
	var res api.PoolListResult
	deadline := time.Now().Add(20 * time.Second)
	for {
		res = api.PoolListResult{}
		if err := rpc.Call(ctx, td.cfg.Socket, api.MethodPoolList, nil, &res); err != nil {
			t.Fatal(err)
		}
		if len(res.Pools) == 1 && res.Pools[0].State == poolFailing {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool never reported failing: %+v", res.Pools)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p := res.Pools[0]
	if !strings.Contains(p.LastError, "no-such-image") || p.Ready != 0 || p.Size != 2 || p.MemoryMiB != 512 || p.VCPU != 1 {
		t.Fatalf("pool info: %+v", p)
	}
	if p.NextRetry.IsZero() || time.Until(p.NextRetry) <= 0 {
		t.Fatalf("next retry %v is not in the future", p.NextRetry)
	}
	first := p.LastErrorAt
	// The first retry comes after poolBackoffMin, the second after twice that.
	time.Sleep(poolBackoffMin + poolBackoffMin/2)
	res = api.PoolListResult{}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodPoolList, nil, &res); err != nil {
		t.Fatal(err)
	}
	p2 := res.Pools[0]
	if !p2.LastErrorAt.After(first) {
		t.Fatalf("no retry after the backoff: %v then %v", first, p2.LastErrorAt)
	}
	if gap := p2.NextRetry.Sub(p2.LastErrorAt); gap < 2*poolBackoffMin-100*time.Millisecond {
		t.Fatalf("second retry in %v, want the backoff doubled (%v)", gap, 2*poolBackoffMin)
	}
}

// A pool serves only plain creates of its spec: anything a restored pool VM cannot have
// (shared folders, a workspace, other sizes, no start) boots its own VM.
func TestMatchPoolServesOnlyPlainCreatesOfItsSpec(t *testing.T) {
	d := &Daemon{cfg: config.Default()}
	p := newWarmPool(config.Pool{Name: "p", Image: "tiny", VCPU: 1, MemoryMiB: 512, Size: 1})
	p.imageID = "img1"
	d.pools = []*warmPool{p}
	overlay, work, err := d.defaultDisks()
	if err != nil {
		t.Fatal(err)
	}
	plain := func() *createPlan {
		return &createPlan{image: &model.Image{ID: "img1"}, vcpu: 1, memMiB: 512, overlay: overlay, work: work}
	}
	if got := d.matchPool(plain()); got != p {
		t.Fatalf("a plain create of the pool's spec is not served: %v", got)
	}
	// NAT is a host rule the claim adds (handOver), so a pool serves it too.
	withNAT := plain()
	withNAT.nat = true
	if got := d.matchPool(withNAT); got != p {
		t.Fatalf("a create with NAT is not served: %v", got)
	}
	for name, change := range map[string]func(*createPlan){
		"mounts":    func(c *createPlan) { c.mounts = []model.Mount{{HostDir: "/srv", GuestPath: "/srv"}} },
		"workspace": func(c *createPlan) { c.wsToken = "tok" },
		"no-start":  func(c *createPlan) { c.noStart = true },
		"vcpu":      func(c *createPlan) { c.vcpu = 2 },
		"memory":    func(c *createPlan) { c.memMiB = 1024 },
		"work disk": func(c *createPlan) { c.work = work * 2 },
		"image":     func(c *createPlan) { c.image = &model.Image{ID: "img2"} },
		"snapshot":  func(c *createPlan) { c.snap = &model.Snapshot{ID: "s"} },
	} {
		c := plain()
		change(c)
		if got := d.matchPool(c); got != nil {
			t.Errorf("%s: served from pool %s", name, got.cfg.Name)
		}
	}
}
