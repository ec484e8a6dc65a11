package ctrshim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"banger/internal/agentclient"
	"banger/internal/api"
	"banger/internal/errdefs"
)

// GuestRoot is where a container's rootfs lives inside its VM: a directory on the VM's work
// disk (/root, root.ext4), so the container's writes land on that VM's own disk and vanish
// with it.
const GuestRoot = "/root/rootfs"

// maxSpecBytes bounds config.json: containerd writes it, but nothing here needs more.
const maxSpecBytes = 4 << 20

// plan is what an OCI spec asks of banger: the VM to create, the guest mounts to set up in
// the container's root, and the init process.
type plan struct {
	vm       api.VMCreateParams
	hostname string
	mounts   []guestMount
	proc     agentclient.ExecRequest
}

// guestMount is one filesystem mounted inside GuestRoot before the process starts.
type guestMount struct {
	fstype, source, target string
	options                []string
}

// VMName is the name of the VM running container id of containerd namespace ns. It is the
// container's label in banger: derived, not stored, so a restarted shim (or containerd's
// `shim delete` cleanup after a shim crash) finds the VM from the two names alone. The hash
// keeps names of different namespaces apart; the readable prefix is for `banger vm ls`.
func VMName(ns, id string) string {
	sum := sha256.Sum256([]byte(ns + "\x00" + id))
	prefix := strings.Trim(nonLabel.ReplaceAllString(strings.ToLower(id), "-"), "-")
	if len(prefix) > 24 {
		prefix = strings.TrimRight(prefix[:24], "-")
	}
	if prefix == "" {
		return "ctr-" + hex.EncodeToString(sum[:6])
	}
	return "ctr-" + prefix + "-" + hex.EncodeToString(sum[:6])
}

var nonLabel = regexp.MustCompile(`[^a-z0-9]+`)

// readSpec loads bundle/config.json.
func readSpec(bundle string) (*specs.Spec, error) {
	f, err := os.Open(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("reading the OCI spec of bundle %s: %w", bundle, err)
	}
	defer f.Close()
	var s specs.Spec
	dec := json.NewDecoder(&limitedReader{r: f, n: maxSpecBytes})
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("decoding the OCI spec of bundle %s: %w", bundle, err)
	}
	return &s, nil
}

// namespacesVMProvides are the Linux namespaces a VM gives a container by being a VM: a
// container asking for them gets the VM's own. A namespace given by path (joining another
// process's) cannot be honoured: that process is on the host.
var namespacesVMProvides = map[specs.LinuxNamespaceType]bool{
	specs.PIDNamespace: true, specs.NetworkNamespace: true, specs.MountNamespace: true,
	specs.IPCNamespace: true, specs.UTSNamespace: true, specs.CgroupNamespace: true,
}

// fsTypesInVM are the mount types that make sense inside the VM: kernel filesystems the
// guest makes for itself. Bind mounts would need a host directory shared into the guest.
var fsTypesInVM = map[string]bool{
	"proc": true, "sysfs": true, "tmpfs": true, "devpts": true, "mqueue": true, "cgroup2": true, "devtmpfs": true,
}

// mountFlagsKept are the mount(8) flags passed through; the rest (propagation, atime
// variants) are irrelevant in a VM that owns its kernel and are dropped.
var mountFlagsKept = map[string]bool{"ro": true, "rw": true, "nosuid": true, "nodev": true, "noexec": true}

// safePath is what a mount target or the hostname may look like: it is put into a guest
// shell command line.
var safePath = regexp.MustCompile(`^/[A-Za-z0-9._/-]*$`)
var safeOption = regexp.MustCompile(`^[A-Za-z0-9_]+(=[A-Za-z0-9_.:,]+)?$`)
var safeHostname = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$`)

// planFor maps an OCI spec onto a VM and a process; anything it cannot honour is an error
// naming the field and value, before any VM exists.
func planFor(s *specs.Spec) (*plan, error) {
	if s.Process == nil || len(s.Process.Args) == 0 {
		return nil, errdefs.InvalidArgument("process.args", nil, "the OCI spec has no process to run")
	}
	if s.Root == nil || s.Root.Path == "" {
		return nil, errdefs.InvalidArgument("root.path", "", "the OCI spec has no root filesystem")
	}
	p := &plan{}
	p.proc = agentclient.ExecRequest{
		Argv: s.Process.Args,
		Env:  s.Process.Env,
		Cwd:  s.Process.Cwd,
		TTY:  s.Process.Terminal,
		Root: GuestRoot,
		UID:  s.Process.User.UID,
		GID:  s.Process.User.GID,
	}
	if s.Process.ConsoleSize != nil {
		p.proc.Rows, p.proc.Cols = uint16(s.Process.ConsoleSize.Height), uint16(s.Process.ConsoleSize.Width)
	}
	p.proc.Groups = s.Process.User.AdditionalGids
	if s.Process.User.Username != "" {
		return nil, errdefs.InvalidArgument("process.user.username", s.Process.User.Username, "only numeric uid/gid are supported (containerd resolves names before the runtime)")
	}
	if s.Hostname != "" {
		if !safeHostname.MatchString(s.Hostname) {
			return nil, errdefs.InvalidArgument("hostname", s.Hostname, "must be a host name of letters, digits, dots and dashes")
		}
		p.hostname = s.Hostname
	}
	if s.Linux != nil {
		for _, ns := range s.Linux.Namespaces {
			if !namespacesVMProvides[ns.Type] {
				continue
			}
			if ns.Path != "" {
				return nil, errdefs.InvalidArgument("linux.namespaces", string(ns.Type)+":"+ns.Path,
					"joining an existing namespace is not supported: the container runs in its own VM, not beside host processes")
			}
		}
		// An OCI spec without a pid (or network) namespace shares the host's; a VM cannot.
		for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.NetworkNamespace} {
			if !hasNamespace(s.Linux.Namespaces, want) {
				return nil, errdefs.InvalidArgument("linux.namespaces", "no "+string(want)+" namespace",
					"sharing the host's "+string(want)+" namespace is not supported: the container runs in its own VM")
			}
		}
		if r := s.Linux.Resources; r != nil {
			if r.CPU != nil && r.CPU.Quota != nil && *r.CPU.Quota > 0 {
				period := uint64(100000)
				if r.CPU.Period != nil && *r.CPU.Period > 0 {
					period = *r.CPU.Period
				}
				// A fractional CPU rounds up: a VM has whole vCPUs.
				p.vm.VCPU = int((uint64(*r.CPU.Quota) + period - 1) / period)
			}
			if r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
				mib := (*r.Memory.Limit + (1 << 20) - 1) >> 20
				p.vm.Memory = fmt.Sprintf("%dM", mib)
			}
		}
	} else {
		return nil, errdefs.InvalidArgument("linux", nil, "the banger runtime runs Linux containers only")
	}
	for _, m := range s.Mounts {
		gm, ok, err := guestMountFor(m)
		if err != nil {
			return nil, err
		}
		if ok {
			p.mounts = append(p.mounts, gm)
		}
	}
	return p, nil
}

func hasNamespace(nss []specs.LinuxNamespace, t specs.LinuxNamespaceType) bool {
	for _, ns := range nss {
		if ns.Type == t {
			return true
		}
	}
	return false
}

// guestMountFor turns one OCI mount into a guest mount. ok is false for mounts that the
// VM makes unnecessary (the cgroup v1 hierarchy).
func guestMountFor(m specs.Mount) (guestMount, bool, error) {
	target := filepath.Clean(m.Destination)
	if !safePath.MatchString(target) || target == "/" {
		return guestMount{}, false, errdefs.InvalidArgument("mounts.destination", m.Destination, "must be an absolute path of letters, digits, '.', '_', '-' and '/', other than /")
	}
	fstype := m.Type
	if fstype == "cgroup" {
		return guestMount{}, false, nil
	}
	if fstype == "bind" || hasOption(m.Options, "bind") || hasOption(m.Options, "rbind") {
		return guestMount{}, false, errdefs.InvalidArgument("mounts", m.Source+":"+m.Destination,
			"bind mounts of host paths are not supported by the banger runtime (the container runs in a VM)")
	}
	if !fsTypesInVM[fstype] {
		return guestMount{}, false, errdefs.InvalidArgument("mounts.type", fstype+" at "+m.Destination, "not a filesystem the VM can provide")
	}
	// /dev as an empty tmpfs would hide the VM's devices (runc fills it from
	// linux.devices); the guest's devtmpfs already holds exactly the VM's devices.
	if target == "/dev" && fstype == "tmpfs" {
		fstype = "devtmpfs"
	}
	// Every devpts mount is a new instance (Linux ≥ 4.7), and the agent allocates a TTY
	// from the guest's: the container sees that one, or its terminal has no name.
	if fstype == "devpts" {
		return guestMount{fstype: "devpts", source: "/dev/pts", target: target, options: []string{"bind"}}, true, nil
	}
	var opts []string
	for _, o := range m.Options {
		if mountFlagsKept[o] || (strings.Contains(o, "=") && safeOption.MatchString(o)) {
			if fstype == "devtmpfs" && strings.Contains(o, "=") {
				continue // devtmpfs takes no size/mode: it is the kernel's single instance
			}
			opts = append(opts, o)
		}
	}
	return guestMount{fstype: fstype, source: fstype, target: target, options: opts}, true, nil
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

// setupScript is the guest shell command that prepares GuestRoot: the mounts (creating
// their mount points) and the hostname. Every interpolated value passed safePath,
// safeOption or safeHostname.
func (p *plan) setupScript() string {
	var b strings.Builder
	b.WriteString("set -e\n")
	for _, m := range p.mounts {
		dst := GuestRoot + m.target
		fmt.Fprintf(&b, "mkdir -p %s\n", dst)
		opt := ""
		if len(m.options) > 0 {
			opt = " -o " + strings.Join(m.options, ",")
		}
		fmt.Fprintf(&b, "mount -t %s%s %s %s\n", m.fstype, opt, m.source, dst)
	}
	if p.hostname != "" {
		fmt.Fprintf(&b, "hostname %s\n", p.hostname)
	}
	return b.String()
}

type limitedReader struct {
	r interface{ Read([]byte) (int, error) }
	n int64
}

func (l *limitedReader) Read(b []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("OCI spec larger than %d bytes", maxSpecBytes)
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.r.Read(b)
	l.n -= int64(n)
	return n, err
}
