package vmm

import (
	"net"
	"path/filepath"

	"banger/internal/errdefs"
)

// MaxSocketPath is the longest path a unix socket can bind (sun_path is 108 bytes,
// including the terminating NUL).
const MaxSocketPath = 107

// Validate checks the parts of s every driver relies on. Drivers add their own limits.
func (s Spec) Validate() error {
	if s.ID == "" {
		return errdefs.InvalidArgument("spec.id", s.ID, "must not be empty")
	}
	for _, f := range [...]struct{ field, path string }{
		{"spec.dir", s.Dir}, {"spec.kernel", s.Kernel}, {"spec.log_path", s.LogPath}, {"spec.channel_path", s.ChannelPath},
	} {
		if !filepath.IsAbs(f.path) {
			return errdefs.InvalidArgument(f.field, f.path, "must be an absolute path")
		}
	}
	if s.Initrd != "" && !filepath.IsAbs(s.Initrd) {
		return errdefs.InvalidArgument("spec.initrd", s.Initrd, "must be an absolute path")
	}
	if len(s.ChannelPath) > MaxSocketPath {
		return errdefs.InvalidArgument("spec.channel_path", s.ChannelPath, "too long for a unix socket (max 107 bytes)")
	}
	if s.VCPU < 1 {
		return errdefs.InvalidArgument("spec.vcpu", s.VCPU, "must be at least 1")
	}
	if s.MemoryMiB < 64 {
		return errdefs.InvalidArgument("spec.memory_mib", s.MemoryMiB, "must be at least 64")
	}
	seen := map[string]bool{}
	for _, d := range s.Drives {
		if d.ID == "" || seen[d.ID] {
			return errdefs.InvalidArgument("spec.drives.id", d.ID, "must be non-empty and unique")
		}
		seen[d.ID] = true
		if !filepath.IsAbs(d.Path) {
			return errdefs.InvalidArgument("spec.drives."+d.ID+".path", d.Path, "must be an absolute path")
		}
	}
	if s.Net != nil {
		if s.Net.Tap == "" || len(s.Net.Tap) > 15 {
			return errdefs.InvalidArgument("spec.net.tap", s.Net.Tap, "must be an interface name of 1-15 characters")
		}
		if hw, err := net.ParseMAC(s.Net.MAC); err != nil || len(hw) != 6 {
			return errdefs.InvalidArgument("spec.net.mac", s.Net.MAC, "must be a MAC address like 02:b4:ac:1e:00:02")
		}
	}
	return nil
}
