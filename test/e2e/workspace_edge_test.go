package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vmIDs lists the ids of all VMs the daemon knows.
func (x *env) vmIDs(t *testing.T) []string {
	t.Helper()
	var vms []vmRecord
	if err := json.Unmarshal([]byte(x.mustCLI(t, "vm", "ls", "--json")), &vms); err != nil {
		t.Fatalf("decoding vm ls: %v", err)
	}
	var ids []string
	for _, v := range vms {
		ids = append(ids, v.ID)
	}
	return ids
}

// leftovers lists what a workspace preparation may leave: staged uploads in the daemon's
// state and packing directories in the CLI's temp dir.
func (x *env) workspaceLeftovers(t *testing.T, tmp string) []string {
	t.Helper()
	var left []string
	staged, _ := filepath.Glob(filepath.Join(x.stateDir, "workspaces", "*"))
	left = append(left, staged...)
	packing, _ := filepath.Glob(filepath.Join(tmp, "banger-workspace-*"))
	return append(left, packing...)
}

// --out copies artifacts back through the hardened extractor: relative guest paths are
// under the workspace, an absolute one anywhere, each into its host directory.
func TestWorkspaceOutCopiesArtifacts(t *testing.T) {
	x := need(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"src/a.c": "a\n"})
	dst := t.TempDir()
	out, errOut, code := x.cli(nil, "vm", "run", "--rm", "-q", "-W", dir,
		"--out", "build:"+filepath.Join(dst, "artifacts"), "--out", "/etc/hostname:"+dst, "--",
		"sh", "-c", "mkdir -p build/sub && echo binary > build/app && echo deep > build/sub/x && chmod +x build/app")
	if code != 0 {
		t.Fatalf("vm run --out: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "artifacts", "build", "app")); err != nil || string(b) != "binary\n" {
		t.Fatalf("build/app: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "artifacts", "build", "app")); err != nil || fi.Mode()&0o100 == 0 {
		t.Fatalf("build/app lost its executable bit: %v %v", fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "artifacts", "build", "sub", "x")); err != nil || string(b) != "deep\n" {
		t.Fatalf("build/sub/x: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "hostname")); err != nil || len(b) == 0 {
		t.Fatalf("/etc/hostname: %q %v", b, err)
	}
	// A missing artifact fails the run (after the command) and says which.
	_, errOut, code = x.cli(nil, "vm", "run", "--rm", "-q", "-W", dir, "--out", "nope:"+dst, "--", "true")
	if code == 0 || !strings.Contains(errOut, "/work/nope") {
		t.Fatalf("missing --out artifact: exit %d, stderr %s", code, errOut)
	}
}

// vm create --workspace: the copy lives on the VM's own disk and survives stop/start.
func TestWorkspaceCreatePersistsAcrossRestart(t *testing.T) {
	x := need(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"hello.txt": "hi\n"})
	x.mustCLI(t, "vm", "create", "-q", "--name", "e2e-wsvm", "--workspace="+dir+":/src")
	t.Cleanup(func() { x.cli(nil, "vm", "rm", "--force", "e2e-wsvm") })
	var rec struct {
		Workspace string `json:"workspace"`
	}
	if err := json.Unmarshal([]byte(x.mustCLI(t, "vm", "show", "--json", "e2e-wsvm")), &rec); err != nil || rec.Workspace != "/src" {
		t.Fatalf("vm show: workspace %q (%v)", rec.Workspace, err)
	}
	x.mustCLI(t, "vm", "exec", "e2e-wsvm", "--", "sh", "-c", "cat /src/hello.txt && echo kept > /src/new.txt && sync")
	x.mustCLI(t, "vm", "stop", "e2e-wsvm")
	x.mustCLI(t, "vm", "start", "e2e-wsvm")
	out := x.mustCLI(t, "vm", "exec", "e2e-wsvm", "--", "sh", "-c", "cat /src/hello.txt /src/new.txt")
	if out != "hi\nkept\n" {
		t.Fatalf("after restart: %q", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "new.txt")); !os.IsNotExist(err) {
		t.Fatalf("the guest wrote the host tree: %v", err)
	}
}

// A symlink to /etc and one to a file outside DIR arrive as symlinks (pointing into the
// guest's own file system), nothing outside DIR is read, a FIFO is skipped with a note
// and does not block the walk, and the run works.
func TestWorkspaceSymlinksAndFIFO(t *testing.T) {
	x := need(t)
	parent := t.TempDir()
	dir := filepath.Join(parent, "ws")
	writeTree(t, dir, map[string]string{"a.txt": "a\n"})
	if err := os.WriteFile(filepath.Join(parent, "host-secret"), []byte("host only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"etc": "/etc", "secret": "../host-secret"} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `readlink etc; readlink secret; test -L etc && echo etc-is-link
test -e pipe || echo no-pipe
cat secret 2>/dev/null || echo secret-unreadable
test -f etc/hostname && echo guest-etc`
	out, errOut, code := x.cli(nil, "vm", "run", "--rm", "-W", dir, "--", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	want := "/etc\n../host-secret\netc-is-link\nno-pipe\nsecret-unreadable\nguest-etc\n"
	if out != want {
		t.Fatalf("stdout %q, want %q", out, want)
	}
	if !strings.Contains(errOut, "skipped pipe") {
		t.Errorf("no note about the skipped FIFO in stderr: %s", errOut)
	}
}

// Bad workspaces fail before any VM exists, naming the flag and the value; Ctrl-C during
// preparation leaves no VM, no staged upload and no packing directory.
func TestWorkspaceRefusalsLeaveNothing(t *testing.T) {
	x := need(t)
	tmp := t.TempDir()
	before := x.vmIDs(t)
	big := filepath.Join(t.TempDir(), "big")
	writeTree(t, big, map[string]string{"small.txt": "x\n"})
	// The e2e daemon's workspace.max_size is 256M; a sparse file claims more.
	f, err := os.Create(filepath.Join(big, "huge.bin"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(300 << 20)
	f.Close()
	missing := filepath.Join(t.TempDir(), "does-not-exist")
	for _, c := range []struct{ dir, want string }{
		{big, "workspace.max_size"},
		{missing, "does not exist"},
	} {
		cmd := exec.Command(filepath.Join(x.bin, "banger"), "--socket", x.socket, "vm", "run", "--rm", "-W", c.dir, "--", "true")
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if err == nil {
			t.Fatalf("-W %s: succeeded", c.dir)
		}
		if msg := stderr.String(); !strings.Contains(msg, "--workspace") || !strings.Contains(msg, c.dir) || !strings.Contains(msg, c.want) {
			t.Errorf("-W %s: error does not name the flag, the value and %q: %s", c.dir, c.want, msg)
		}
		if strings.Contains(stderr.String(), "persisted") {
			t.Errorf("-W %s: a VM was reserved: %s", c.dir, stderr.String())
		}
	}
	if got := x.vmIDs(t); len(got) != len(before) {
		t.Fatalf("VMs before %v, after %v", before, got)
	}
	if left := x.workspaceLeftovers(t, tmp); len(left) > 0 {
		t.Fatalf("refusals left %v", left)
	}

	// Ctrl-C at several moments of the preparation (and maybe the create just after it).
	fat := filepath.Join(t.TempDir(), "fat")
	files := map[string]string{}
	for i := 0; i < 2000; i++ {
		files[filepath.Join("d", string(rune('a'+i%26)), "f"+strings.Repeat("x", i%7)+string(rune('0'+i%10))+"-"+itoa(i))] = strings.Repeat("data ", 2000)
	}
	writeTree(t, fat, files)
	for _, delay := range []time.Duration{50 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond} {
		cmd := exec.Command(filepath.Join(x.bin, "banger"), "--socket", x.socket, "vm", "run", "--rm", "-W", fat, "--", "true")
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		t.Logf("interrupted after %s: %s", delay, tail(stderr.String(), 3))
		// --rm: a VM that the create made before the interrupt is removed by the CLI or
		// the daemon; wait for that to settle.
		if err := waitFor(func() bool { return len(x.vmIDs(t)) == len(before) }, 60*time.Second); err != nil {
			t.Fatalf("interrupt after %s left a VM: %v", delay, x.vmIDs(t))
		}
		if err := waitFor(func() bool { return len(x.workspaceLeftovers(t, tmp)) == 0 }, 10*time.Second); err != nil {
			t.Fatalf("interrupt after %s left %v", delay, x.workspaceLeftovers(t, tmp))
		}
	}
}

func itoa(i int) string {
	return strings.TrimSpace(strings.Replace(string(rune('0'+i/1000%10))+string(rune('0'+i/100%10))+string(rune('0'+i/10%10))+string(rune('0'+i%10)), "", "", 0))
}
