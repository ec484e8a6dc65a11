package daemon

import (
	"context"
	"fmt"
	"strings"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/imagebuild"
	"banger/internal/model"
	"banger/internal/vmm"
)

// doctor reports what this host has and lacks for running VMs, each with its fix.
func (d *Daemon) doctor(ctx context.Context) api.DoctorResult {
	var out api.DoctorResult
	add := func(name string, ok bool, detail, fix string) {
		c := api.DoctorCheck{Name: name, OK: ok, Detail: detail}
		if !ok {
			c.Fix = fix
		}
		out.Checks = append(out.Checks, c)
	}
	_, info, err := d.pickDriver(ctx)
	for _, name := range autoOrder {
		pi := d.drivers[name].Probe(ctx)
		detail := pi.Detail
		if pi.Available {
			detail = fmt.Sprintf("usable (%s) %s", pi.Accel, pi.Detail)
		}
		add("vmm:"+name, pi.Available, detail, pi.Fix)
		// With another VMM usable, a missing one is information, not a failure.
		out.Checks[len(out.Checks)-1].Optional = err == nil && info.Name != name
	}
	if err == nil {
		add("vmm:selected", true, fmt.Sprintf("vmm=%s picks %s", d.cfg.VMM, info.Name), "")
	} else {
		add("vmm:selected", false, err.Error(), "install qemu-system-x86 (apt-get install qemu-system-x86) or firecracker with a usable /dev/kvm")
	}
	def := d.cfg.Defaults.Image
	if im, err := d.store.ResolveImage(ctx, def); err == nil {
		k, _ := im.FileByRole(model.RoleKernel)
		add("image:default", true, fmt.Sprintf("%s installed (%s, kernel %s)", def, shortID(im.ID), k.Name), "")
	} else if e, ok := d.catalog.Lookup(def); ok {
		add("image:default", true, fmt.Sprintf("%s not installed yet; fetched on first use from %s", def, e.SourceString()), "")
	} else {
		add("image:default", false, fmt.Sprintf("%s is neither installed nor in the catalog", def),
			"set defaults.image to an image from `banger image ls` or `banger image catalog`")
	}
	agent := d.agentPath()
	if err := imagebuild.CheckAgent(agent); err != nil {
		add("guest-agent", false, err.Error(), errdefs.HintOf(err))
	} else {
		add("guest-agent", true, agent, "")
	}
	for _, m := range imagebuild.CheckTinyPrereqs() {
		add("builder:"+m.What, false, m.What+" is missing: "+m.Why, "apt-get install "+m.Package)
	}
	// Only `image build tiny --kernel microvm` needs these: optional.
	for _, m := range imagebuild.CheckMicrovmPrereqs() {
		add("builder:microvm-kernel:"+m.What, false, m.What+" is missing: "+m.Why, "apt-get install "+m.Package)
		out.Checks[len(out.Checks)-1].Optional = true
	}
	if d.cfg.Network.Enabled {
		err := d.helper.Ping(ctx)
		add("root-helper", err == nil, d.cfg.Network.HelperSocket, "start the root helper as root: bangerd helper --config …")
		// The helper gives the daemon's user its taps, but the VMM must still open the
		// clone device itself.
		tunDetail := vmm.TunDevice + " is usable by this daemon's VMMs"
		tunErr := vmm.CheckTunAccess()
		if tunErr != nil {
			tunDetail = tunErr.Error()
		}
		add("tun", tunErr == nil, tunDetail, vmm.TunHint)
		add("host-resolver", true, fmt.Sprintf("to resolve VM names on this host: resolvectl dns %s %s && resolvectl domain %s ~%s",
			d.cfg.Network.Bridge, d.prefix.Addr(), d.cfg.Network.Bridge, d.cfg.DNS.Domain), "")
	} else {
		add("network", true, "networking is off: VMs get no NIC (exec/shell/cp still work over the agent channel)", "")
	}
	if addrs := d.dns.Addrs(); len(addrs) > 0 {
		add("dns", true, fmt.Sprintf("VM names resolve as NAME.%s at %s", d.cfg.DNS.Domain, strings.Join(addrs, ", ")), "")
	}
	return out
}
