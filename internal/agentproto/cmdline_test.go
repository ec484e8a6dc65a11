package agentproto

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"banger/internal/errdefs"
)

func TestParseCmdline(t *testing.T) {
	full := BootParams{
		Name:       "web-1",
		Addr:       netip.MustParsePrefix("172.30.0.5/24"),
		Gateway:    netip.MustParseAddr("172.30.0.1"),
		DNS:        []netip.Addr{netip.MustParseAddr("172.30.0.1")},
		Root:       "/dev/vda",
		System:     "/dev/vdb",
		Work:       "/dev/vdc",
		ModulesDir: "/lib/modules/banger",
	}
	cases := []struct {
		name    string
		cmdline string
		want    BootParams
		errKey  string // the parameter a rejection must name
	}{
		{
			name:    "full, among kernel arguments",
			cmdline: "console=ttyS0 reboot=k panic=1 banger.name=web-1 banger.ip=172.30.0.5/24 banger.gw=172.30.0.1 banger.dns=172.30.0.1 banger.root=/dev/vda banger.system=/dev/vdb banger.work=/dev/vdc banger.mods=/lib/modules/banger tsc_early_khz=2596098\n",
			want:    full,
		},
		{
			name:    "no network, no work disk, default modules dir",
			cmdline: "banger.name=a banger.root=/dev/vda banger.system=/dev/vdb",
			want:    BootParams{Name: "a", Root: "/dev/vda", System: "/dev/vdb", ModulesDir: DefaultModulesDir},
		},
		{
			name:    "several resolvers, init none, quoted value",
			cmdline: `banger.name=db banger.ip=10.0.0.2/8 banger.dns=1.1.1.1,9.9.9.9 banger.root="/dev/vda" banger.system=/dev/vdb banger.init=none`,
			want: BootParams{Name: "db", Addr: netip.MustParsePrefix("10.0.0.2/8"), Root: "/dev/vda", System: "/dev/vdb",
				DNS: []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("9.9.9.9")}, ModulesDir: DefaultModulesDir, Init: InitNone},
		},
		{name: "missing name", cmdline: "banger.root=/dev/vda banger.system=/dev/vdb", errKey: ParamName},
		{name: "bad name", cmdline: "banger.name=Web_1 banger.root=/dev/vda banger.system=/dev/vdb", errKey: ParamName},
		{name: "missing root", cmdline: "banger.name=a banger.system=/dev/vdb", errKey: ParamRoot},
		{name: "root not a device", cmdline: "banger.name=a banger.root=vda banger.system=/dev/vdb", errKey: ParamRoot},
		{name: "missing system", cmdline: "banger.name=a banger.root=/dev/vda", errKey: ParamSystem},
		{name: "ip without prefix", cmdline: "banger.name=a banger.root=/dev/vda banger.system=/dev/vdb banger.ip=10.0.0.2", errKey: ParamIP},
		{name: "gateway without ip", cmdline: "banger.name=a banger.root=/dev/vda banger.system=/dev/vdb banger.gw=10.0.0.1", errKey: ParamGateway},
		{name: "gateway outside subnet", cmdline: "banger.name=a banger.root=/dev/vda banger.system=/dev/vdb banger.ip=10.0.0.2/24 banger.gw=10.0.1.1", errKey: ParamGateway},
		{name: "bad dns", cmdline: "banger.name=a banger.root=/dev/vda banger.system=/dev/vdb banger.dns=one.one", errKey: ParamDNS},
		{name: "relative init", cmdline: "banger.name=a banger.root=/dev/vda banger.system=/dev/vdb banger.init=sbin/init", errKey: ParamInit},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseCmdline(c.cmdline)
			if c.errKey != "" {
				if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.errKey) {
					t.Fatalf("err %v, want an invalid-argument error naming %s", err, c.errKey)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got  %+v\nwant %+v", got, c.want)
			}
			// Args is the inverse the daemon uses to write the command line.
			again, err := ParseCmdline(got.Args())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("round trip through %q: %+v, %v", got.Args(), again, err)
			}
		})
	}
}

func TestSplitCmdline(t *testing.T) {
	got := SplitCmdline(` a  b="c d" "e f"=g  h` + "\n")
	want := []string{"a", "b=c d", "e f=g", "h"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SplitCmdline = %q, want %q", got, want)
	}
}
