package ctrshim

import (
	"errors"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"banger/internal/errdefs"
	"banger/internal/model"
)

func baseSpec() *specs.Spec {
	return &specs.Spec{
		Process:  &specs.Process{Args: []string{"sh", "-c", "true"}, Env: []string{"PATH=/bin"}, Cwd: "/"},
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "web",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro"}},
		},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.MountNamespace}}},
	}
}

func TestPlanMapsProcessResourcesAndMounts(t *testing.T) {
	s := baseSpec()
	quota, period, mem := int64(150000), uint64(100000), int64(768<<20)
	s.Linux.Resources = &specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		Memory: &specs.LinuxMemory{Limit: &mem},
	}
	s.Process.User = specs.User{UID: 1000, GID: 100}
	p, err := planFor(s)
	if err != nil {
		t.Fatal(err)
	}
	if p.vm.VCPU != 2 || p.vm.Memory != "768M" {
		t.Fatalf("1.5 CPUs and 768 MiB should give 2 vCPUs and 768M, got %d and %q", p.vm.VCPU, p.vm.Memory)
	}
	if p.proc.Root != GuestRoot || p.proc.UID != 1000 || p.proc.GID != 100 || p.proc.Argv[0] != "sh" {
		t.Fatalf("process not mapped: %+v", p.proc)
	}
	script := p.setupScript()
	for _, want := range []string{
		"mount -t proc -o nosuid,noexec,nodev proc " + GuestRoot + "/proc\n",
		"mount -t devtmpfs -o nosuid devtmpfs " + GuestRoot + "/dev\n",
		"mount -t devpts -o bind /dev/pts " + GuestRoot + "/dev/pts\n",
		"hostname web\n",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("setup script lacks %q:\n%s", want, script)
		}
	}
	if strings.Contains(script, "cgroup") || strings.Contains(script, "strictatime") {
		t.Errorf("setup script keeps what a VM does not need:\n%s", script)
	}
}

func TestPlanRefusesWhatAVMCannotDo(t *testing.T) {
	for _, c := range []struct {
		name  string
		edit  func(*specs.Spec)
		field string
	}{
		{"host pid namespace", func(s *specs.Spec) { s.Linux.Namespaces = s.Linux.Namespaces[1:] }, "linux.namespaces"},
		{"joined namespace", func(s *specs.Spec) { s.Linux.Namespaces[1].Path = "/proc/1/ns/net" }, "linux.namespaces"},
		{"bind mount", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/srv", Options: []string{"rbind"}})
		}, "mounts"},
		{"odd mount target", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/x;reboot", Type: "tmpfs", Source: "tmpfs"})
		}, "mounts.destination"},
		{"nfs", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/n", Type: "nfs", Source: "h:/e"})
		}, "mounts.type"},
		{"user name", func(s *specs.Spec) { s.Process.User.Username = "nobody" }, "process.user.username"},
		{"no process", func(s *specs.Spec) { s.Process.Args = nil }, "process.args"},
		{"bad hostname", func(s *specs.Spec) { s.Hostname = "a b" }, "hostname"},
		{"not linux", func(s *specs.Spec) { s.Linux = nil }, "linux"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := baseSpec()
			c.edit(s)
			_, err := planFor(s)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("want an invalid argument naming %s, got %v", c.field, err)
			}
		})
	}
}

func TestVMNameIsAValidStableLabel(t *testing.T) {
	a, b := VMName("default", "Web_Server.1"), VMName("k8s.io", "Web_Server.1")
	if a == b {
		t.Fatalf("names of two namespaces collide: %s", a)
	}
	if a != VMName("default", "Web_Server.1") {
		t.Fatal("VMName is not deterministic")
	}
	for _, n := range []string{a, b, VMName("default", strings.Repeat("x", 200)), VMName("default", "___")} {
		if err := model.ValidateName("name", n); err != nil {
			t.Errorf("VMName gave an invalid VM name %q: %v", n, err)
		}
	}
	if !strings.HasPrefix(a, "ctr-web-server-1-") {
		t.Errorf("name should carry the container id readably: %s", a)
	}
}

func TestStdioPathRefusesBinaryLoggers(t *testing.T) {
	if _, err := stdioPath("stdout", "binary:///usr/bin/logger?x=1"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("binary:// accepted: %v", err)
	}
	if p, err := stdioPath("stdout", "file:///var/log/c.log"); err != nil || p != "/var/log/c.log" {
		t.Fatalf("file:// not accepted: %q %v", p, err)
	}
}
