// Package imagestore defines banger's image bundle format and keeps the on-disk image store.
//
// A bundle is a directory (or a tar / tar.gz of one) holding manifest.json, a kernel, an
// optional initrd and an ext4 root filesystem. Publishing copies the files into a private
// temporary directory under the store, hashes them while copying, checks them against the
// manifest, and only then renames the directory to <imagesDir>/<id>. The id is the sha256 of
// the stored manifest bytes, so an image is immutable and re-importing it is a no-op.
// Preparing (the slow part, reading untrusted input under a context) and committing (the
// rename) are separate steps, so a caller can hold its lock for the commit alone. Input files
// must be regular files within size limits; nothing blocks on a FIFO or follows a symlink
// inside a bundle. The package writes files only; recording images in the database is the
// daemon's job.
package imagestore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// SchemaVersion is the manifest schema this package writes and reads.
const SchemaVersion = 1

// ManifestName is the manifest's file name inside a bundle and inside a stored image.
const ManifestName = "manifest.json"

// Conventional file names inside a bundle.
const (
	KernelName = "vmlinux"
	InitrdName = "initrd.img"
	RootfsName = "rootfs.ext4"
)

// ArchX86_64 is the only architecture banger runs today.
const ArchX86_64 = "x86_64"

// Manifest describes a bundle. Its JSON encoding (Encode) is canonical: the image id is the
// sha256 of those bytes, so field order and formatting must not depend on map iteration or
// on how the manifest was read.
type Manifest struct {
	Schema     int          `json:"schema"`
	Name       string       `json:"name"`
	Version    string       `json:"version"`
	Arch       string       `json:"arch"`
	KernelArgs string       `json:"kernel_args"`
	Files      []model.File `json:"files"`
}

var versionRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$`)
var hexDigestRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

// roleOrder fixes the order of files in an encoded manifest.
var roleOrder = map[string]int{model.RoleKernel: 0, model.RoleInitrd: 1, model.RoleRootfs: 2}

// ReadManifest reads and validates a manifest file.
func ReadManifest(path string) (Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Manifest{}, fmt.Errorf("reading manifest: %w", err)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return Manifest{}, fmt.Errorf("manifest %s: %w", path, err)
	}
	return m, nil
}

// ParseManifest decodes and validates manifest bytes. Unknown fields are rejected so that a
// newer schema is not silently half-understood.
func ParseManifest(b []byte) (Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, errdefs.New(errdefs.ErrInvalidArgument, "decoding manifest: %v", err)
	}
	if err := m.Validate(true); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// Validate checks the manifest. With digests, every file must carry its size and sha256
// (a manifest read from a bundle); without, only names and roles are checked (a manifest
// being assembled from loose files).
func (m Manifest) Validate(digests bool) error {
	if m.Schema != SchemaVersion {
		return errdefs.InvalidArgument("manifest.schema", m.Schema, fmt.Sprintf("unsupported schema; this banger reads schema %d", SchemaVersion))
	}
	if err := model.ValidateName("manifest.name", m.Name); err != nil {
		return err
	}
	if !versionRe.MatchString(m.Version) {
		return errdefs.InvalidArgument("manifest.version", m.Version, "must be 1-128 characters of letters, digits and . _ + ~ -")
	}
	if m.Arch != ArchX86_64 {
		return errdefs.InvalidArgument("manifest.arch", m.Arch, "unsupported architecture; only x86_64 is supported")
	}
	if strings.ContainsAny(m.KernelArgs, "\n\r\x00") {
		return errdefs.InvalidArgument("manifest.kernel_args", m.KernelArgs, "must be a single line")
	}
	roles := map[string]bool{}
	names := map[string]bool{}
	for i, f := range m.Files {
		field := fmt.Sprintf("manifest.files[%d]", i)
		if _, ok := roleOrder[f.Role]; !ok {
			return errdefs.InvalidArgument(field+".role", f.Role, "must be kernel, initrd or rootfs")
		}
		if roles[f.Role] {
			return errdefs.InvalidArgument(field+".role", f.Role, "appears more than once")
		}
		roles[f.Role] = true
		if err := validFileName(f.Name); err != nil {
			return errdefs.InvalidArgument(field+".name", f.Name, err.Error())
		}
		if names[f.Name] {
			return errdefs.InvalidArgument(field+".name", f.Name, "appears more than once")
		}
		names[f.Name] = true
		if digests {
			if f.Size <= 0 {
				return errdefs.InvalidArgument(field+".size", f.Size, "must be greater than zero")
			}
			if !hexDigestRe.MatchString(f.SHA256) {
				return errdefs.InvalidArgument(field+".sha256", f.SHA256, "must be 64 lowercase hex digits")
			}
		}
	}
	if !roles[model.RoleKernel] {
		return errdefs.New(errdefs.ErrInvalidArgument, "manifest.files: no kernel file")
	}
	if !roles[model.RoleRootfs] {
		return errdefs.New(errdefs.ErrInvalidArgument, "manifest.files: no rootfs file")
	}
	return nil
}

// validFileName keeps bundle files flat: a name is a single path element, so nothing in a
// manifest or tarball can write outside the image directory.
func validFileName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("must be a file name")
	case strings.ContainsAny(name, "/\\\x00"):
		return fmt.Errorf("must be a plain file name without directories")
	case name == ManifestName:
		return fmt.Errorf("is reserved for the manifest")
	case strings.HasPrefix(name, "."):
		return fmt.Errorf("must not start with '.'")
	case len(name) > 128:
		return fmt.Errorf("must be at most 128 characters")
	}
	return nil
}

// Encode returns the canonical manifest bytes: files in role order (kernel, initrd,
// rootfs), indented JSON, trailing newline.
func (m Manifest) Encode() ([]byte, error) {
	c := m
	c.Files = append([]model.File(nil), m.Files...)
	sortFiles(c.Files)
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding manifest: %w", err)
	}
	return append(b, '\n'), nil
}

func sortFiles(files []model.File) {
	slices.SortStableFunc(files, func(a, b model.File) int { return roleOrder[a.Role] - roleOrder[b.Role] })
}

// File returns the manifest's file with the given role.
func (m Manifest) File(role string) (model.File, bool) {
	for _, f := range m.Files {
		if f.Role == role {
			return f, true
		}
	}
	return model.File{}, false
}
