// Package imagecat knows which images banger can obtain and obtains them: an embedded
// catalog (optionally layered with configured ones), verified and resumable bundle
// downloads with progress, dispatch to local builders, and single-flight so that many
// callers needing the same missing image cause one download or build.
//
// # Catalog format
//
// A catalog is a JSON document:
//
//	{
//	  "schema": 1,
//	  "images": [
//	    {"name": "tiny", "version": "1", "arch": "x86_64", "description": "…",
//	     "source": {"builder": "tiny"}},
//	    {"name": "alpine", "version": "3.20", "arch": "x86_64", "description": "…",
//	     "kernel_args": "console=ttyS0",
//	     "source": {"url": "https://images.example.org/alpine-3.20",
//	                "files": [{"role": "kernel", "name": "vmlinux", "size": 123, "sha256": "…"},
//	                          {"role": "initrd", "name": "initrd.img", "size": 45, "sha256": "…"},
//	                          {"role": "rootfs", "name": "rootfs.ext4", "size": 678, "sha256": "…"}]}}
//	  ]
//	}
//
// A source is either a builder recipe ("builder": tiny, debian or oci, with an optional
// "ref": Debian suite or OCI reference) built locally, or a bundle URL. A bundle URL is a
// base: every file is fetched separately as URL + "/" + file name, which keeps HTTP range
// resumption per file simple, and every file is verified against its size and sha256 before
// the bundle is handed over. A relative URL in a catalog fetched over HTTP resolves against
// the catalog's own URL. The manifest.json of the bundle is written locally from the entry.
//
// Bundles can also be pulled from a bare URL (no catalog entry): the base then serves a
// manifest.json (the bundle manifest, see internal/imagestore) whose file digests drive the
// verification of the other files.
package imagecat

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"banger/internal/errdefs"
	"banger/internal/imagebuild"
	"banger/internal/imagebuild/debian"
	"banger/internal/model"
)

//go:embed catalog.json
var embeddedCatalog []byte

// Builders the catalog may name.
const (
	BuilderTiny   = "tiny"
	BuilderDebian = "debian"
	BuilderOCI    = "oci"
)

// catalogSchema is the only catalog format version this code reads.
const catalogSchema = 1

// maxCatalogBytes bounds a catalog read from a file or URL; real catalogs are a few KiB.
const maxCatalogBytes = 4 << 20

// Entry is one image the catalog can provide.
type Entry struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Arch        string `json:"arch"`
	Description string `json:"description,omitempty"`
	// KernelArgs go into the manifest of a URL-sourced bundle; builders set their own.
	KernelArgs string `json:"kernel_args,omitempty"`
	Source     Source `json:"source"`
	// Origin says which catalog defined the entry ("embedded", a path or a URL).
	Origin string `json:"-"`
}

// Source says where an entry's bundle comes from: exactly one of URL or Builder is set.
type Source struct {
	URL     string       `json:"url,omitempty"`
	Files   []model.File `json:"files,omitempty"`
	Builder string       `json:"builder,omitempty"`
	Ref     string       `json:"ref,omitempty"`
	// Packages are the debian builder's extra packages (debootstrap --include).
	Packages []string `json:"packages,omitempty"`
	// Kernel is the tiny builder's kernel: imagebuild.KernelDebian (empty) or KernelMicrovm.
	Kernel string `json:"kernel,omitempty"`
}

// IsBuilder reports whether the entry is built locally rather than downloaded.
func (e Entry) IsBuilder() bool { return e.Source.Builder != "" }

// SourceString is the one-line description of the source stored with the image and shown
// by `banger image catalog`: "builder:tiny", "builder:tiny+kernel:microvm",
// "builder:debian:bookworm" or the bundle URL.
func (e Entry) SourceString() string {
	if e.Source.Builder == "" {
		return e.Source.URL
	}
	s := "builder:" + e.Source.Builder
	if e.Source.Ref != "" {
		s += ":" + e.Source.Ref
	}
	if e.Source.Kernel != "" && e.Source.Kernel != imagebuild.KernelDebian {
		s += "+kernel:" + e.Source.Kernel
	}
	return s
}

// Catalog is the merged set of entries, in the order they were first defined.
type Catalog struct {
	entries []Entry
}

type catalogDoc struct {
	Schema int     `json:"schema"`
	Images []Entry `json:"images"`
}

// Load returns the embedded catalog with the extra catalogs (file paths or http(s) URLs)
// layered over it in order; an entry replaces an earlier one of the same name.
func Load(ctx context.Context, extra []string) (*Catalog, error) {
	return LoadWithClient(ctx, http.DefaultClient, extra)
}

// LoadWithClient is Load with the HTTP client used for catalog URLs.
func LoadWithClient(ctx context.Context, client *http.Client, extra []string) (*Catalog, error) {
	c := &Catalog{}
	base, err := parseCatalog(embeddedCatalog, "embedded", nil)
	if err != nil {
		// The embedded catalog is compiled in; a bad one is a build defect, caught by tests.
		return nil, fmt.Errorf("parsing embedded catalog: %w", err)
	}
	c.merge(base)
	for _, src := range extra {
		data, baseURL, err := readCatalog(ctx, client, src)
		if err != nil {
			return nil, err
		}
		entries, err := parseCatalog(data, src, baseURL)
		if err != nil {
			return nil, fmt.Errorf("catalog %s: %w", src, err)
		}
		c.merge(entries)
	}
	return c, nil
}

func (c *Catalog) merge(entries []Entry) {
	for _, e := range entries {
		i := slices.IndexFunc(c.entries, func(o Entry) bool { return o.Name == e.Name })
		if i >= 0 {
			c.entries[i] = e
		} else {
			c.entries = append(c.entries, e)
		}
	}
}

// Entries returns a copy of all entries.
func (c *Catalog) Entries() []Entry { return slices.Clone(c.entries) }

// Lookup returns the entry named name; ok is false when the catalog has none.
func (c *Catalog) Lookup(name string) (e Entry, ok bool) {
	for _, e := range c.entries {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

func readCatalog(ctx context.Context, client *http.Client, src string) ([]byte, *url.URL, error) {
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		u, err := url.Parse(src)
		if err != nil {
			return nil, nil, errdefs.InvalidArgument("catalogs", src, "not a valid URL")
		}
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			return nil, nil, errdefs.InvalidArgument("catalogs", src, err.Error())
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, nil, fmt.Errorf("fetching catalog %s: %w", src, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, nil, errdefs.New(errdefs.ErrUnavailable, "fetching catalog %s: HTTP %s", src, resp.Status)
		}
		data, err := readLimited(resp.Body, maxCatalogBytes)
		if err != nil {
			return nil, nil, fmt.Errorf("reading catalog %s: %w", src, err)
		}
		return data, u, nil
	}
	f, err := os.Open(src)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil, errdefs.InvalidArgument("catalogs", src, "no such file")
		}
		return nil, nil, fmt.Errorf("opening catalog: %w", err)
	}
	defer f.Close()
	data, err := readLimited(f, maxCatalogBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("reading catalog %s: %w", src, err)
	}
	return data, nil, nil
}

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return data, nil
}

// parseCatalog decodes and validates a catalog; baseURL resolves relative bundle URLs.
func parseCatalog(data []byte, origin string, baseURL *url.URL) ([]Entry, error) {
	var doc catalogDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "decoding catalog JSON: %w", err)
	}
	if doc.Schema != catalogSchema {
		return nil, errdefs.InvalidArgument("schema", doc.Schema, fmt.Sprintf("unsupported catalog schema, want %d", catalogSchema))
	}
	seen := map[string]bool{}
	for i := range doc.Images {
		e := &doc.Images[i]
		e.Origin = origin
		if err := validateEntry(e, baseURL); err != nil {
			return nil, fmt.Errorf("images[%d]: %w", i, err)
		}
		if seen[e.Name] {
			return nil, errdefs.InvalidArgument(fmt.Sprintf("images[%d].name", i), e.Name, "defined twice in the same catalog")
		}
		seen[e.Name] = true
	}
	return doc.Images, nil
}

var (
	sha256Hex  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	versionRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	archValues = []string{"x86_64", "aarch64"}
	roles      = []string{model.RoleKernel, model.RoleInitrd, model.RoleRootfs}
)

// hostArch names this machine's architecture the way manifests do (uname -m style).
func hostArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return runtime.GOARCH
}

func validateEntry(e *Entry, baseURL *url.URL) error {
	if err := model.ValidateName("name", e.Name); err != nil {
		return err
	}
	if !versionRe.MatchString(e.Version) {
		return errdefs.InvalidArgument("version", e.Version, "must be 1-64 characters of letters, digits, '.', '_', '+', '-'")
	}
	if !slices.Contains(archValues, e.Arch) {
		return errdefs.InvalidArgument("arch", e.Arch, "must be one of "+strings.Join(archValues, ", "))
	}
	s := &e.Source
	switch {
	case s.Builder != "" && s.URL != "":
		return errdefs.InvalidArgument("source", e.Name, "set either url or builder, not both")
	case s.Builder != "":
		if !slices.Contains([]string{BuilderTiny, BuilderDebian, BuilderOCI}, s.Builder) {
			return errdefs.InvalidArgument("source.builder", s.Builder, "must be tiny, debian or oci")
		}
		if len(s.Files) > 0 {
			return errdefs.InvalidArgument("source.files", e.Name, "builder sources have no files")
		}
		if s.Builder != BuilderTiny && s.Ref == "" {
			return errdefs.InvalidArgument("source.ref", s.Ref, "the "+s.Builder+" builder needs a ref")
		}
		if len(s.Packages) > 0 && s.Builder != BuilderDebian {
			return errdefs.InvalidArgument("source.packages", strings.Join(s.Packages, ","), "only the debian builder takes packages")
		}
		if err := imagebuild.ValidKernel("source.kernel", s.Kernel); err != nil {
			return err
		}
		if s.Kernel != "" && s.Builder != BuilderTiny {
			return errdefs.InvalidArgument("source.kernel", s.Kernel, "only the tiny builder takes a kernel")
		}
		return debian.ValidatePackages("source.packages", s.Packages)
	case s.URL != "":
		u, err := url.Parse(s.URL)
		if err != nil {
			return errdefs.InvalidArgument("source.url", s.URL, "not a valid URL")
		}
		if baseURL != nil {
			u = baseURL.ResolveReference(u)
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
			return errdefs.InvalidArgument("source.url", s.URL, "must be an absolute http(s) URL")
		}
		s.URL = strings.TrimSuffix(u.String(), "/")
		return validateFiles("source.files", s.Files)
	default:
		return errdefs.InvalidArgument("source", e.Name, "needs a url or a builder")
	}
}

// validateFiles checks a bundle's file list; names become paths on disk and URL
// components, so they must be plain base names.
func validateFiles(field string, files []model.File) error {
	have := map[string]bool{}
	names := map[string]bool{}
	for i, f := range files {
		fld := fmt.Sprintf("%s[%d]", field, i)
		if !slices.Contains(roles, f.Role) {
			return errdefs.InvalidArgument(fld+".role", f.Role, "must be kernel, initrd or rootfs")
		}
		if have[f.Role] {
			return errdefs.InvalidArgument(fld+".role", f.Role, "appears twice")
		}
		have[f.Role] = true
		if f.Name == "" || f.Name != path.Base(f.Name) || f.Name == "." || f.Name == ".." ||
			strings.ContainsAny(f.Name, `/\`) || f.Name == "manifest.json" || strings.HasPrefix(f.Name, ".") {
			return errdefs.InvalidArgument(fld+".name", f.Name, "must be a plain file name")
		}
		if names[f.Name] {
			return errdefs.InvalidArgument(fld+".name", f.Name, "appears twice")
		}
		names[f.Name] = true
		if f.Size <= 0 {
			return errdefs.InvalidArgument(fld+".size", f.Size, "must be positive")
		}
		if !sha256Hex.MatchString(f.SHA256) {
			return errdefs.InvalidArgument(fld+".sha256", f.SHA256, "must be 64 lowercase hex digits")
		}
	}
	if !have[model.RoleKernel] || !have[model.RoleRootfs] {
		return errdefs.InvalidArgument(field, len(files), "a bundle needs at least a kernel and a rootfs file")
	}
	return nil
}
