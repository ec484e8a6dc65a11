package model

import (
	"errors"
	"strings"
	"testing"

	"banger/internal/errdefs"
)

func TestParseMount(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Mount
	}{
		{"src:/work/src", Mount{HostDir: "src", GuestPath: "/work/src", ReadOnly: true}},
		{"/h/d:/mnt/d:ro", Mount{HostDir: "/h/d", GuestPath: "/mnt/d", ReadOnly: true}},
		{"/h/d:/mnt/d:rw", Mount{HostDir: "/h/d", GuestPath: "/mnt/d"}},
		{"/h/a:b:/mnt/d:rw", Mount{HostDir: "/h/a:b", GuestPath: "/mnt/d"}},
	} {
		got, err := ParseMount(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseMount(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	if _, err := ParseMount("/h/d:/mnt/d:rx"); err == nil || !strings.Contains(err.Error(), `mode "rx" must be ro or rw`) {
		t.Errorf("a bad mode is not named as the mode: %v", err)
	}
	for _, bad := range []string{"", "dir", ":/x", "dir:", "dir:/", "dir:/proc", "dir:/sys/kernel", "dir:/dev", "dir:/etc",
		"dir:rel", "dir:/a/../b", "dir:/x:rx", "dir:/a b", "dir:/x:ro:rw"} {
		_, err := ParseMount(bad)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "--mount") || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseMount(%q): %v; want an invalid argument naming --mount and the value", bad, err)
		}
	}
}

func TestValidateMounts(t *testing.T) {
	ok := []Mount{{HostDir: "/a", GuestPath: "/mnt/a"}, {HostDir: "/a", GuestPath: "/mnt/b"}}
	if err := ValidateMounts(ok); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]Mount{
		{{HostDir: "rel", GuestPath: "/mnt/a"}},
		{{HostDir: "/a/../b", GuestPath: "/mnt/a"}},
		{{HostDir: "/a", GuestPath: "/mnt"}, {HostDir: "/b", GuestPath: "/mnt/b"}},
		{{HostDir: "/a", GuestPath: "/mnt/a"}, {HostDir: "/b", GuestPath: "/mnt/a"}},
		make([]Mount, MaxMounts+1),
	} {
		if err := ValidateMounts(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateMounts(%+v): %v", bad, err)
		}
	}
}
