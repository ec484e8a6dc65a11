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

// Where containers live inside a VM. A container with its own VM has its rootfs as an ext4
// disk the guest mounts at /ctr/<id>/rootfs at boot (bangerd mounts no disk under /root,
// the work disk). A pod's later containers are streamed into /root/ctr/<id>/ on the VM's
// work disk (root.ext4). Either way a container's writes land on its VM's own disks and
// vanish with it.
const (
	ownVMContainers = "/ctr"
	podContainers   = "/root/ctr"
)

// containerDir is container id's directory in its VM: rootfs/ (its root) and binds/ (the
// host files bind-mounted into it, copied at create). inPod: it joins a sandbox's VM.
func containerDir(id string, inPod bool) string {
	if inPod {
		return podContainers + "/" + id
	}
	return ownVMContainers + "/" + id
}

// validID is what a container id must look like: it names a guest directory and is put into
// guest shell commands. containerd's own identifier rule is the same set, 76 characters.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,75}$`)

// The CRI plugin's annotations: what a container is in a pod, and its pod.
const (
	annoContainerType = "io.kubernetes.cri.container-type"
	annoSandboxID     = "io.kubernetes.cri.sandbox-id"
	typeSandbox       = "sandbox"
	typeContainer     = "container"
)

// podSandbox returns the id of the pod (sandbox) container whose VM the container described
// by s joins, or "" when the container has its own VM (a sandbox, or a container outside
// any pod). The sandbox-id annotation of a sandbox names the sandbox itself.
func podSandbox(s *specs.Spec) string {
	if s.Annotations[annoContainerType] != typeContainer {
		return ""
	}
	return s.Annotations[annoSandboxID]
}

// maxBindFile bounds a host file bind-mounted into a container (CRI's hosts, resolv.conf,
// hostname, termination-log): copied into the guest, not shared.
const maxBindFile = 1 << 20

// maxSpecBytes bounds config.json: containerd writes it, but nothing here needs more.
const maxSpecBytes = 4 << 20

// plan is what an OCI spec asks of banger: the VM to create, the guest mounts to set up in
// the container's root, and the init process.
type plan struct {
	vm       api.VMCreateParams
	dir      string // the container's guest directory (containerDir)
	hostname string
	mounts   []guestMount
	binds    []string // host files copied to dir/binds/N, bind-mounted by mounts
	rootDisk bool     // the root is an ext4 disk the guest mounted (nosuid, nodev) at boot
	proc     agentclient.ExecRequest
}

// guestMount is one filesystem mounted inside the container's root before the process
// starts. A bind mount's source is a path relative to the container's directory.
type guestMount struct {
	fstype, source, target string
	options                []string
	bind                   bool
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

// planFor maps the OCI spec of container id onto a VM and a process; anything it cannot
// honour is an error naming the field and value, before any VM exists.
func planFor(id string, s *specs.Spec) (*plan, error) {
	if !validID.MatchString(id) {
		return nil, errdefs.InvalidArgument("id", id, "a container id must be 1-76 letters, digits, '_', '.' or '-', starting with a letter or digit")
	}
	if s.Process == nil || len(s.Process.Args) == 0 {
		return nil, errdefs.InvalidArgument("process.args", nil, "the OCI spec has no process to run")
	}
	if s.Root == nil || s.Root.Path == "" {
		return nil, errdefs.InvalidArgument("root.path", "", "the OCI spec has no root filesystem")
	}
	p := &plan{dir: containerDir(id, podSandbox(s) != "")}
	p.proc = agentclient.ExecRequest{
		Argv: s.Process.Args,
		Env:  s.Process.Env,
		Cwd:  s.Process.Cwd,
		TTY:  s.Process.Terminal,
		Root: p.dir + "/rootfs",
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
	// In a CRI pod every container names namespaces by path: the sandbox its CNI network
	// namespace, the others the sandbox's. They all mean the pod, which is the VM.
	_, inPod := s.Annotations[annoContainerType]
	if s.Linux != nil {
		for _, ns := range s.Linux.Namespaces {
			if !namespacesVMProvides[ns.Type] {
				continue
			}
			if ns.Path != "" && !inPod {
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
		gm, ok, err := p.guestMountFor(m)
		if err != nil {
			return nil, err
		}
		if ok {
			p.mounts = append(p.mounts, gm)
		}
	}
	return p, nil
}

// bindFor maps a bind mount: /dev/shm (CRI binds the pod's host tmpfs there) becomes the
// container's own tmpfs; a regular host file is copied into the container's directory and
// bind-mounted from there in the guest (a copy made at create, not shared: later host
// changes are not seen, the container's writes stay in the VM); a directory would need a
// shared file system and is refused.
func (p *plan) bindFor(m specs.Mount, target string) (guestMount, error) {
	opts := flagsOf(m.Options)
	if target == "/dev/shm" {
		return guestMount{fstype: "tmpfs", source: "shm", target: target, options: opts}, nil
	}
	fi, err := os.Stat(m.Source)
	if err != nil {
		return guestMount{}, errdefs.InvalidArgument("mounts", m.Source+":"+m.Destination, "the bind mount's source cannot be read: "+err.Error())
	}
	if !fi.Mode().IsRegular() {
		return guestMount{}, errdefs.InvalidArgument("mounts", m.Source+":"+m.Destination,
			"bind mounts of host directories are not supported by the banger runtime (the container runs in a VM; only regular files are copied in)")
	}
	if fi.Size() > maxBindFile {
		return guestMount{}, errdefs.InvalidArgument("mounts", m.Source+":"+m.Destination, fmt.Sprintf("a bind-mounted file is copied into the VM and may be at most %d bytes, not %d", maxBindFile, fi.Size()))
	}
	p.binds = append(p.binds, m.Source)
	return guestMount{fstype: "none", source: fmt.Sprintf("binds/%d", len(p.binds)-1), target: target, options: opts, bind: true}, nil
}

// flagsOf keeps the mount flags that mean something in the guest.
func flagsOf(options []string) []string {
	var opts []string
	for _, o := range options {
		if mountFlagsKept[o] {
			opts = append(opts, o)
		}
	}
	return opts
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
func (p *plan) guestMountFor(m specs.Mount) (guestMount, bool, error) {
	target := filepath.Clean(m.Destination)
	if !safePath.MatchString(target) || target == "/" {
		return guestMount{}, false, errdefs.InvalidArgument("mounts.destination", m.Destination, "must be an absolute path of letters, digits, '.', '_', '-' and '/', other than /")
	}
	fstype := m.Type
	if fstype == "cgroup" {
		return guestMount{}, false, nil
	}
	if fstype == "bind" || hasOption(m.Options, "bind") || hasOption(m.Options, "rbind") {
		gm, err := p.bindFor(m, target)
		return gm, err == nil, err
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

// setupScript is the guest shell command that prepares the container's root: the mounts
// (creating their mount points) and the hostname. Every interpolated value passed validID,
// safePath, safeOption or safeHostname. The image is hostile: a mount point that resolves
// outside the root (a symlink in the image) fails the create instead of mounting over the
// VM's own files, and a symlink where a file is bind-mounted is replaced by a file.
func (p *plan) setupScript() string {
	var b strings.Builder
	root := p.dir + "/rootfs"
	b.WriteString("set -e\n")
	if p.rootDisk {
		// The guest mounts workspace disks nosuid,nodev; an image's setuid programs and
		// device nodes must work as they would under runc.
		fmt.Fprintf(&b, "mount -o remount,suid,dev %s\n", root)
	}
	fmt.Fprintf(&b, "inroot() { case \"$(realpath \"$1\")\" in %s/*) ;; *) echo \"mount point $1 resolves outside the container's root\" >&2; exit 1;; esac; }\n", root)
	for _, m := range p.mounts {
		dst := root + m.target
		if m.bind {
			fmt.Fprintf(&b, "mkdir -p %s\ninroot %s\n", filepath.Dir(dst), filepath.Dir(dst))
			fmt.Fprintf(&b, "if [ -L %[1]s ] || [ ! -f %[1]s ]; then rm -rf %[1]s; : > %[1]s; fi\ninroot %[1]s\n", dst)
			fmt.Fprintf(&b, "mount --bind %s/%s %s\n", p.dir, m.source, dst)
			if hasOption(m.options, "ro") {
				fmt.Fprintf(&b, "mount -o remount,bind,ro %s\n", dst)
			}
			continue
		}
		fmt.Fprintf(&b, "mkdir -p %s\ninroot %s\n", dst, dst)
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
