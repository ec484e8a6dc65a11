package model

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"banger/internal/errdefs"
)

// ValidateName checks that name is usable as a DNS label, since VM names become
// NAME.DOMAIN records. field names the argument in the error ("name", "image").
func ValidateName(field, name string) error {
	if name == "" {
		return errdefs.InvalidArgument(field, name, "must not be empty")
	}
	if len(name) > 63 {
		return errdefs.InvalidArgument(field, name, "must be at most 63 characters")
	}
	if !IsDNSLabel(name) {
		return errdefs.InvalidArgument(field, name,
			"must be a DNS label: lowercase letters, digits and '-', not starting or ending with '-'")
	}
	return nil
}

var sizeUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// ParseSize parses "512M", "8G", "10GiB", "1.5G" or plain bytes. Units are binary: disk tools
// and users of VM tooling mean GiB when they type G. Zero, negatives and overflow are errors.
func ParseSize(field, s string) (int64, error) {
	t := strings.TrimSpace(s)
	whole, frac, unitName, ok := splitSize(t)
	if !ok {
		return 0, errdefs.InvalidArgument(field, s, "not a size; use bytes or a number with K, M, G or T (e.g. 512M, 8G)")
	}
	unit, ok := sizeUnits[strings.ToLower(unitName)]
	if !ok {
		return 0, errdefs.InvalidArgument(field, s, fmt.Sprintf("unknown unit %q; use K, M, G or T", unitName))
	}
	n, err := strconv.ParseFloat(whole+frac, 64)
	if err != nil {
		return 0, errdefs.InvalidArgument(field, s, "not a number")
	}
	v := n * unit
	if v >= math.MaxInt64/2 {
		return 0, errdefs.InvalidArgument(field, s, "too large")
	}
	b := int64(v)
	if b <= 0 {
		return 0, errdefs.InvalidArgument(field, s, "must be greater than zero")
	}
	return b, nil
}

// FormatSize renders bytes the way ParseSize reads them back.
func FormatSize(b int64) string {
	switch {
	case b >= 1<<40 && b%(1<<40) == 0:
		return fmt.Sprintf("%dT", b>>40)
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%dG", b>>30)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%dM", b>>20)
	case b >= 1<<10 && b%(1<<10) == 0:
		return fmt.Sprintf("%dK", b>>10)
	}
	return strconv.FormatInt(b, 10)
}

// Limits on VM resources. The upper bounds catch typos (64 vs 64000) before a VMM does.
const (
	MinVCPU      = 1
	MaxVCPU      = 64
	MinMemoryMiB = 64
	MaxMemoryMiB = 1 << 20 // 1 TiB
	MinDiskBytes = 16 << 20
	MaxDiskBytes = 16 << 40
)

// ValidateVCPU checks a vcpu count.
func ValidateVCPU(n int) error {
	if n < MinVCPU || n > MaxVCPU {
		return errdefs.InvalidArgument("vcpu", n, fmt.Sprintf("must be between %d and %d", MinVCPU, MaxVCPU))
	}
	return nil
}

// MemoryMiB converts a parsed memory size to MiB and checks bounds.
func MemoryMiB(field, s string) (int, error) {
	b, err := ParseSize(field, s)
	if err != nil {
		return 0, err
	}
	if b%(1<<20) != 0 {
		return 0, errdefs.InvalidArgument(field, s, "must be a whole number of MiB")
	}
	mib := b >> 20
	if mib < MinMemoryMiB || mib > MaxMemoryMiB {
		return 0, errdefs.InvalidArgument(field, s, fmt.Sprintf("must be between %dM and %dG", MinMemoryMiB, MaxMemoryMiB>>10))
	}
	return int(mib), nil
}

// DiskBytes parses and bounds a disk size.
func DiskBytes(field, s string) (int64, error) {
	b, err := ParseSize(field, s)
	if err != nil {
		return 0, err
	}
	if b < MinDiskBytes || b > MaxDiskBytes {
		return 0, errdefs.InvalidArgument(field, s, fmt.Sprintf("must be between %s and %s", FormatSize(MinDiskBytes), FormatSize(MaxDiskBytes)))
	}
	return b, nil
}

// reservedGuestPaths are where a workspace must not be mounted: over them the guest would
// lose its system, its agent or its work disk.
var reservedGuestPaths = []string{"/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root",
	"/run", "/sbin", "/sys", "/usr", "/var", "/.banger", "/tmp"}

// ValidateWorkspacePath checks the guest path a workspace is mounted at (field names the
// argument in the error): absolute and clean, at most 255 bytes, no "." or ".." element,
// and not a system directory or one below it.
func ValidateWorkspacePath(field, p string) error {
	if len(p) > 255 || !isWorkspacePathSpelling(p) {
		return errdefs.InvalidArgument(field, p, "must be an absolute guest path of letters, digits and ._+- (at most 255 bytes)")
	}
	for _, el := range strings.Split(p[1:], "/") {
		if el == "." || el == ".." {
			return errdefs.InvalidArgument(field, p, "must not contain . or .. elements")
		}
	}
	for _, r := range reservedGuestPaths {
		if p == r || strings.HasPrefix(p, r+"/") {
			return errdefs.InvalidArgument(field, p, "must not be "+r+" or below it: the guest system lives there")
		}
	}
	return nil
}
