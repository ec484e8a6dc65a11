package daemon

import (
	"context"
	"fmt"
	"strings"

	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// autoOrder is the built-in VMMs in the order "auto" tries them: firecracker when it can
// run, else qemu. doctor reports them in the same order.
var autoOrder = []string{"firecracker", "qemu"}

// pickDriver resolves the configured VMM.
func (d *Daemon) pickDriver(ctx context.Context) (vmm.Driver, vmm.Info, error) {
	order := []string{d.cfg.VMM}
	if d.cfg.VMM == "auto" {
		order = autoOrder
	}
	var reasons []string
	for _, name := range order {
		drv, err := d.driver(name)
		if err != nil {
			return nil, vmm.Info{}, err
		}
		info := drv.Probe(ctx)
		if info.Available {
			return drv, info, nil
		}
		r := fmt.Sprintf("%s: %s", name, info.Detail)
		if info.Fix != "" {
			r += " (fix: " + info.Fix + ")"
		}
		reasons = append(reasons, r)
	}
	return nil, vmm.Info{}, errdefs.WithHint(
		errdefs.New(errdefs.ErrUnavailable, "%v: %s", errNoDriver, strings.Join(reasons, "; ")),
		"run `banger doctor` to see what is missing")
}
