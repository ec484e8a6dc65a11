package imagecat

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/errdefs"
)

func TestEmbeddedCatalog(t *testing.T) {
	c, err := Load(context.Background(), nil)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	tiny, ok := c.Lookup("tiny")
	if !ok {
		t.Fatal("embedded catalog lacks tiny")
	}
	if !tiny.IsBuilder() || tiny.Source.Builder != BuilderTiny || tiny.SourceString() != "builder:tiny" {
		t.Fatalf("tiny entry = %+v", tiny)
	}
	deb, ok := c.Lookup("debian-bookworm")
	if !ok {
		t.Fatal("embedded catalog lacks debian-bookworm")
	}
	if deb.Source.Builder != BuilderDebian || deb.Source.Ref != "bookworm" || deb.Origin != "embedded" {
		t.Fatalf("debian-bookworm entry = %+v", deb)
	}
	if e, ok := c.Lookup("nope"); ok {
		t.Fatalf("Lookup(nope) = %+v", e)
	}
}

const overrideCatalog = `{
  "schema": 1,
  "images": [
    {"name": "tiny", "version": "9", "arch": "x86_64", "description": "custom tiny",
     "source": {"url": "bundles/tiny-9", "files": [
       {"role": "kernel", "name": "vmlinux", "size": 10, "sha256": "0000000000000000000000000000000000000000000000000000000000000000"},
       {"role": "rootfs", "name": "rootfs.ext4", "size": 20, "sha256": "1111111111111111111111111111111111111111111111111111111111111111"}]}},
    {"name": "alpine", "version": "3.20", "arch": "x86_64",
     "source": {"builder": "oci", "ref": "docker.io/library/alpine:3.20"}}
  ]
}`

func TestLoadOverrideFileAndURL(t *testing.T) {
	file := filepath.Join(t.TempDir(), "catalog.json")
	fileCatalog := strings.Replace(overrideCatalog, `"url": "bundles/tiny-9"`, `"url": "https://images.example.org/tiny-9/"`, 1)
	if err := os.WriteFile(file, []byte(fileCatalog), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(context.Background(), []string{file})
	if err != nil {
		t.Fatalf("Load with file: %v", err)
	}
	tiny, _ := c.Lookup("tiny")
	if tiny.Version != "9" || tiny.IsBuilder() || tiny.Source.URL != "https://images.example.org/tiny-9" || tiny.Origin != file {
		t.Fatalf("tiny not overridden by file: %+v", tiny)
	}
	if _, ok := c.Lookup("debian-bookworm"); !ok {
		t.Fatal("embedded entry lost")
	}
	names := []string{}
	for _, e := range c.Entries() {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "tiny,tiny-microvm,debian-bookworm,dev,alpine" {
		t.Fatalf("entries = %v", names)
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/catalogs/main.json" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(overrideCatalog))
	}))
	defer srv.Close()
	// The URL catalog comes last, so it wins over the file.
	c, err = Load(context.Background(), []string{file, srv.URL + "/catalogs/main.json"})
	if err != nil {
		t.Fatalf("Load with URL: %v", err)
	}
	tiny, _ = c.Lookup("tiny")
	if want := srv.URL + "/catalogs/bundles/tiny-9"; tiny.Source.URL != want {
		t.Fatalf("relative bundle URL resolved to %q, want %q", tiny.Source.URL, want)
	}

	if _, err := Load(context.Background(), []string{srv.URL + "/missing.json"}); err == nil ||
		!strings.Contains(err.Error(), "404") {
		t.Fatalf("missing URL catalog: %v", err)
	}
	if _, err := Load(context.Background(), []string{filepath.Join(t.TempDir(), "none.json")}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("missing file catalog: %v", err)
	}
}

func TestCatalogValidation(t *testing.T) {
	const okFile = `{"role": "kernel", "name": "vmlinux", "size": 1, "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}, {"role": "rootfs", "name": "r", "size": 1, "sha256": "1111111111111111111111111111111111111111111111111111111111111111"}`
	cases := map[string]struct{ doc, field string }{
		"schema":     {`{"schema": 2, "images": []}`, "schema"},
		"name":       {`{"schema": 1, "images": [{"name": "Bad_Name", "version": "1", "arch": "x86_64", "source": {"builder": "tiny"}}]}`, "name"},
		"arch":       {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "sparc", "source": {"builder": "tiny"}}]}`, "arch"},
		"builder":    {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "x86_64", "source": {"builder": "nix"}}]}`, "source.builder"},
		"ref":        {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "x86_64", "source": {"builder": "debian"}}]}`, "source.ref"},
		"both":       {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "x86_64", "source": {"builder": "tiny", "url": "https://x/y"}}]}`, "source"},
		"scheme":     {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "x86_64", "source": {"url": "ftp://x/y", "files": [` + okFile + `]}}]}`, "source.url"},
		"escape":     {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "x86_64", "source": {"url": "https://x/y", "files": [{"role": "kernel", "name": "../vmlinux", "size": 1, "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}]}}]}`, "source.files[0].name"},
		"digest":     {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "x86_64", "source": {"url": "https://x/y", "files": [{"role": "kernel", "name": "k", "size": 1, "sha256": "abc"}]}}]}`, "source.files[0].sha256"},
		"no rootfs":  {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "x86_64", "source": {"url": "https://x/y", "files": [{"role": "kernel", "name": "k", "size": 1, "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}]}}]}`, "source.files"},
		"duplicate":  {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "x86_64", "source": {"builder": "tiny"}}, {"name": "a", "version": "1", "arch": "x86_64", "source": {"builder": "tiny"}}]}`, "images[1].name"},
		"unknown":    {`{"schema": 1, "images": [], "extra": true}`, "extra"},
		"no source":  {`{"schema": 1, "images": [{"name": "a", "version": "1", "arch": "x86_64", "source": {}}]}`, "source"},
		"bad versio": {`{"schema": 1, "images": [{"name": "a", "version": "1 2", "arch": "x86_64", "source": {"builder": "tiny"}}]}`, "version"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := parseCatalog([]byte(tc.doc), "test", nil)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("want invalid argument naming %q, got %v", tc.field, err)
			}
		})
	}
}
