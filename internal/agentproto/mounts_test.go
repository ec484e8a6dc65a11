package agentproto

import (
	"errors"
	"slices"
	"testing"

	"banger/internal/errdefs"
)

func TestMountsParamRoundTrip(t *testing.T) {
	ms := []Mount{{Tag: "bgr0", Path: "/mnt/ro", ReadOnly: true}, {Tag: "bgr1", Path: "/srv/rw"}}
	p, err := ParseCmdline("banger.name=a banger.root=/dev/vda banger.system=/dev/vdb " + MountsParam(ms))
	if err != nil || !slices.Equal(p.Mounts, ms) {
		t.Fatalf("ParseCmdline: %+v, %v", p.Mounts, err)
	}
	again, err := ParseCmdline(p.Args())
	if err != nil || !slices.Equal(again.Mounts, ms) {
		t.Fatalf("Args round trip: %+v, %v", again.Mounts, err)
	}
	for _, bad := range []string{"bgr0:/mnt", "x:/mnt:ro", "bgr0:/proc:ro", "bgr0:rel:rw", "bgr0:/mnt:rx", "bgr0:/a:ro,"} {
		if _, err := ParseCmdline("banger.name=a banger.root=/dev/vda banger.system=/dev/vdb banger.mounts=" + bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("banger.mounts=%s: %v", bad, err)
		}
	}
}
