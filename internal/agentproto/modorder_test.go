package agentproto

import (
	"slices"
	"testing"
)

func TestModuleDepends(t *testing.T) {
	for in, want := range map[string][]string{
		"x\x00depends=virtio,virtio-ring\x00name=y": {"virtio", "virtio_ring"},
		"x\x00depends=\x00name=y":                   nil,
		"no modinfo at all":                         nil,
		"x\x00depends=last":                         {"last"},
	} {
		if got := ModuleDepends([]byte(in)); !slices.Equal(got, want) {
			t.Errorf("ModuleDepends(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestModuleOrderLineRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		line   string
		file   string
		deps   []string
		listed bool
	}{
		{ModuleOrderLine("virtio_blk.ko", []string{"virtio", "virtio_ring"}), "virtio_blk.ko", []string{"virtio", "virtio_ring"}, true},
		{ModuleOrderLine("virtio_ring.ko", nil), "virtio_ring.ko", nil, true},
		// An initrd from before the deps= field: the file only.
		{"overlay.ko", "overlay.ko", nil, false},
		{"  net_failover.ko deps=failover  ", "net_failover.ko", []string{"failover"}, true},
		{"x.ko deps=a-b,,c", "x.ko", []string{"a_b", "c"}, true},
		{"x.ko future=1", "x.ko", nil, false},
		{"", "", nil, false},
		{"# comment", "", nil, false},
	} {
		file, deps, listed := ParseModuleOrderLine(tc.line)
		if file != tc.file || !slices.Equal(deps, tc.deps) || listed != tc.listed {
			t.Errorf("ParseModuleOrderLine(%q) = %q %v %v, want %q %v %v", tc.line, file, deps, listed, tc.file, tc.deps, tc.listed)
		}
	}
}
