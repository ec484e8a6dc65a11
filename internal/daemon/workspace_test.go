package daemon

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/errdefs"
	"banger/internal/rpc"
	"banger/internal/workspace"
)

// upload opens workspace.upload and sends a small image; the stream stays open.
func uploadImage(t *testing.T, td *testDaemon, size int64) (*rpc.ClientStream, api.WorkspaceUploadResult) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "img")
	f, _ := os.Create(img)
	f.Truncate(size)
	f.WriteAt([]byte("data"), 4096)
	f.Close()
	c, err := rpc.Dial(context.Background(), td.cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	var res api.WorkspaceUploadResult
	st, err := c.Stream(context.Background(), api.MethodWorkspaceUpload, nil, &res)
	if err != nil {
		t.Fatal(err)
	}
	if err := workspace.SendImage(context.Background(), st, img); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(st).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, `"ok":true`) {
		t.Fatalf("upload refused: %s", line)
	}
	return st, res
}

func staged(td *testDaemon) []string {
	m, _ := filepath.Glob(filepath.Join(td.cfg.StateDir, "workspaces", "*"))
	return m
}

// An upload lives only while its stream is open; a create claims it into the VM's
// directory and records the mount point; a token no stream holds is refused and the
// failed create leaves no VM.
func TestWorkspaceUploadIsClaimedOrRemoved(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.31.9.1/24", func(c *config.Config) { c.Workspace.MaxSize = "8M" })
	td.addImage(t, "img")

	st, res := uploadImage(t, td, 1<<20)
	if res.MaxBytes != 8<<20 || len(staged(td)) != 1 {
		t.Fatalf("max_bytes %d, staged %v", res.MaxBytes, staged(td))
	}
	st.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(staged(td)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s := staged(td); len(s) > 0 {
		t.Fatalf("an unclaimed upload outlived its stream: %v", s)
	}
	if _, err := td.create(api.VMCreateParams{Name: "late", Workspace: &api.WorkspaceParams{Token: res.Token}}); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "workspace.token") {
		t.Fatalf("create with a released token: %v", err)
	}
	var list api.VMListResult
	rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMList, nil, &list)
	if len(list.VMs) != 0 {
		t.Fatalf("a failed create left %d VMs", len(list.VMs))
	}

	st, res = uploadImage(t, td, 1<<20)
	defer st.Close()
	vm, err := td.create(api.VMCreateParams{Name: "ws", Workspace: &api.WorkspaceParams{Token: res.Token, Path: "/src"}})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Workspace != "/src" {
		t.Fatalf("workspace %q", vm.Workspace)
	}
	if fi, err := os.Stat(filepath.Join(vm.Dir, workspaceDiskName)); err != nil || fi.Size() != 1<<20 {
		t.Fatalf("workspace disk: %v %v", fi, err)
	}
	if s := staged(td); len(s) != 0 {
		t.Fatalf("claimed upload still staged: %v", s)
	}
	for _, bad := range []api.WorkspaceParams{{Token: "../../etc"}, {Token: res.Token, Path: "/etc"}, {Token: res.Token, Path: "rel"}} {
		if _, err := td.create(api.VMCreateParams{Workspace: &bad}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}

// An image larger than workspace.max_size allows is refused and nothing is staged.
func TestWorkspaceUploadRefusesOversizedImages(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.31.10.1/24", func(c *config.Config) { c.Workspace.MaxSize = "1M" })
	c, err := rpc.Dial(context.Background(), td.cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Stream(context.Background(), api.MethodWorkspaceUpload, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "img")
	f, _ := os.Create(img)
	f.Truncate(4<<20 + 8<<30 + 1)
	f.Close()
	workspace.SendImage(context.Background(), st, img)
	line, _ := bufio.NewReader(st).ReadString('\n')
	if !strings.Contains(line, `"ok":false`) || !strings.Contains(line, "outside") {
		t.Fatalf("oversized upload: %q", line)
	}
	st.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(staged(td)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s := staged(td); len(s) > 0 {
		t.Fatalf("refused upload left %v", s)
	}
}
