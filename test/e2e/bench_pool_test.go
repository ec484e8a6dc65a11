package e2e

import (
	"testing"
	"time"
)

// BenchmarkPoolRunTrue is `banger vm run --rm -- true` served by a warm pool of one VM
// (mode vms: a paused VM restored from the pool's snapshot is claimed, resumed and told its
// identity). Between iterations, untimed, the pool refills and the floor boots once; the
// ratio is against those interleaved floor boots.
func BenchmarkPoolRunTrue(b *testing.B) {
	benchPoolRun(b, "PoolRunTrue", "benchpool", "")
}

// BenchmarkPoolSnapshotRunTrue is the same with a pool in mode snapshot: each run restores
// a VM from the pool's snapshot.
func BenchmarkPoolSnapshotRunTrue(b *testing.B) {
	benchPoolRun(b, "PoolSnapshotRunTrue", "benchpoolsnap", "snapshot")
}

func benchPoolRun(b *testing.B, bench, pool, mode string) {
	x := needB(b)
	x.warmImage(b)
	x.withConfig(b, poolConfig(pool, 1, mode))
	var samples, floors []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		served := x.waitPoolReady(b, pool, map[string]int{"": 1, "snapshot": 0}[mode]).Served
		b.StartTimer()
		start := time.Now()
		out, errOut, code := x.cli(nil, "vm", "run", "--rm", "-q", "--", "true")
		el := time.Since(start)
		if code != 0 {
			b.Fatalf("vm run: %d %s %s", code, out, errOut)
		}
		b.StopTimer()
		if p := x.poolNamed(b, pool); p.Served != served+1 {
			b.Fatalf("the run was not served by the pool: %+v", p)
		}
		b.StartTimer()
		samples = append(samples, el)
		b.StopTimer()
		x.interleavedFloor(b, &floors)
		b.StartTimer()
	}
	b.StopTimer()
	reportRatio(b, x, bench, samples, floors)
}

func (x *env) poolNamed(tb testing.TB, name string) poolRecord {
	tb.Helper()
	for _, p := range x.pools(tb) {
		if p.Name == name {
			return p
		}
	}
	tb.Fatalf("no pool %s", name)
	return poolRecord{}
}
