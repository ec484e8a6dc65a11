package model

import (
	"fmt"
	"path/filepath"
	"strings"

	"banger/internal/errdefs"
)

// Mount is a live shared folder of a VM (`--mount HOSTDIR:GUESTPATH[:ro|:rw]`): the host
// directory HostDir (absolute, symlinks resolved when the VM was created) appears at
// GuestPath in the guest, read-only unless ReadOnly is false.
type Mount struct {
	HostDir   string `json:"host_dir"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
}

// MaxMounts caps the shared folders of one VM: each costs a virtiofsd process.
const MaxMounts = 8

// MountFlag is the flag (and so the field) mounts are named by in errors.
const MountFlag = "--mount"

// ParseMount reads one `--mount` value: HOSTDIR:GUESTPATH with an optional :ro (the
// default) or :rw. HOSTDIR is taken as given (may be relative, may contain ':'); the
// guest path is checked like a workspace's. Errors name the flag and the value.
func ParseMount(v string) (Mount, error) {
	m := Mount{ReadOnly: true}
	rest := v
	if i := strings.LastIndex(rest, ":"); i >= 0 {
		switch rest[i+1:] {
		case "ro":
			rest = rest[:i]
		case "rw":
			m.ReadOnly = false
			rest = rest[:i]
		}
	}
	if parts := strings.Split(rest, ":"); len(parts) >= 3 && rest == v &&
		!strings.HasPrefix(parts[len(parts)-1], "/") && strings.HasPrefix(parts[len(parts)-2], "/") {
		// HOSTDIR:GUESTPATH:MODE with a mode that is neither: say so, rather than take
		// the mode for a relative guest path.
		return Mount{}, errdefs.InvalidArgument(MountFlag, v, fmt.Sprintf("mode %q must be ro or rw", parts[len(parts)-1]))
	}
	i := strings.LastIndex(rest, ":")
	if i <= 0 || i == len(rest)-1 {
		return Mount{}, errdefs.InvalidArgument(MountFlag, v, "must be HOSTDIR:GUESTPATH, optionally followed by :ro (the default) or :rw")
	}
	m.HostDir, m.GuestPath = rest[:i], rest[i+1:]
	if err := ValidateMountGuestPath(v, m.GuestPath); err != nil {
		return Mount{}, err
	}
	return m, nil
}

// ValidateMountGuestPath checks a mount's guest path like a workspace's (absolute, plain
// characters, not / and not a system directory); value is what the user gave (the whole
// flag value), for the error.
func ValidateMountGuestPath(value, p string) error {
	if err := ValidateWorkspacePath(MountFlag, p); err != nil {
		return errdefs.New(errdefs.ErrInvalidArgument, "%s: GUESTPATH %q is not usable (%s) (got %q)", MountFlag, p, guestPathRule, value)
	}
	return nil
}

const guestPathRule = "it must be an absolute guest path of letters, digits and ._+-, without . or .. elements, not / and not a system directory such as /proc, /sys, /dev, /etc, /usr or below one"

// ValidateMounts checks a VM's mounts as the daemon stores them: absolute clean host
// directories, valid and distinct guest paths none inside another, at most MaxMounts.
func ValidateMounts(ms []Mount) error {
	if len(ms) > MaxMounts {
		return errdefs.InvalidArgument(MountFlag, len(ms), "at most 8 mounts per VM")
	}
	for i, m := range ms {
		value := m.HostDir + ":" + m.GuestPath
		if !filepath.IsAbs(m.HostDir) || filepath.Clean(m.HostDir) != m.HostDir {
			return errdefs.InvalidArgument(MountFlag, value, "HOSTDIR must be an absolute, clean path")
		}
		if err := ValidateMountGuestPath(value, m.GuestPath); err != nil {
			return err
		}
		for _, o := range ms[:i] {
			if under(m.GuestPath, o.GuestPath) || under(o.GuestPath, m.GuestPath) {
				return errdefs.InvalidArgument(MountFlag, value, "GUESTPATH overlaps another mount's "+o.GuestPath)
			}
		}
	}
	return nil
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
