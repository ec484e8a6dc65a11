package agentproto

import (
	"fmt"
	"net/netip"
	"strings"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// Kernel command line keys the guest init reads; bangerd writes them with BootParams.Args.
const (
	ParamName    = "banger.name"   // hostname, a DNS label
	ParamIP      = "banger.ip"     // eth0 address with prefix, e.g. 172.30.0.5/24; absent: no NIC
	ParamGateway = "banger.gw"     // default route
	ParamDNS     = "banger.dns"    // resolver(s), comma separated
	ParamRoot    = "banger.root"   // read-only base image (overlay lower), e.g. /dev/vda
	ParamSystem  = "banger.system" // writable disk holding the overlay upper/ and work/
	ParamWork    = "banger.work"   // work disk mounted at /root; absent: none
	ParamModules = "banger.mods"   // initrd directory with the .ko files and their "order" file
	ParamInit    = "banger.init"   // "none": the agent stays PID 1; a path: the init to hand over to
	// ParamWorkspace is the workspace disk (a copy of a host tree) and ParamWorkspacePath
	// where it is mounted; absent: none.
	ParamWorkspace     = "banger.ws"
	ParamWorkspacePath = "banger.wspath"
)

// DefaultWorkspacePath is where a workspace is mounted when no GUESTPATH is given.
const DefaultWorkspacePath = "/work"

// DefaultModulesDir is where the image builder puts kernel modules in the initrd.
const DefaultModulesDir = "/lib/modules/banger"

// InitNone as banger.init keeps the agent as PID 1 even when the rootfs has an init.
const InitNone = "none"

// BootParams are the banger.* arguments of one VM's kernel command line.
type BootParams struct {
	Name       string
	Addr       netip.Prefix // invalid: no network
	Gateway    netip.Addr   // invalid: no default route
	DNS        []netip.Addr
	Root       string
	System     string
	Work       string
	ModulesDir string
	Init       string // "" (use the rootfs's /sbin/init if any), InitNone, or a path
	// Workspace is the workspace disk's device and WorkspacePath its mount point.
	Workspace     string
	WorkspacePath string
	// Mounts are shared folders (virtiofs) to mount; see mounts.go.
	Mounts []Mount
}

// splitCmdline splits a kernel command line the way the kernel does: on spaces, with
// double quotes grouping (and removed from) a value.
func SplitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// ParseCmdline reads the banger.* parameters from a kernel command line (the contents of
// /proc/cmdline); other parameters are ignored. Name, root and system disks are required;
// the modules directory defaults to DefaultModulesDir.
func ParseCmdline(cmdline string) (BootParams, error) {
	p := BootParams{ModulesDir: DefaultModulesDir}
	var ip, gw, dns, mounts string
	for _, arg := range SplitCmdline(cmdline) {
		k, v, _ := strings.Cut(arg, "=")
		switch k {
		case ParamName:
			p.Name = v
		case ParamIP:
			ip = v
		case ParamGateway:
			gw = v
		case ParamDNS:
			dns = v
		case ParamRoot:
			p.Root = v
		case ParamSystem:
			p.System = v
		case ParamWork:
			p.Work = v
		case ParamModules:
			p.ModulesDir = v
		case ParamInit:
			p.Init = v
		case ParamWorkspace:
			p.Workspace = v
		case ParamWorkspacePath:
			p.WorkspacePath = v
		case ParamMounts:
			mounts = v
		}
	}
	if !model.IsDNSLabel(p.Name) {
		return BootParams{}, errdefs.InvalidArgument(ParamName, p.Name, "must be a DNS label (lowercase letters, digits, inner dashes, at most 63)")
	}
	for _, d := range []struct{ key, val string }{{ParamRoot, p.Root}, {ParamSystem, p.System}} {
		if !strings.HasPrefix(d.val, "/dev/") {
			return BootParams{}, errdefs.InvalidArgument(d.key, d.val, "must be a block device path under /dev")
		}
	}
	if p.Work != "" && !strings.HasPrefix(p.Work, "/dev/") {
		return BootParams{}, errdefs.InvalidArgument(ParamWork, p.Work, "must be a block device path under /dev")
	}
	if p.Workspace != "" {
		if !strings.HasPrefix(p.Workspace, "/dev/") {
			return BootParams{}, errdefs.InvalidArgument(ParamWorkspace, p.Workspace, "must be a block device path under /dev")
		}
		if p.WorkspacePath == "" {
			p.WorkspacePath = DefaultWorkspacePath
		}
		if err := model.ValidateWorkspacePath(ParamWorkspacePath, p.WorkspacePath); err != nil {
			return BootParams{}, err
		}
	} else if p.WorkspacePath != "" {
		return BootParams{}, errdefs.InvalidArgument(ParamWorkspacePath, p.WorkspacePath, "needs "+ParamWorkspace)
	}
	if mounts != "" {
		var err error
		if p.Mounts, err = parseMounts(mounts); err != nil {
			return BootParams{}, err
		}
	}
	if !strings.HasPrefix(p.ModulesDir, "/") {
		return BootParams{}, errdefs.InvalidArgument(ParamModules, p.ModulesDir, "must be an absolute path")
	}
	if p.Init != "" && p.Init != InitNone && !strings.HasPrefix(p.Init, "/") {
		return BootParams{}, errdefs.InvalidArgument(ParamInit, p.Init, `must be "none" or an absolute path`)
	}
	if ip != "" {
		pfx, err := netip.ParsePrefix(ip)
		if err != nil || !pfx.Addr().Is4() {
			return BootParams{}, errdefs.InvalidArgument(ParamIP, ip, "must be an IPv4 address with prefix length, like 172.30.0.5/24")
		}
		p.Addr = pfx
	}
	if gw != "" {
		if ip == "" {
			return BootParams{}, errdefs.InvalidArgument(ParamGateway, gw, "needs "+ParamIP)
		}
		a, err := netip.ParseAddr(gw)
		if err != nil || !a.Is4() {
			return BootParams{}, errdefs.InvalidArgument(ParamGateway, gw, "must be an IPv4 address")
		}
		if !p.Addr.Masked().Contains(a) {
			return BootParams{}, errdefs.InvalidArgument(ParamGateway, gw, "must be inside "+p.Addr.Masked().String())
		}
		p.Gateway = a
	}
	if dns != "" {
		for _, s := range strings.Split(dns, ",") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return BootParams{}, errdefs.InvalidArgument(ParamDNS, dns, "must be comma separated IP addresses")
			}
			p.DNS = append(p.DNS, a)
		}
	}
	return p, nil
}

// Args renders p as kernel command line arguments, the inverse of ParseCmdline. It quotes
// nothing because valid values contain no spaces.
func (p BootParams) Args() string {
	args := []string{ParamName + "=" + p.Name}
	if p.Addr.IsValid() {
		args = append(args, ParamIP+"="+p.Addr.String())
	}
	if p.Gateway.IsValid() {
		args = append(args, ParamGateway+"="+p.Gateway.String())
	}
	if len(p.DNS) > 0 {
		s := make([]string, len(p.DNS))
		for i, a := range p.DNS {
			s[i] = a.String()
		}
		args = append(args, ParamDNS+"="+strings.Join(s, ","))
	}
	args = append(args, ParamRoot+"="+p.Root, ParamSystem+"="+p.System)
	if p.Work != "" {
		args = append(args, ParamWork+"="+p.Work)
	}
	if p.Workspace != "" {
		args = append(args, ParamWorkspace+"="+p.Workspace, ParamWorkspacePath+"="+p.WorkspacePath)
	}
	if len(p.Mounts) > 0 {
		args = append(args, MountsParam(p.Mounts))
	}
	if p.ModulesDir != "" {
		args = append(args, ParamModules+"="+p.ModulesDir)
	}
	if p.Init != "" {
		args = append(args, ParamInit+"="+p.Init)
	}
	return strings.Join(args, " ")
}

// String is for logs.
func (p BootParams) String() string { return fmt.Sprintf("BootParams{%s}", p.Args()) }
