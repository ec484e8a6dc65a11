package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The README's configuration block must load and equal the built-in defaults, so the
// documentation cannot drift from the code.
func TestReadmeConfigIsTheDefaults(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "## Configuration")
	if !ok {
		t.Fatal("README has no Configuration section")
	}
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("README Configuration section has no yaml block")
	}
	path := filepath.Join(t.TempDir(), "bangerd.yaml")
	if err := os.WriteFile(path, []byte(block), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatalf("README config does not load: %v", err)
	}
	if err := got.Finish(); err != nil {
		t.Fatalf("README config does not validate: %v", err)
	}
	want := Default()
	if err := want.Finish(); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Skip("the README shows root's paths")
	}
	if g, w := strings.TrimSpace(dump(got)), strings.TrimSpace(dump(want)); g != w {
		t.Fatalf("README config differs from the defaults:\nREADME:   %s\ndefaults: %s", g, w)
	}
}

func TestFinishNamesBadFields(t *testing.T) {
	for _, tc := range []struct {
		mut   func(*Config)
		field string
	}{
		{func(c *Config) { c.StateDir = "relative" }, "state_dir"},
		{func(c *Config) { c.Network.CIDR = "172.30.0.0/24" }, "network.cidr"},
		{func(c *Config) { c.Network.CIDR = "not-a-cidr" }, "network.cidr"},
		{func(c *Config) { c.VMM = "vbox" }, "vmm"},
		{func(c *Config) { c.Defaults.Memory = "lots" }, "defaults.memory"},
		{func(c *Config) { c.Defaults.WorkDiskSize = "1K" }, "defaults.work_disk_size"},
		{func(c *Config) { c.DNS.Domain = "Bad_Domain" }, "dns.domain"},
		{func(c *Config) { c.ConsoleLogMax = "1K" }, "console_log_max"},
		{func(c *Config) { c.ConsoleLogMax = "much" }, "console_log_max"},
		{func(c *Config) { c.Pools = []Pool{{Size: 1}} }, "pools[0].image"},
		{func(c *Config) { c.Pools = []Pool{{Image: "tiny"}} }, "pools[0].size"},
		{func(c *Config) { c.Pools = []Pool{{Image: "tiny", Size: MaxPoolSize + 1}} }, "pools[0].size"},
		{func(c *Config) { c.Pools = []Pool{{Image: "tiny", Size: 1, Memory: "1X"}} }, "pools[0].memory"},
		{func(c *Config) { c.Pools = []Pool{{Image: "tiny", Size: 1, VCPU: 999}} }, "pools[0].vcpu"},
		{func(c *Config) { c.Pools = []Pool{{Image: "tiny", Size: 1, Mode: "hot"}} }, "pools[0].mode"},
		{func(c *Config) { c.Pools = []Pool{{Image: "tiny", Size: 1, Name: "Bad_Name"}} }, "pools[0].name"},
		{func(c *Config) { c.Pools = []Pool{{Image: "tiny", Size: 1}, {Image: "tiny", Size: 2}} }, "pools[1].name"},
	} {
		c := Default()
		tc.mut(&c)
		err := c.Finish()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("want an error naming %s, got %v", tc.field, err)
		}
	}
}

func TestUnknownKeysAreErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bangerd.yaml")
	os.WriteFile(path, []byte("netwrk:\n  enabled: true\n"), 0o644)
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "netwrk") {
		t.Fatalf("a misspelt key must be an error naming it, got %v", err)
	}
}

func dump(c Config) string {
	return strings.Join([]string{c.StateDir, c.RuntimeDir, c.Socket, c.CacheDir(), c.VMM, c.Qemu.Binary, c.Qemu.Accel,
		c.Qemu.Machine, c.Firecracker.Binary, c.Network.HelperSocket, c.Network.Bridge, c.Network.CIDR,
		c.Network.Uplink, c.DNS.Domain, strings.Join(c.DNS.Listen, ","), strings.Join(c.DNS.Upstreams, ","),
		c.Defaults.Image, c.Defaults.Memory, c.Defaults.SystemOverlaySize, c.Defaults.WorkDiskSize,
		strings.Join(c.Catalogs, ","), c.DebianMirror, c.AgentPath, c.MetricsListen}, "|") + "|" + boolStr(c.Network.Enabled)
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// TestDefaultSocketIsTheDaemonsDefault: the CLI's default socket is the one an unconfigured
// bangerd listens on, whatever the user (root, XDG_RUNTIME_DIR set or not).
func TestDefaultSocketIsTheDaemonsDefault(t *testing.T) {
	for _, xdg := range []string{"", t.TempDir()} {
		t.Setenv("XDG_RUNTIME_DIR", xdg)
		c := Default()
		if err := c.Finish(); err != nil {
			t.Fatal(err)
		}
		if got := DefaultSocket(); got != c.Socket {
			t.Errorf("XDG_RUNTIME_DIR=%q: DefaultSocket() = %s, daemon listens on %s", xdg, got, c.Socket)
		}
	}
}

func TestPoolDefaults(t *testing.T) {
	c := Default()
	c.Pools = []Pool{{Image: "tiny", Size: 2}, {Name: "big", Image: "tiny", VCPU: 2, Memory: "1G", Size: 1, Mode: "snapshot"}}
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	if p := c.Pools[0]; p.Name != "tiny-1c512m" || p.VCPU != 1 || p.MemoryMiB != 512 || p.Mode != PoolModeVMs {
		t.Fatalf("defaults not filled: %+v", p)
	}
	if p := c.Pools[1]; p.MemoryMiB != 1024 || p.Mode != PoolModeSnapshot {
		t.Fatalf("%+v", p)
	}
}
