package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// BundleSource is a bundle to publish: a manifest plus where each of its files is.
type BundleSource struct {
	Manifest Manifest
	// Dir holds the manifest's files under their manifest names.
	Dir string
	// Paths overrides Dir for individual files, keyed by manifest file name; loose files
	// given on the command line live anywhere.
	Paths map[string]string
	// Verify says the manifest's sizes and digests are authoritative and every copied file
	// must match them. Without it they are computed while copying.
	Verify bool
	// Source is recorded in model.Image.Source (import path, URL, builder).
	Source string
}

// OpenBundleDir reads a bundle directory's manifest; the result verifies digests.
func OpenBundleDir(dir string) (BundleSource, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return BundleSource{}, fmt.Errorf("resolving bundle path: %w", err)
	}
	mp := filepath.Join(abs, ManifestName)
	if _, err := os.Lstat(mp); errors.Is(err, os.ErrNotExist) {
		return BundleSource{}, errdefs.InvalidArgument("bundle", dir, "has no "+ManifestName)
	}
	b, err := readManifestFile(mp)
	if err != nil {
		return BundleSource{}, err
	}
	m, err := ParseManifest(b)
	if err != nil {
		return BundleSource{}, fmt.Errorf("manifest %s: %w", mp, err)
	}
	return BundleSource{Manifest: m, Dir: abs, Verify: true, Source: abs}, nil
}

// path says where the file called name is and whether a symlink there may be followed: a
// loose file is a path the user gave, a bundle's file is named by the bundle.
func (s BundleSource) path(name string) (string, bool) {
	if p, ok := s.Paths[name]; ok {
		return p, true
	}
	return filepath.Join(s.Dir, name), false
}

var imageIDRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidID reports whether id has the form of an image id (64 lowercase hex digits).
func ValidID(id string) bool { return imageIDRe.MatchString(id) }

// Publish copies src's files into the store and returns the stored image: Prepare, then
// Commit.
func Publish(ctx context.Context, imagesDir string, src BundleSource, name string) (*model.Image, error) {
	return commitStaged(Prepare(ctx, imagesDir, src, name))
}

// Prepare copies src's files into a temporary directory under imagesDir (same file system,
// so the final rename is atomic), sparsely and hashing on the way, and checks them (kernel
// format, ext4 superblock, initrd magic, sizes and digests when src.Verify). This is the
// slow part and it reads untrusted input, so it takes no lock: the result is private until
// Commit. ctx ends the copy. A non-empty name replaces the manifest's name (and so changes
// the id).
func Prepare(ctx context.Context, imagesDir string, src BundleSource, name string) (_ *Staged, err error) {
	m := src.Manifest
	if name != "" {
		if err := model.ValidateName("name", name); err != nil {
			return nil, err
		}
		m.Name = name
	}
	if err := m.Validate(src.Verify); err != nil {
		return nil, err
	}
	if src.Verify {
		if err := checkLimits(m); err != nil {
			return nil, err
		}
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
	for _, f := range m.Files {
		p, follow := src.path(f.Name)
		want := int64(-1)
		if src.Verify {
			want = f.Size
		}
		if err := st.addFile(ctx, f.Name, p, f.Role, follow, want); err != nil {
			return nil, err
		}
	}
	return st.seal(m, src.Verify, src.Source)
}

// Staged is an image copied and checked into the store's private temporary area, not yet
// published. Commit publishes it; Discard (always safe to defer) removes it if it was not.
type Staged struct {
	st     *stage
	m      Manifest
	id     string
	source string
}

// ID is the id the image will have once committed.
func (s *Staged) ID() string { return s.id }

// Name is the image's name (the manifest's, or the one given to Prepare).
func (s *Staged) Name() string { return s.m.Name }

// Discard removes the staged files unless they were committed.
func (s *Staged) Discard() { s.st.discard() }

// Commit renames the staged directory to <imagesDir>/<id>: cheap, so the caller may hold the
// lock that orders publications and removals around it. Committing an image that is already
// stored returns the stored one. On failure nothing is left in the store.
func (s *Staged) Commit() (*model.Image, error) {
	defer s.st.discard()
	if err := os.Chmod(s.st.dir, 0o755); err != nil {
		return nil, fmt.Errorf("publishing image: %w", err)
	}
	final := filepath.Join(s.st.imagesDir, s.id)
	if _, err := os.Stat(final); err == nil {
		return loadExisting(s.st.imagesDir, s.id, s.source)
	}
	if err := os.Rename(s.st.dir, final); err != nil {
		// A concurrent publish of the same bundle won the race; its result is ours.
		if _, serr := os.Stat(final); serr == nil {
			return loadExisting(s.st.imagesDir, s.id, s.source)
		}
		return nil, fmt.Errorf("publishing image %s: %w", s.id, err)
	}
	s.st.committed = true
	syncDir(s.st.imagesDir)
	im := imageFromManifest(s.id, final, s.m)
	im.Source = s.source
	im.CreatedAt = time.Now().UTC()
	return im, nil
}

// commitStaged is Commit for callers that do not need to do anything in between.
func commitStaged(s *Staged, err error) (*model.Image, error) {
	if err != nil {
		return nil, err
	}
	defer s.Discard()
	return s.Commit()
}

// stage is a temporary image directory being filled.
type stage struct {
	imagesDir string
	dir       string
	got       map[string]model.File // by name: size and digest as copied
	committed bool
}

func newStage(imagesDir string) (*stage, error) {
	abs, err := filepath.Abs(imagesDir)
	if err != nil {
		return nil, fmt.Errorf("resolving images dir: %w", err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("creating images dir: %w", err)
	}
	// The leading dot keeps it out of anything that lists images by id.
	dir, err := os.MkdirTemp(abs, ".tmp-")
	if err != nil {
		return nil, fmt.Errorf("creating staging dir: %w", err)
	}
	return &stage{imagesDir: abs, dir: dir, got: map[string]model.File{}}, nil
}

func (s *stage) discard() {
	if !s.committed {
		os.RemoveAll(s.dir)
	}
}

// addFile copies the file at path into the stage under name. want is the size the manifest
// gives it, or -1 when there is no manifest to trust; either way the file is checked
// against its role's limit before a byte is read, and only the size it had when opened is
// copied.
func (s *stage) addFile(ctx context.Context, name, path, role string, follow bool, want int64) error {
	f, fi, err := openInput(role, path, follow)
	if err != nil {
		return err
	}
	defer f.Close()
	size := fi.Size()
	if max := maxFileBytes(role); size > max {
		return errdefs.InvalidArgument(role, path, fmt.Sprintf("is %d bytes, more than the %d-byte limit for a %s", size, max, role))
	}
	if want >= 0 && size != want {
		return errdefs.New(errdefs.ErrInvalidArgument, "%s %s: size mismatch: manifest says %d bytes, file has %d", role, name, want, size)
	}
	if err := s.add(ctx, name, io.LimitReader(f, size)); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return readError(role, path, err)
	}
	if got := s.got[name].Size; got != size {
		return errdefs.InvalidArgument(role, path, fmt.Sprintf("shrank from %d to %d bytes while being read", size, got))
	}
	return nil
}

// add writes r into the stage under name, recording its size and digest.
func (s *stage) add(ctx context.Context, name string, r io.Reader) error {
	if err := validFileName(name); err != nil {
		return errdefs.InvalidArgument("file", name, err.Error())
	}
	if _, dup := s.got[name]; dup {
		return errdefs.InvalidArgument("file", name, "appears more than once in the bundle")
	}
	out, err := os.OpenFile(filepath.Join(s.dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("creating staged file: %w", err)
	}
	n, sum, err := WriteSparse(ctx, out, r)
	if err == nil {
		// The database row will point at these files as soon as Publish returns.
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	s.got[name] = model.File{Name: name, Size: n, SHA256: sum}
	return nil
}

// seal checks the staged files against m and writes the final manifest, so that only the
// rename to <imagesDir>/<id> is left.
func (s *stage) seal(m Manifest, verify bool, source string) (*Staged, error) {
	if len(s.got) != len(m.Files) {
		for name := range s.got {
			if _, ok := manifestFileByName(m, name); !ok {
				return nil, errdefs.InvalidArgument("bundle", name, "file is not listed in the manifest")
			}
		}
	}
	files := make([]model.File, 0, len(m.Files))
	for _, want := range m.Files {
		got, ok := s.got[want.Name]
		if !ok {
			return nil, errdefs.InvalidArgument("bundle", want.Name, "file listed in the manifest is missing")
		}
		if verify {
			if got.Size != want.Size {
				return nil, errdefs.New(errdefs.ErrInvalidArgument, "%s %s: size mismatch: manifest says %d bytes, file has %d", want.Role, want.Name, want.Size, got.Size)
			}
			if got.SHA256 != want.SHA256 {
				return nil, errdefs.New(errdefs.ErrInvalidArgument, "%s %s: digest mismatch: manifest says sha256 %s, file has %s", want.Role, want.Name, want.SHA256, got.SHA256)
			}
		}
		if err := checkRole(want.Role, filepath.Join(s.dir, want.Name)); err != nil {
			return nil, err
		}
		files = append(files, model.File{Role: want.Role, Name: want.Name, Size: got.Size, SHA256: got.SHA256})
	}
	m.Files = files
	mb, err := m.Encode()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(mb)
	id := hex.EncodeToString(sum[:])
	if err := writeFileSync(filepath.Join(s.dir, ManifestName), mb); err != nil {
		return nil, fmt.Errorf("writing manifest: %w", err)
	}
	return &Staged{st: s, m: m, id: id, source: source}, nil
}

func loadExisting(imagesDir, id, source string) (*model.Image, error) {
	im, err := Load(imagesDir, id)
	if err != nil {
		return nil, err
	}
	im.Source = source
	return im, nil
}

func manifestFileByName(m Manifest, name string) (model.File, bool) {
	for _, f := range m.Files {
		if f.Name == name {
			return f, true
		}
	}
	return model.File{}, false
}

func checkRole(role, path string) error {
	switch role {
	case model.RoleKernel:
		return CheckKernel(path)
	case model.RoleRootfs:
		return CheckExt4(path)
	case model.RoleInitrd:
		return CheckInitrd(path)
	}
	return nil
}

func imageFromManifest(id, dir string, m Manifest) *model.Image {
	return &model.Image{
		ID: id, Name: m.Name, Version: m.Version, Arch: m.Arch, Dir: dir,
		KernelArgs: m.KernelArgs, Files: m.Files,
	}
}

// Load reads a stored image from <imagesDir>/<id>, checking that the manifest still hashes
// to id. It does not re-hash the (large) files; VerifyFiles does.
func Load(imagesDir, id string) (*model.Image, error) {
	if !ValidID(id) {
		return nil, errdefs.InvalidArgument("image id", id, "must be 64 lowercase hex digits")
	}
	abs, err := filepath.Abs(filepath.Join(imagesDir, id))
	if err != nil {
		return nil, fmt.Errorf("resolving image dir: %w", err)
	}
	mb, err := os.ReadFile(filepath.Join(abs, ManifestName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errdefs.NotFound("image", id)
		}
		return nil, fmt.Errorf("reading image manifest: %w", err)
	}
	sum := sha256.Sum256(mb)
	if hex.EncodeToString(sum[:]) != id {
		return nil, fmt.Errorf("image %s: stored manifest does not match its id (store corrupted)", id)
	}
	m, err := ParseManifest(mb)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", id, err)
	}
	im := imageFromManifest(id, abs, m)
	if fi, err := os.Stat(abs); err == nil {
		im.CreatedAt = fi.ModTime().UTC()
	}
	return im, nil
}

// VerifyFiles re-hashes a stored image's files against its manifest.
func VerifyFiles(im *model.Image) error {
	for _, f := range im.Files {
		n, sum, err := HashFile(filepath.Join(im.Dir, f.Name))
		if err != nil {
			return fmt.Errorf("verifying image %s: %w", im.ID, err)
		}
		if n != f.Size || sum != f.SHA256 {
			return fmt.Errorf("image %s: %s %s does not match its manifest digest", im.ID, f.Role, f.Name)
		}
	}
	return nil
}

// Remove deletes a stored image. The directory is first renamed out of the id namespace so a
// crash half way through never leaves a partial image under its id.
func Remove(imagesDir, id string) error {
	if !ValidID(id) {
		return errdefs.InvalidArgument("image id", id, "must be 64 lowercase hex digits")
	}
	dir := filepath.Join(imagesDir, id)
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errdefs.NotFound("image", id)
		}
		return fmt.Errorf("removing image %s: %w", id, err)
	}
	trash, err := os.MkdirTemp(imagesDir, ".rm-")
	if err != nil {
		return fmt.Errorf("removing image %s: %w", id, err)
	}
	defer os.RemoveAll(trash)
	if err := os.Rename(dir, filepath.Join(trash, id)); err != nil {
		return fmt.Errorf("removing image %s: %w", id, err)
	}
	return nil
}

// Sweep removes leftovers of publishes and removals interrupted by a crash. The daemon calls
// it at start, before it publishes anything.
func Sweep(imagesDir string) error {
	for _, pat := range []string{".tmp-*", ".rm-*"} {
		matches, err := filepath.Glob(filepath.Join(imagesDir, pat))
		if err != nil {
			return err
		}
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return fmt.Errorf("sweeping %s: %w", m, err)
			}
		}
	}
	return nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir makes a rename durable; failure only weakens crash safety, so it is not reported.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
