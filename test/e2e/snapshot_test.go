package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

type snapRecord struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	VMName    string `json:"vm_name"`
	Dir       string `json:"dir"`
	SizeBytes int64  `json:"size_bytes"`
}

type guestIdentity struct{ host, mid, mac, addr string }

func (x *env) identity(t *testing.T, vm string) guestIdentity {
	t.Helper()
	out := x.mustCLI(t, "vm", "exec", vm, "--", "sh", "-c",
		"hostname; cat /etc/machine-id 2>/dev/null || echo none; cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{print $4}'")
	f := strings.Fields(out)
	if len(f) != 4 {
		t.Fatalf("identity of %s: %q", vm, out)
	}
	return guestIdentity{f[0], f[1], f[2], f[3]}
}

// A snapshot holds the disks as they were when it was taken; a VM restored from it
// continues from there under its own identity, and forks of one snapshot are distinct
// machines that reach each other by name and outlive their source.
func TestSnapshotRestoreAndFork(t *testing.T) {
	x := need(t)
	x.createVM(t, "e2e-src")
	x.mustCLI(t, "vm", "exec", "e2e-src", "--", "sh", "-c", "echo before > /root/before.txt; echo sys-before > /etc/before")
	var sn snapRecord
	if err := json.Unmarshal([]byte(x.mustCLI(t, "snapshot", "create", "e2e-src", "--name", "e2e-snap", "--json")), &sn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.cli(nil, "snapshot", "rm", "--force", "e2e-snap") })
	if sn.Name != "e2e-snap" || sn.VMName != "e2e-src" || sn.SizeBytes <= 0 {
		t.Fatalf("snapshot record %+v", sn)
	}
	// The source runs on after the snapshot.
	if st := x.show(t, "e2e-src"); st.State != "running" {
		t.Fatalf("source after snapshot create: %s", st.State)
	}
	x.mustCLI(t, "vm", "exec", "e2e-src", "--", "sh", "-c", "echo after > /root/after.txt")
	if ls := x.mustCLI(t, "snapshot", "ls", "--json"); !strings.Contains(ls, `"e2e-snap"`) {
		t.Fatalf("snapshot ls: %s", ls)
	}
	x.mustCLI(t, "snapshot", "show", "e2e-snap")

	// Restored: the file written before is there, the one written after is not.
	x.mustCLI(t, "vm", "create", "--from-snapshot", "e2e-snap", "--name", "e2e-r1")
	t.Cleanup(func() { x.cli(nil, "vm", "rm", "--force", "e2e-r1") })
	if got := x.mustCLI(t, "vm", "exec", "e2e-r1", "--", "cat", "/root/before.txt", "/etc/before"); got != "before\nsys-before\n" {
		t.Fatalf("restored vm: before files %q", got)
	}
	if _, _, code := x.cli(nil, "vm", "exec", "e2e-r1", "--", "test", "-e", "/root/after.txt"); code == 0 {
		t.Fatal("a file written after the snapshot is in the restored vm")
	}
	// rm is refused while a vm came from the snapshot.
	if _, errOut, code := x.cli(nil, "snapshot", "rm", "e2e-snap"); code == 0 || !strings.Contains(errOut, "e2e-r1") {
		t.Fatalf("snapshot rm with a dependent vm: exit %d %s", code, errOut)
	}

	// Two forks of one snapshot of the source.
	out, errOut, code := x.cli(nil, "vm", "fork", "e2e-src", "--count", "2", "--name-prefix", "e2e-fk")
	t.Cleanup(func() { x.cli(nil, "vm", "rm", "--force", "e2e-fk-1", "e2e-fk-2") })
	if code != 0 {
		t.Fatalf("vm fork: exit %d\n%s\n%s", code, out, errOut)
	}
	// The forks map the snapshot's RAM copy-on-write (the shared form) rather than each
	// loading its own copy.
	if !strings.Contains(errOut, "snapshot_shared") {
		t.Errorf("vm fork did not prepare the shared form:\n%s", errOut)
	}
	if !strings.Contains(out, "e2e-fk-1 running") || !strings.Contains(out, "e2e-fk-2 running") {
		t.Fatalf("vm fork output %q", out)
	}
	src := x.identity(t, "e2e-src")
	ids := map[string]guestIdentity{}
	for _, name := range []string{"e2e-r1", "e2e-fk-1", "e2e-fk-2"} {
		id := x.identity(t, name)
		rec := x.show(t, name)
		if id.host != name || id.addr != rec.GuestIP+"/24" || id.mac != x.mac(t, name) {
			t.Errorf("%s: guest says %+v, record %s %s", name, id, rec.GuestIP, x.mac(t, name))
		}
		if id.mid == "none" || id.mid == src.mid || id.mac == src.mac || id.addr == src.addr {
			t.Errorf("%s shares an identity with its source: %+v vs %+v", name, id, src)
		}
		for other, o := range ids {
			if o.mid == id.mid || o.mac == id.mac || o.addr == id.addr || o.host == id.host {
				t.Errorf("%s and %s share an identity: %+v %+v", name, other, id, o)
			}
		}
		ids[name] = id
	}
	// The forks have the source's current files (taken now, after after.txt).
	if got := x.mustCLI(t, "vm", "exec", "e2e-fk-1", "--", "cat", "/root/after.txt"); got != "after\n" {
		t.Fatalf("fork lacks the source's current files: %q", got)
	}
	// They reach each other by DNS name over the bridge.
	x.mustCLI(t, "vm", "exec", "e2e-fk-2", "--", "sh", "-c",
		"mkdir -p /root/www && echo hello-from-fk2 > /root/www/index.html && busybox httpd -p 8000 -h /root/www")
	got := x.mustCLI(t, "vm", "exec", "e2e-fk-1", "--", "sh", "-c",
		"ip=$(busybox nslookup e2e-fk-2."+dnsDomain+" | awk '/^Address/ && !/#/ {print $2}' | tail -n1); echo $ip; timeout 10 wget -q -O - http://$ip:8000/")
	if !strings.Contains(got, ids["e2e-fk-2"].addr[:strings.IndexByte(ids["e2e-fk-2"].addr, '/')]) || !strings.Contains(got, "hello-from-fk2") {
		t.Fatalf("fork 1 -> fork 2 by name: %q", got)
	}
	// Deleting the source does not break its forks.
	x.mustCLI(t, "vm", "rm", "--force", "e2e-src")
	for _, name := range []string{"e2e-fk-1", "e2e-fk-2", "e2e-r1"} {
		if got := x.mustCLI(t, "vm", "exec", name, "--", "echo", "alive"); got != "alive\n" {
			t.Fatalf("%s after the source's delete: %q", name, got)
		}
	}
	// A restored vm stopped and started boots cold from its own disks.
	x.mustCLI(t, "vm", "stop", "e2e-r1")
	x.mustCLI(t, "vm", "start", "e2e-r1")
	if got := x.mustCLI(t, "vm", "exec", "e2e-r1", "--", "cat", "/root/before.txt"); got != "before\n" {
		t.Fatalf("restored vm after a restart: %q", got)
	}
	x.mustCLI(t, "snapshot", "rm", "--force", "e2e-snap")
	if ls := x.mustCLI(t, "snapshot", "ls", "--json"); strings.Contains(ls, "e2e-snap") {
		t.Fatalf("snapshot still listed after rm: %s", ls)
	}
}

func (x *env) mac(t *testing.T, name string) string {
	t.Helper()
	var rec struct {
		MAC string `json:"mac"`
	}
	if err := json.Unmarshal([]byte(x.mustCLI(t, "vm", "show", "--json", name)), &rec); err != nil {
		t.Fatal(err)
	}
	return rec.MAC
}
