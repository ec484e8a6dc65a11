package ctl

import (
	"context"
	"fmt"
	"text/tabwriter"

	"banger/internal/model"
)

// ListPools prints the warm pools: spec, ready VMs out of the size, state and last error.
func ListPools(ctx context.Context, g *Globals) error {
	list, err := g.client().PoolList(ctx)
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(list)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tIMAGE\tVCPU\tMEMORY\tMODE\tREADY\tSTATE\tSERVED\tLAST ERROR")
	for _, p := range list {
		ready := fmt.Sprintf("%d/%d", p.Ready, p.Size)
		if p.Mode == "snapshot" {
			ready = "snapshot"
			if p.Snapshot == "" {
				ready = "-"
			}
		}
		lastErr := p.LastError
		if len(lastErr) > 80 {
			lastErr = lastErr[:77] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n", p.Name, p.Image, p.VCPU,
			model.FormatSize(int64(p.MemoryMiB)<<20), p.Mode, ready, p.State, p.Served, lastErr)
	}
	return tw.Flush()
}
