package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"banger/internal/agentclient"
	"banger/internal/client"
)

// BenchmarkExecPhases splits BenchmarkExecTrue's round trip into what each layer adds, on
// one running VM, so a change to one layer shows where it landed:
//
//	cli-start   `banger help`: the CLI process alone (no RPC)
//	rpc         one vm.show through internal/client: socket, JSON line, store read
//	agent-ping  vm.agent stream (splice + fresh yamux stream) + one ping to the agent
//	agent-exec  vm.agent stream + exec of true: the agent's fork/exec/wait under emulation
//	cli-exec    `banger vm exec VM -- true`: everything (= BenchmarkExecTrue)
func BenchmarkExecPhases(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	image := "tiny"
	x.mustCLIB(b, "vm", "create", "-q", "--image", image, "--name", "bench-phases")
	defer x.cli(nil, "vm", "rm", "-f", "bench-phases")
	c := client.New(x.socket)
	ctx := context.Background()
	phases := []struct {
		name string
		run  func() error
	}{
		{"cli-start", func() error {
			if _, errOut, code := x.cli(nil, "help"); code != 0 {
				return fmt.Errorf("help: %d %s", code, errOut)
			}
			return nil
		}},
		{"rpc", func() error { _, err := c.VMShow(ctx, "bench-phases"); return err }},
		{"agent-ping", func() error {
			st, err := c.VMAgent(ctx, "bench-phases")
			if err != nil {
				return err
			}
			_, err = agentclient.Ping(ctx, st, "")
			return err
		}},
		{"agent-exec", func() error {
			st, err := c.VMAgent(ctx, "bench-phases")
			if err != nil {
				return err
			}
			code, err := agentclient.Exec(ctx, st, agentclient.ExecRequest{Argv: []string{"true"}}, agentclient.ExecIO{})
			if err == nil && code != 0 {
				err = fmt.Errorf("true exited %d", code)
			}
			return err
		}},
		{"cli-exec", func() error {
			if _, errOut, code := x.cli(nil, "vm", "exec", "bench-phases", "--", "true"); code != 0 {
				return fmt.Errorf("exec: %d %s", code, errOut)
			}
			return nil
		}},
	}
	for _, ph := range phases {
		b.Run(ph.name, func(b *testing.B) {
			var samples []time.Duration
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if err := ph.run(); err != nil {
					b.Fatal(err)
				}
				samples = append(samples, time.Since(start))
			}
			m := median(samples)
			b.ReportMetric(float64(m.Microseconds())/1000, "ms-median")
			b.Logf("exec phase=%s median_ms=%.2f n=%d", ph.name, float64(m.Microseconds())/1000, len(samples))
		})
	}
}
