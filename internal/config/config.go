// Package config loads bangerd's configuration: a YAML file whose every field has a default,
// so an empty or missing file yields a working daemon.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// Config is bangerd's configuration.
type Config struct {
	StateDir   string `yaml:"state_dir"`   // database, images, vms
	RuntimeDir string `yaml:"runtime_dir"` // sockets
	Socket     string `yaml:"socket"`      // the daemon's RPC socket
	// Cache holds downloads (Debian kernel packages, partial pulls); default state_dir/cache.
	Cache string `yaml:"cache_dir"`

	Network  Network  `yaml:"network"`
	DNS      DNS      `yaml:"dns"`
	Defaults Defaults `yaml:"defaults"`
	// Workspace bounds `vm run/create --workspace` copies of host trees.
	Workspace Workspace `yaml:"workspace"`

	// VMM is auto, qemu or firecracker.
	VMM         string      `yaml:"vmm"`
	Qemu        Qemu        `yaml:"qemu"`
	Firecracker Firecracker `yaml:"firecracker"`

	// AgentPath is the static guest agent binary put into images built here. Empty: next
	// to the bangerd executable.
	AgentPath string `yaml:"agent_path"`

	// Catalogs are extra image catalogs (file paths or http(s) URLs) layered over the
	// embedded one; later entries override earlier ones by image name.
	Catalogs []string `yaml:"catalogs"`
	// MetricsListen is a TCP address for Prometheus metrics at /metrics; empty: off.
	MetricsListen string `yaml:"metrics_listen"`
	// ConsoleLogMax caps each of a VM's two console log files (console.log and the rotated
	// console.log.1): a guest can print without end.
	ConsoleLogMax string `yaml:"console_log_max"`
	// ConsoleLogMaxBytes is ConsoleLogMax parsed by Finish.
	ConsoleLogMaxBytes int64 `yaml:"-"`
	// DebianMirror is used by the debian image builder.
	DebianMirror string `yaml:"debian_mirror"`
	// Pools are warm pools: VMs of one spec kept ready so a matching create is served at
	// once (internal/daemon/pool.go).
	Pools []Pool `yaml:"pools"`
}

// Pool is one warm pool: the daemon keeps a snapshot of a VM of this spec booted to
// agent-ready and, in mode "vms", Size VMs restored from it and paused, each handed out
// whole to a create asking for the same image, vcpu and memory.
type Pool struct {
	// Name defaults to IMAGE-VCPUcMEMm, e.g. tiny-1c512m.
	Name   string `yaml:"name"`
	Image  string `yaml:"image"`
	VCPU   int    `yaml:"vcpu"`   // default: defaults.vcpu
	Memory string `yaml:"memory"` // default: defaults.memory
	Size   int    `yaml:"size"`
	// Mode is "vms" (the default: Size paused VMs ready) or "snapshot" (only the snapshot;
	// a create restores from it).
	Mode string `yaml:"mode"`
	// MemoryMiB is Memory parsed by Finish.
	MemoryMiB int `yaml:"-"`
}

// Pool modes.
const (
	PoolModeVMs      = "vms"
	PoolModeSnapshot = "snapshot"
)

// MaxPoolSize bounds one pool: every ready VM holds a guest address and its memory.
const MaxPoolSize = 32

// Network configures the bridge the root helper manages.
type Network struct {
	// Enabled attaches VMs to the bridge through the root helper; without it VMs have no NIC.
	Enabled      bool   `yaml:"enabled"`
	HelperSocket string `yaml:"helper_socket"`
	Bridge       string `yaml:"bridge"`
	CIDR         string `yaml:"cidr"` // bridge IP with prefix, e.g. 172.30.0.1/24
	// Uplink is the interface NAT masquerades out of; empty means any non-bridge interface.
	Uplink string `yaml:"uplink"`
}

// DNS configures the VM name server.
type DNS struct {
	Domain string `yaml:"domain"`
	// Listen are extra addresses for the host (the bridge IP:53 is added when networking is on).
	Listen    []string `yaml:"listen"`
	Upstreams []string `yaml:"upstreams"` // empty: the host's /etc/resolv.conf
	// FixedPorts makes a taken listen port an error. By default a daemon whose listen port is
	// held (by another bangerd started side by side) serves on a free port of the same IP,
	// logged and shown by `banger doctor`.
	FixedPorts bool `yaml:"fixed_ports"`
}

// Workspace is the workspaces section.
type Workspace struct {
	// MaxSize is the largest host tree (the bytes of its files) a workspace may copy.
	MaxSize string `yaml:"max_size"`
	// MaxSizeBytes is MaxSize parsed by Finish.
	MaxSizeBytes int64 `yaml:"-"`
}

// Defaults are used when vm create leaves a value out.
type Defaults struct {
	Image             string `yaml:"image"`
	VCPU              int    `yaml:"vcpu"`
	Memory            string `yaml:"memory"`
	SystemOverlaySize string `yaml:"system_overlay_size"`
	WorkDiskSize      string `yaml:"work_disk_size"`
}

// Qemu configures the qemu driver.
type Qemu struct {
	Binary  string `yaml:"binary"`
	Accel   string `yaml:"accel"`   // auto, kvm, tcg
	Machine string `yaml:"machine"` // microvm, q35
}

// Firecracker configures the firecracker driver.
type Firecracker struct {
	Binary string `yaml:"binary"`
}

// Default returns the built-in configuration.
func Default() Config {
	state := "/var/lib/banger"
	runtime := "/run/banger"
	if os.Geteuid() != 0 {
		home, _ := os.UserHomeDir()
		state = filepath.Join(home, ".local", "share", "banger")
		if xdg := os.Getenv("XDG_RUNTIME_DIR"); xdg != "" {
			runtime = filepath.Join(xdg, "banger")
		} else {
			runtime = filepath.Join(state, "run")
		}
	}
	return Config{
		StateDir:   state,
		RuntimeDir: runtime,
		Network: Network{
			Bridge:       "banger0",
			CIDR:         "172.30.0.1/24",
			HelperSocket: "/run/banger-helper.sock",
		},
		DNS: DNS{Domain: "banger.internal", Listen: []string{"127.0.0.1:10053"}},
		Defaults: Defaults{
			Image: "tiny", VCPU: 1, Memory: "512M",
			SystemOverlaySize: "4G", WorkDiskSize: "8G",
		},
		VMM:           "auto",
		Qemu:          Qemu{Binary: "qemu-system-x86_64", Accel: "auto", Machine: "microvm"},
		Firecracker:   Firecracker{Binary: "firecracker"},
		DebianMirror:  "http://deb.debian.org/debian",
		ConsoleLogMax: "2M",
		Workspace:     Workspace{MaxSize: "4G"},
	}
}

// Load reads path (if non-empty) over the defaults and validates the result.
func Load(path string) (Config, error) {
	c := Default()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("reading config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil && err.Error() != "EOF" {
			return c, fmt.Errorf("parsing config %s: %w", path, err)
		}
	}
	return c, nil
}

// socketName is bangerd's socket in its runtime directory.
const socketName = "bangerd.sock"

// DefaultSocket is where bangerd listens, and so where the CLI looks, when nothing (flag,
// config, BANGER_SOCKET) says otherwise: the default runtime directory's socket for this user.
func DefaultSocket() string { return filepath.Join(Default().RuntimeDir, socketName) }

// Finish fills derived values (socket from runtime dir) and validates. Call it after flags
// have overridden fields.
func (c *Config) Finish() error {
	if c.Socket == "" {
		c.Socket = filepath.Join(c.RuntimeDir, socketName)
	}
	for _, p := range []struct{ field, v string }{{"state_dir", c.StateDir}, {"runtime_dir", c.RuntimeDir}} {
		if !filepath.IsAbs(p.v) {
			return errdefs.InvalidArgument(p.field, p.v, "must be an absolute path")
		}
	}
	if _, err := c.BridgePrefix(); err != nil {
		return err
	}
	if err := model.ValidateName("dns.domain label", firstLabel(c.DNS.Domain)); err != nil {
		return errdefs.InvalidArgument("dns.domain", c.DNS.Domain, "must be a DNS name")
	}
	switch c.VMM {
	case "auto", "qemu", "firecracker":
	default:
		return errdefs.InvalidArgument("vmm", c.VMM, "must be auto, qemu or firecracker")
	}
	if c.Defaults.VCPU == 0 {
		c.Defaults.VCPU = 1
	}
	if err := model.ValidateVCPU(c.Defaults.VCPU); err != nil {
		return fmt.Errorf("defaults: %w", err)
	}
	if _, err := model.MemoryMiB("defaults.memory", c.Defaults.Memory); err != nil {
		return err
	}
	if _, err := model.DiskBytes("defaults.system_overlay_size", c.Defaults.SystemOverlaySize); err != nil {
		return err
	}
	if _, err := model.DiskBytes("defaults.work_disk_size", c.Defaults.WorkDiskSize); err != nil {
		return err
	}
	n, err := model.ParseSize("console_log_max", c.ConsoleLogMax)
	if err != nil {
		return err
	}
	if n < minConsoleLog || n > maxConsoleLog {
		return errdefs.InvalidArgument("console_log_max", c.ConsoleLogMax,
			"must be between "+model.FormatSize(minConsoleLog)+" and "+model.FormatSize(maxConsoleLog))
	}
	c.ConsoleLogMaxBytes = n
	ws, err := model.ParseSize("workspace.max_size", c.Workspace.MaxSize)
	if err != nil {
		return err
	}
	if ws < 1<<20 || ws > maxWorkspace {
		return errdefs.InvalidArgument("workspace.max_size", c.Workspace.MaxSize,
			"must be between 1M and "+model.FormatSize(maxWorkspace))
	}
	c.Workspace.MaxSizeBytes = ws
	return c.finishPools()
}

// finishPools fills the pools' defaults and checks them: each field is named by its index.
func (c *Config) finishPools() error {
	seen := map[string]bool{}
	for i := range c.Pools {
		p := &c.Pools[i]
		field := func(f string) string { return fmt.Sprintf("pools[%d].%s", i, f) }
		if p.Image == "" {
			return errdefs.InvalidArgument(field("image"), p.Image, "is required")
		}
		if p.VCPU == 0 {
			p.VCPU = c.Defaults.VCPU
		}
		if err := model.ValidateVCPU(p.VCPU); err != nil {
			return fmt.Errorf("%s: %w", field("vcpu"), err)
		}
		if p.Memory == "" {
			p.Memory = c.Defaults.Memory
		}
		mem, err := model.MemoryMiB(field("memory"), p.Memory)
		if err != nil {
			return err
		}
		p.MemoryMiB = mem
		if p.Size < 1 || p.Size > MaxPoolSize {
			return errdefs.InvalidArgument(field("size"), p.Size, fmt.Sprintf("must be between 1 and %d", MaxPoolSize))
		}
		switch p.Mode {
		case "":
			p.Mode = PoolModeVMs
		case PoolModeVMs, PoolModeSnapshot:
		default:
			return errdefs.InvalidArgument(field("mode"), p.Mode, "must be vms or snapshot")
		}
		if p.Name == "" {
			p.Name = strings.ToLower(fmt.Sprintf("%s-%dc%dm", p.Image, p.VCPU, p.MemoryMiB))
		}
		// Pool names go into VM and snapshot names (pool-NAME-xxxxxx), which are DNS labels.
		if len(p.Name) > maxPoolName {
			return errdefs.InvalidArgument(field("name"), p.Name, fmt.Sprintf("must be at most %d characters", maxPoolName))
		}
		if err := model.ValidateName(field("name"), p.Name); err != nil {
			return err
		}
		if seen[p.Name] {
			return errdefs.InvalidArgument(field("name"), p.Name, "is already the name of another pool")
		}
		seen[p.Name] = true
	}
	return nil
}

// maxPoolName leaves room for "pool-" and "-xxxxxx" in a 63-character DNS label.
const maxPoolName = 63 - len("pool-") - len("-xxxxxx")

// The console log cap's sane range: enough for a boot's messages, little enough that a
// host with many VMs keeps its disk.
const (
	minConsoleLog = 64 << 10
	maxConsoleLog = 1 << 30
	// maxWorkspace keeps a workspace image below what a sparse file and a copy can hold
	// sanely on a workstation.
	maxWorkspace = 1 << 40
)

func firstLabel(d string) string {
	if i := strings.IndexByte(d, '.'); i >= 0 {
		return d[:i]
	}
	return d
}

// BridgePrefix parses network.cidr: the bridge's address and the subnet it sits in.
func (c *Config) BridgePrefix() (netip.Prefix, error) {
	p, err := netip.ParsePrefix(c.Network.CIDR)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, errdefs.InvalidArgument("network.cidr", c.Network.CIDR, "must be an IPv4 address with prefix, e.g. 172.30.0.1/24")
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return netip.Prefix{}, errdefs.InvalidArgument("network.cidr", c.Network.CIDR, "prefix must be between /8 and /30")
	}
	if p.Addr() == p.Masked().Addr() {
		return netip.Prefix{}, errdefs.InvalidArgument("network.cidr", c.Network.CIDR, "must be the bridge's host address, not the network address")
	}
	return p, nil
}

// Paths derived from the state dir.
func (c *Config) DBPath() string    { return filepath.Join(c.StateDir, "banger.db") }
func (c *Config) ImagesDir() string { return filepath.Join(c.StateDir, "images") }
func (c *Config) VMsDir() string    { return filepath.Join(c.StateDir, "vms") }
func (c *Config) CacheDir() string {
	if c.Cache != "" {
		return c.Cache
	}
	return filepath.Join(c.StateDir, "cache")
}
