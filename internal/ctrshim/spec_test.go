package ctrshim

import (
	"errors"
	"os"
	"path/filepath"
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
	p, err := planFor("web", s)
	if err != nil {
		t.Fatal(err)
	}
	root := containerDir("web", false) + "/rootfs"
	if p.vm.VCPU != 2 || p.vm.Memory != "768M" {
		t.Fatalf("1.5 CPUs and 768 MiB should give 2 vCPUs and 768M, got %d and %q", p.vm.VCPU, p.vm.Memory)
	}
	if p.proc.Root != root || p.proc.UID != 1000 || p.proc.GID != 100 || p.proc.Argv[0] != "sh" {
		t.Fatalf("process not mapped: %+v", p.proc)
	}
	script := p.setupScript()
	for _, want := range []string{
		"mount -t proc -o nosuid,noexec,nodev proc " + root + "/proc\n",
		"mount -t devtmpfs -o nosuid devtmpfs " + root + "/dev\n",
		"mount -t devpts -o bind /dev/pts " + root + "/dev/pts\n",
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
		{"bind mount of a directory", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: t.TempDir(), Options: []string{"rbind"}})
		}, "mounts"},
		{"bind mount of nothing", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/nonexistent/x", Options: []string{"rbind"}})
		}, "/nonexistent/x"},
		{"joined namespace outside a pod", func(s *specs.Spec) {
			s.Annotations = map[string]string{"io.kubernetes.cri.sandbox-id": "x"} // no container type: not CRI's
			s.Linux.Namespaces[1].Path = "/proc/1/ns/net"
		}, "linux.namespaces"},
		{"host network in a pod", func(s *specs.Spec) {
			s.Annotations = map[string]string{annoContainerType: typeSandbox}
			s.Linux.Namespaces = s.Linux.Namespaces[:1]
		}, "network"},
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
		{"container id that is no file name", func(s *specs.Spec) {}, "id"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := baseSpec()
			c.edit(s)
			id := "c1"
			if c.name == "container id that is no file name" {
				id = "../x"
			}
			_, err := planFor(id, s)
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

// CRI's pod specs name namespaces by path (the sandbox its CNI netns, the others the
// sandbox's): in a pod they mean the VM and are accepted. Its bind mounts become a tmpfs
// (/dev/shm) or a copied file bind-mounted inside the container's root.
func TestPlanMapsACRIPodContainer(t *testing.T) {
	s := baseSpec()
	s.Annotations = map[string]string{annoContainerType: typeContainer, annoSandboxID: "sb1"}
	s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace, Path: "/proc/42/ns/net"}, {Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"}}
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644)
	s.Mounts = append(s.Mounts,
		specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: hosts, Options: []string{"rbind", "rprivate", "ro"}},
		specs.Mount{Destination: "/dev/shm", Type: "bind", Source: t.TempDir(), Options: []string{"rbind", "nosuid", "nodev", "noexec"}},
	)
	if podSandbox(s) != "sb1" {
		t.Fatalf("podSandbox = %q, want sb1", podSandbox(s))
	}
	p, err := planFor("app1", s)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.binds) != 1 || p.binds[0] != hosts {
		t.Fatalf("binds = %v, want the hosts file", p.binds)
	}
	root := containerDir("app1", true) + "/rootfs"
	script := p.setupScript()
	for _, want := range []string{
		"mount --bind " + containerDir("app1", true) + "/binds/0 " + root + "/etc/hosts\n",
		"mount -o remount,bind,ro " + root + "/etc/hosts\n",
		"mount -t tmpfs -o nosuid,nodev,noexec shm " + root + "/dev/shm\n",
		"inroot " + root + "/etc/hosts\n",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("setup script lacks %q:\n%s", want, script)
		}
	}
	s.Annotations[annoContainerType] = typeSandbox
	if podSandbox(s) != "" {
		t.Fatal("a sandbox joins no other container's VM")
	}
	big := filepath.Join(t.TempDir(), "big")
	os.WriteFile(big, make([]byte, maxBindFile+1), 0o644)
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/big", Type: "bind", Source: big, Options: []string{"rbind"}})
	if _, err := planFor("sb1", s); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), big) {
		t.Fatalf("a bind-mounted file over the cap: %v", err)
	}
}

// A pod's containers are served by the sandbox's shim: one socket address for the pod.
func TestShimGroupIsThePodsSandbox(t *testing.T) {
	sb := &specs.Spec{Annotations: map[string]string{annoContainerType: typeSandbox, annoSandboxID: "pod1"}}
	app := &specs.Spec{Annotations: map[string]string{annoContainerType: typeContainer, annoSandboxID: "pod1"}}
	if shimGroup("pod1", sb) != "pod1" || shimGroup("app1", app) != "pod1" {
		t.Fatalf("groups: sandbox %q, app %q; want pod1 for both", shimGroup("pod1", sb), shimGroup("app1", app))
	}
	if socketAddress("/run/c.sock", "k8s.io", shimGroup("app1", app)) != socketAddress("/run/c.sock", "k8s.io", shimGroup("pod1", sb)) {
		t.Fatal("a pod's containers get different shim sockets")
	}
	if shimGroup("solo", baseSpec()) != "solo" || shimGroup("solo", nil) != "solo" {
		t.Fatal("a container outside a pod has a shim of its own")
	}
	bad := &specs.Spec{Annotations: map[string]string{annoSandboxID: "../x"}}
	if shimGroup("solo", bad) != "solo" {
		t.Fatal("a sandbox id that is no container id names the shim")
	}
}
