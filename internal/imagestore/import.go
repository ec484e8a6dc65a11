package imagestore

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// ImportVersion is the version given to images imported from loose files, which carry none.
const ImportVersion = "import"

// ImportFiles stores a kernel, an optional initrd and an ext4 rootfs as an image named name
// (`banger image import --name --kernel --initrd --rootfs`). The kernel is stored as
// "vmlinux" when it is an ELF and as "vmlinuz" when it is a bzImage, so the file name says
// which boot path it needs.
func ImportFiles(ctx context.Context, imagesDir, name, kernel, initrd, rootfs string) (*model.Image, error) {
	return commitStaged(PrepareFiles(ctx, imagesDir, name, kernel, initrd, rootfs))
}

// PrepareFiles is ImportFiles up to the Commit (see Prepare).
func PrepareFiles(ctx context.Context, imagesDir, name, kernel, initrd, rootfs string) (*Staged, error) {
	if err := model.ValidateName("name", name); err != nil {
		return nil, err
	}
	if kernel == "" {
		return nil, errdefs.InvalidArgument("kernel", kernel, "is required")
	}
	if rootfs == "" {
		return nil, errdefs.InvalidArgument("rootfs", rootfs, "is required")
	}
	format, err := KernelFormat(kernel)
	if err != nil {
		return nil, err
	}
	if err := CheckExt4(rootfs); err != nil {
		return nil, err
	}
	kernelName := KernelName
	if format == KernelBzImage {
		kernelName = "vmlinuz"
	}
	m := Manifest{Schema: SchemaVersion, Name: name, Version: ImportVersion, Arch: ArchX86_64}
	paths := map[string]string{}
	add := func(role, fileName, p string) error {
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("resolving %s path: %w", role, err)
		}
		m.Files = append(m.Files, model.File{Role: role, Name: fileName})
		paths[fileName] = abs
		return nil
	}
	if err := add(model.RoleKernel, kernelName, kernel); err != nil {
		return nil, err
	}
	if initrd != "" {
		if err := CheckInitrd(initrd); err != nil {
			return nil, err
		}
		if err := add(model.RoleInitrd, InitrdName, initrd); err != nil {
			return nil, err
		}
	}
	if err := add(model.RoleRootfs, RootfsName, rootfs); err != nil {
		return nil, err
	}
	return Prepare(ctx, imagesDir, BundleSource{Manifest: m, Paths: paths, Source: "import:" + paths[kernelName]}, "")
}

// maxBundleFiles bounds what a tarball may make us write before the manifest is checked.
const maxBundleFiles = 8

// maxBundleEntries bounds the tar headers (directories included) read from one bundle, so
// an endless stream of empty entries ends too.
const maxBundleEntries = 64

const maxManifestBytes = 1 << 20

// ImportBundle stores the bundle at path: a directory, or a tar or gzip-compressed tar of
// one (files at the top level or under a single directory). Every file must match the
// manifest's size and sha256. A non-empty name replaces the manifest's name.
func ImportBundle(ctx context.Context, imagesDir, path, name string) (*model.Image, error) {
	return commitStaged(PrepareBundle(ctx, imagesDir, path, name))
}

// PrepareBundle is ImportBundle up to the Commit (see Prepare).
func PrepareBundle(ctx context.Context, imagesDir, path, name string) (*Staged, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, openError("bundle", path, err)
	}
	if fi.IsDir() {
		src, err := OpenBundleDir(path)
		if err != nil {
			return nil, err
		}
		return Prepare(ctx, imagesDir, src, name)
	}
	if err := checkRegular("bundle", path, fi); err != nil {
		return nil, errdefs.InvalidArgument("bundle", path, "is neither a directory nor a tarball")
	}
	if name != "" {
		if err := model.ValidateName("name", name); err != nil {
			return nil, err
		}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("resolving bundle path: %w", err)
	}
	f, _, err := openInput("bundle", abs, true)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return importTar(ctx, imagesDir, f, abs, name)
}

// ImportTar stores a bundle read from a tar or tar.gz stream (a download, for example);
// source is recorded as the image's source.
func ImportTar(ctx context.Context, imagesDir string, r io.Reader, source, name string) (*model.Image, error) {
	if name != "" {
		if err := model.ValidateName("name", name); err != nil {
			return nil, err
		}
	}
	return commitStaged(importTar(ctx, imagesDir, r, source, name))
}

func importTar(ctx context.Context, imagesDir string, r io.Reader, source, name string) (_ *Staged, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var rd io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "bundle %s: reading gzip: %v", source, err)
		}
		defer zr.Close()
		rd = zr
	}
	st, err := newStage(imagesDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			st.discard()
		}
	}()

	tr := tar.NewReader(rd)
	var (
		manifest []byte
		parsed   *Manifest
	)
	prefix := "" // the single top-level directory the entries live in, if any
	first := true
	for entries := 0; ; entries++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if entries > maxBundleEntries {
			return nil, errdefs.InvalidArgument("bundle", source, fmt.Sprintf("has more than %d tar entries", maxBundleEntries))
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "bundle %s: reading tar: %v", source, err)
		}
		dir, base, err := splitEntry(h.Name)
		if err != nil {
			return nil, errdefs.InvalidArgument("bundle entry", h.Name, err.Error())
		}
		if h.Typeflag == tar.TypeDir {
			if base != "" && dir == "" && first {
				prefix, first = base, false
			}
			continue
		}
		if first {
			prefix, first = dir, false
		}
		if dir != prefix {
			return nil, errdefs.InvalidArgument("bundle entry", h.Name, "bundle files must all be in one directory")
		}
		if h.Typeflag != tar.TypeReg {
			return nil, errdefs.InvalidArgument("bundle entry", h.Name, "only regular files are allowed in a bundle")
		}
		if base == ManifestName {
			if manifest != nil {
				return nil, errdefs.InvalidArgument("bundle entry", h.Name, "appears more than once")
			}
			manifest, err = io.ReadAll(io.LimitReader(tr, maxManifestBytes+1))
			if err != nil {
				return nil, fmt.Errorf("reading bundle manifest: %w", err)
			}
			if len(manifest) > maxManifestBytes {
				return nil, errdefs.InvalidArgument("bundle entry", h.Name, "manifest is too large")
			}
			m, err := ParseManifest(manifest)
			if err != nil {
				return nil, fmt.Errorf("bundle %s: %w", source, err)
			}
			if err := checkLimits(m); err != nil {
				return nil, err
			}
			// Files already extracted are checked against it when the stage is sealed.
			parsed = &m
			continue
		}
		if len(st.got) >= maxBundleFiles {
			return nil, errdefs.InvalidArgument("bundle", source, fmt.Sprintf("has more than %d files", maxBundleFiles))
		}
		if err := checkEntrySize(parsed, h); err != nil {
			return nil, err
		}
		if err := st.add(ctx, base, tr); err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "bundle %s: extracting %s: %v", source, h.Name, err)
		}
	}
	if parsed == nil {
		return nil, errdefs.InvalidArgument("bundle", source, "has no "+ManifestName)
	}
	m := *parsed
	if name != "" {
		m.Name = name
	}
	return st.seal(m, true, source)
}

// checkEntrySize refuses a tar entry by its header alone, before any of its (possibly
// sparse, so nearly free to send) bytes are read: once the manifest has been seen the entry
// must have exactly the size it gives; before, at most the largest file limit.
func checkEntrySize(m *Manifest, h *tar.Header) error {
	if m == nil {
		if h.Size > MaxRootfsBytes {
			return errdefs.InvalidArgument("bundle entry", h.Name,
				fmt.Sprintf("is %d bytes, more than any image file may be (%d)", h.Size, int64(MaxRootfsBytes)))
		}
		return nil
	}
	_, base, _ := splitEntry(h.Name)
	want, ok := manifestFileByName(*m, base)
	if !ok {
		return errdefs.InvalidArgument("bundle", base, "file is not listed in the manifest")
	}
	if h.Size != want.Size {
		return errdefs.New(errdefs.ErrInvalidArgument, "%s %s: size mismatch: manifest says %d bytes, tar entry has %d", want.Role, want.Name, want.Size, h.Size)
	}
	return nil
}

// splitEntry splits a tar entry name into its directory (at most one level) and base name.
func splitEntry(name string) (dir, base string, err error) {
	clean := strings.TrimPrefix(path.Clean("/"+name), "/")
	if clean == "" {
		return "", "", nil
	}
	parts := strings.Split(clean, "/")
	switch len(parts) {
	case 1:
		return "", parts[0], nil
	case 2:
		return parts[0], parts[1], nil
	}
	return "", "", fmt.Errorf("is nested too deeply")
}
