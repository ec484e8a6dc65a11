package model_test

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// checkInvalid asserts err is an invalid-argument error naming both field and value, since
// that is what lets a user see which flag or config key to fix.
func checkInvalid(t *testing.T, err error, field, value string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s=%q: got no error", field, value)
	}
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("%s=%q: error %v is not ErrInvalidArgument", field, value, err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, field+":") {
		t.Errorf("%s=%q: error %q does not start with the field name", field, value, msg)
	}
	if !strings.Contains(msg, fmt.Sprintf("%q", value)) {
		t.Errorf("%s=%q: error %q does not quote the bad value", field, value, msg)
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"web", true},
		{"a", true},
		{"0", true},
		{"web-1", true},
		{"9lives", true},
		{"a--b", true},
		{strings.Repeat("a", 63), true},
		{"a" + strings.Repeat("-", 61) + "b", true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"Web", false},
		{"WEB", false},
		{"-web", false},
		{"web-", false},
		{"-", false},
		{"my_vm", false},
		{"web.example", false},
		{"web 1", false},
		{" web", false},
		{"wéb", false},
		{"ｗｅｂ", false},
		{"web\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := model.ValidateName("name", tt.name)
			if tt.ok {
				if err != nil {
					t.Fatalf("ValidateName(%q) = %v, want nil", tt.name, err)
				}
				return
			}
			checkInvalid(t, err, "name", tt.name)
		})
	}
	// The field name is the caller's, so the message points at the right flag.
	checkInvalid(t, model.ValidateName("image", "Bad"), "image", "Bad")
}

func TestRandomNameIsValid(t *testing.T) {
	for range 200 {
		if n := model.RandomName(); model.ValidateName("name", n) != nil {
			t.Fatalf("RandomName produced invalid name %q", n)
		}
	}
}

func TestNewID(t *testing.T) {
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
	seen := map[string]bool{}
	for range 100 {
		id := model.NewID()
		if !hex32.MatchString(id) || seen[id] {
			t.Fatalf("NewID = %q: malformed or repeated", id)
		}
		seen[id] = true
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64 // 0: must fail
	}{
		{"512M", 512 << 20},
		{"512m", 512 << 20},
		{"8G", 8 << 30},
		{"8GB", 8 << 30},
		{"10GiB", 10 << 30},
		{"10gib", 10 << 30},
		{"1.5G", 3 << 29},
		{"0.5K", 512},
		{"1T", 1 << 40},
		{"4096", 4096},
		{"4096B", 4096},
		{"1", 1},
		{" 8G ", 8 << 30},
		{"8 G", 8 << 30},
		{"\t512M\n", 512 << 20},
		{"", 0},
		{" ", 0},
		{"0", 0},
		{"0G", 0},
		{"0.0001", 0},
		{"-1G", 0},
		{"-1", 0},
		{"+1G", 0},
		{"abc", 0},
		{"G", 0},
		{"10X", 0},
		{"10PB", 0},
		{"1.5.5G", 0},
		{".5G", 0},
		{"1e9", 0},
		{"0x10", 0},
		{"99999999999T", 0},
		{"9223372036854775807", 0},
		{"99999999999999999999999", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := model.ParseSize("memory", tt.in)
			if tt.want == 0 {
				checkInvalid(t, err, "memory", tt.in)
				if got != 0 {
					t.Errorf("ParseSize(%q) returned %d alongside an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatSizeRoundTrips(t *testing.T) {
	for _, b := range []int64{1, 1000, 1 << 10, 3 << 19, 512 << 20, 8 << 30, 3 << 29, 1 << 40, 5 << 40} {
		s := model.FormatSize(b)
		got, err := model.ParseSize("size", s)
		if err != nil || got != b {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v", b, s, got, err)
		}
	}
}

func TestMemoryMiB(t *testing.T) {
	tests := []struct {
		in   string
		want int // 0: must fail
	}{
		{"512M", 512},
		{"64M", 64},
		{"8G", 8 << 10},
		{"1.5G", 1536},
		{"10GiB", 10 << 10},
		{"1T", 1 << 20},
		{"536870912", 512},
		{"63M", 0},   // below the minimum
		{"2T", 0},    // above the maximum
		{"1000K", 0}, // not whole MiB
		{"1.1M", 0},
		{"0", 0},
		{"-1G", 0},
		{"abc", 0},
		{"10X", 0},
		{"99999999999T", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := model.MemoryMiB("memory", tt.in)
			if tt.want == 0 {
				checkInvalid(t, err, "memory", tt.in)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("MemoryMiB(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestDiskBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64 // 0: must fail
	}{
		{"16M", 16 << 20},
		{"8G", 8 << 30},
		{"10GiB", 10 << 30},
		{"1.5G", 3 << 29},
		{"16T", 16 << 40},
		{"1073741824", 1 << 30},
		{"15M", 0},
		{"17T", 0},
		{"512", 0},
		{"0", 0},
		{"-1G", 0},
		{"abc", 0},
		{"10X", 0},
		{"99999999999T", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := model.DiskBytes("work_disk_size", tt.in)
			if tt.want == 0 {
				checkInvalid(t, err, "work_disk_size", tt.in)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("DiskBytes(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestValidateVCPU(t *testing.T) {
	for n, ok := range map[int]bool{1: true, 2: true, 64: true, 0: false, -1: false, 65: false} {
		err := model.ValidateVCPU(n)
		if ok != (err == nil) {
			t.Errorf("ValidateVCPU(%d) = %v", n, err)
		}
		if !ok {
			checkInvalid(t, err, "vcpu", fmt.Sprint(n))
		}
	}
}

func TestMACForIP(t *testing.T) {
	mac := regexp.MustCompile(`^02:b4(:[0-9a-f]{2}){4}$`)
	if got := model.MACForIP(netip.MustParseAddr("172.30.0.2")); got != "02:b4:ac:1e:00:02" {
		t.Errorf("MACForIP(172.30.0.2) = %q", got)
	}
	seen := map[string]string{}
	for i := range 1 << 16 {
		ip := netip.AddrFrom4([4]byte{10, 7, byte(i >> 8), byte(i)})
		m := model.MACForIP(ip)
		if !mac.MatchString(m) {
			t.Fatalf("MACForIP(%s) = %q: not a locally administered unicast MAC", ip, m)
		}
		if prev, dup := seen[m]; dup {
			t.Fatalf("MACForIP(%s) = MACForIP(%s) = %s", ip, prev, m)
		}
		seen[m] = ip.String()
	}
}

func TestCIDForIP(t *testing.T) {
	if got := model.CIDForIP(netip.MustParseAddr("172.30.0.2")); got != 30<<16+2+3 {
		t.Errorf("CIDForIP(172.30.0.2) = %d", got)
	}
	// Every address of a /16, including network and broadcast, gets a distinct usable CID.
	seen := make(map[uint32]netip.Addr, 1<<16)
	for i := range 1 << 16 {
		ip := netip.AddrFrom4([4]byte{172, 30, byte(i >> 8), byte(i)})
		cid := model.CIDForIP(ip)
		if cid < 3 {
			t.Fatalf("CIDForIP(%s) = %d: CIDs 0-2 are reserved", ip, cid)
		}
		if prev, dup := seen[cid]; dup {
			t.Fatalf("CIDForIP(%s) = CIDForIP(%s) = %d", ip, prev, cid)
		}
		seen[cid] = ip
	}
	if cid := model.CIDForIP(netip.MustParseAddr("0.0.0.0")); cid < 3 {
		t.Errorf("CIDForIP(0.0.0.0) = %d", cid)
	}
	if cid := model.CIDForIP(netip.MustParseAddr("10.255.255.255")); cid < 3 || cid == ^uint32(0) {
		t.Errorf("CIDForIP(10.255.255.255) = %d", cid)
	}
}

func TestTapForID(t *testing.T) {
	tapRe := regexp.MustCompile(`^bgr[0-9a-f]{1,12}$`)
	seen := map[string]bool{}
	for range 500 {
		id := model.NewID()
		tap := model.TapForID(id)
		if len(tap) > 15 || !tapRe.MatchString(tap) {
			t.Fatalf("TapForID(%q) = %q: must match %s and fit IFNAMSIZ-1 (15)", id, tap, tapRe)
		}
		if !strings.HasPrefix(tap, model.TapPrefix) || !strings.HasPrefix(id, tap[len(model.TapPrefix):]) {
			t.Fatalf("TapForID(%q) = %q: not the prefix plus the id's start", id, tap)
		}
		if seen[tap] {
			t.Fatalf("TapForID collision on %q", tap)
		}
		seen[tap] = true
	}
	for id, want := range map[string]string{
		"ABCDEF0123456789": "bgrabcdef012345",
		"abc":              "bgrabc",
		"0123456789ab":     "bgr0123456789ab",
	} {
		if got := model.TapForID(id); got != want {
			t.Errorf("TapForID(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestFileByRole(t *testing.T) {
	im := model.Image{Files: []model.File{{Role: model.RoleKernel, Name: "vmlinux"}, {Role: model.RoleRootfs, Name: "rootfs.ext4"}}}
	if f, ok := im.FileByRole(model.RoleRootfs); !ok || f.Name != "rootfs.ext4" {
		t.Errorf("FileByRole(rootfs) = %+v, %v", f, ok)
	}
	if _, ok := im.FileByRole(model.RoleInitrd); ok {
		t.Errorf("FileByRole(initrd) found a file the image does not have")
	}
}

func TestCapLastError(t *testing.T) {
	if got := model.CapLastError("short"); got != "short" {
		t.Errorf("short message changed: %q", got)
	}
	long := strings.Repeat("é", model.MaxLastError) // 2 bytes each
	got := model.CapLastError(long)
	if len(got) > model.MaxLastError || !utf8.ValidString(got) || !strings.HasSuffix(got, "(truncated)") {
		t.Errorf("capped to %d bytes, valid UTF-8 %v, suffix %q", len(got), utf8.ValidString(got), got[len(got)-20:])
	}
}
