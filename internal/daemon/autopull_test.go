package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/imagebuild"
	"banger/internal/model"
	"banger/internal/rpc"
)

// fakeBundle writes a bundle's files (any x86_64 ELF passes the kernel check; the rootfs is
// a real ext4) and returns their catalog file records.
func fakeBundle(t *testing.T, dir string) []model.File {
	t.Helper()
	elf, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skip("no /bin/true to stand in for a kernel")
	}
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), elf, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := imagebuild.MakeEmptyExt4(context.Background(), filepath.Join(dir, "rootfs.ext4"), 16<<20, "rootfs"); err != nil {
		t.Fatal(err)
	}
	var files []model.File
	for _, f := range []struct{ role, name string }{{model.RoleKernel, "vmlinux"}, {model.RoleRootfs, "rootfs.ext4"}} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		files = append(files, model.File{Role: f.role, Name: f.name, Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:])})
	}
	return files
}

// Five creates that need the same missing catalog image cause one download of each file,
// all five succeed, and each reports the auto_pull_image stage.
func TestConcurrentCreatesAutoPullOnce(t *testing.T) {
	requireMkfs(t)
	bundleDir := t.TempDir()
	files := fakeBundle(t, bundleDir)
	var mu sync.Mutex
	hits := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		mu.Unlock()
		http.ServeFile(w, r, filepath.Join(bundleDir, filepath.Base(r.URL.Path)))
	}))
	defer srv.Close()
	catalog := map[string]any{"schema": 1, "images": []any{map[string]any{
		"name": "remote", "version": "1", "arch": "x86_64", "description": "test",
		"source": map[string]any{"url": srv.URL + "/remote", "files": files},
	}}}
	catPath := filepath.Join(t.TempDir(), "catalog.json")
	b, _ := json.Marshal(catalog)
	if err := os.WriteFile(catPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24", func(c *config.Config) { c.Catalogs = []string{catPath} })

	var wg sync.WaitGroup
	results := make([]api.OpStatusResult, 5)
	errs := make([]error, 5)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var begin api.BeginResult
			if errs[i] = rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreateBegin,
				api.VMCreateParams{Image: "remote", NoStart: true}, &begin); errs[i] != nil {
				return
			}
			for !results[i].Done {
				if errs[i] = rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreateStatus,
					api.OpStatusParams{OpID: begin.OpID, WaitSeconds: 2, After: len(results[i].Stages)}, &results[i]); errs[i] != nil {
					return
				}
			}
		}(i)
	}
	wg.Wait()
	for i, st := range results {
		if errs[i] != nil || st.Error != nil {
			t.Fatalf("create %d: %v %+v", i, errs[i], st.Error)
		}
		pulled := false
		for _, s := range st.Stages {
			pulled = pulled || s.Name == "auto_pull_image"
		}
		if !pulled {
			t.Errorf("create %d did not report auto_pull_image: %+v", i, st.Stages)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, f := range files {
		if n := hits["/remote/"+f.Name]; n != 1 {
			t.Errorf("%s downloaded %d times, want 1 (hits %v)", f.Name, n, hits)
		}
	}
	var list api.ImageListResult
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodImageList, nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Images) != 1 || list.Images[0].Name != "remote" {
		t.Fatalf("images after the pulls: %+v", list.Images)
	}
}
