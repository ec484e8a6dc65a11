package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"banger/internal/errdefs"
	"banger/internal/imagestore"
)

// maxImageBytes bounds what a registry can make a build download (the sum of the manifest's
// layer sizes) and what one layer may uncompress to: nothing larger fits the rootfs the
// image store would accept.
const maxImageBytes = imagestore.MaxRootfsBytes

// fetchVerified downloads every layer blob of img into dir and returns an image whose
// layers read those local copies. Each blob must match the size and digest the manifest
// gives it, and its uncompressed stream the diff id the config lists for it; the manifest
// and config themselves are checked by go-containerregistry (the manifest against a digest
// reference, the config against the manifest's descriptor).
//
// Verification has to happen here, before flattening: mutate.Extract stops reading a layer
// at its tar end marker, so the library's own digest check, which fires only at EOF, never
// runs, and a short layer ends the flattened stream early but cleanly. Checking local copies
// also means the bytes unpacked are the bytes checked, not a second download.
func fetchVerified(ctx context.Context, img v1.Image, dir string) (v1.Image, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("reading image manifest: %w", err)
	}
	// The library checks the config blob against the manifest's descriptor while reading it.
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, errdefs.New(errdefs.ErrUnavailable, "image config %s: %w", m.Config.Digest, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("listing image layers: %w", err)
	}
	if len(layers) != len(m.Layers) || len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, errdefs.New(errdefs.ErrUnavailable,
			"image is inconsistent: manifest lists %d layers, config lists %d diff ids", len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	var total int64
	for _, desc := range m.Layers {
		if desc.Size < 0 || desc.Size > maxImageBytes-total {
			return nil, errdefs.New(errdefs.ErrUnavailable,
				"layer %s: the manifest's layer sizes add up to more than the %d bytes a rootfs may hold", desc.Digest, int64(maxImageBytes))
		}
		total += desc.Size
	}
	local := make([]v1.Layer, len(layers))
	for i, desc := range m.Layers {
		l, err := fetchLayer(ctx, layers[i], desc, cfg.RootFS.DiffIDs[i], filepath.Join(dir, fmt.Sprintf("layer-%d", i)))
		if err != nil {
			return nil, err
		}
		local[i] = l
	}
	return &localImage{Image: img, layers: local}, nil
}

// fetchLayer copies one compressed blob to path and checks both of its digests.
func fetchLayer(ctx context.Context, l v1.Layer, desc v1.Descriptor, diffID v1.Hash, path string) (v1.Layer, error) {
	if desc.Digest.Algorithm != "sha256" || diffID.Algorithm != "sha256" {
		return nil, errdefs.New(errdefs.ErrUnavailable, "layer %s: only sha256 digests are supported (diff id %s)", desc.Digest, diffID)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, errdefs.New(errdefs.ErrUnavailable, "fetching layer %s: %w", desc.Digest, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("storing layer %s: %w", desc.Digest, err)
	}
	h := sha256.New()
	// One byte past the claimed size shows a blob that is too long without reading all of it
	// (in case the library does not know the size).
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(ctxReader{ctx, rc}, desc.Size+1))
	rc.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	switch {
	case err != nil && n < desc.Size:
		return nil, tampered(desc.Digest, "is truncated: %d of %d bytes arrived (%v)", n, desc.Size, err)
	case err != nil:
		return nil, tampered(desc.Digest, "does not match its digest: %v", err)
	case n != desc.Size:
		return nil, tampered(desc.Digest, "is longer than the %d bytes its manifest gives", desc.Size)
	case got != desc.Digest.String():
		return nil, tampered(desc.Digest, "has digest %s", got)
	}
	local, err := partial.CompressedToLayer(&localBlob{path: path, desc: desc})
	if err != nil {
		return nil, err
	}
	if err := checkDiffID(ctx, local, desc.Digest, diffID); err != nil {
		return nil, err
	}
	return local, nil
}

// checkDiffID hashes the whole uncompressed stream of a stored layer.
func checkDiffID(ctx context.Context, l v1.Layer, digest, diffID v1.Hash) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return tampered(digest, "cannot be decompressed: %v", err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(ctxReader{ctx, rc}, maxImageBytes+1))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return tampered(digest, "cannot be decompressed: %v", err)
	}
	if n > maxImageBytes {
		return errdefs.New(errdefs.ErrUnavailable, "layer %s: uncompresses to more than the %d bytes a rootfs may hold", digest, int64(maxImageBytes))
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != diffID.String() {
		return tampered(digest, "uncompressed has digest %s, the image config says %s", got, diffID)
	}
	return nil
}

func tampered(digest v1.Hash, format string, args ...any) error {
	return errdefs.New(errdefs.ErrUnavailable, "layer %s "+format+": the registry (or the network path to it) served a corrupt or tampered blob",
		append([]any{digest}, args...)...)
}

// localBlob is a verified compressed layer on disk.
type localBlob struct {
	path string
	desc v1.Descriptor
}

func (b *localBlob) Digest() (v1.Hash, error)            { return b.desc.Digest, nil }
func (b *localBlob) Size() (int64, error)                { return b.desc.Size, nil }
func (b *localBlob) MediaType() (types.MediaType, error) { return b.desc.MediaType, nil }
func (b *localBlob) Compressed() (io.ReadCloser, error)  { return os.Open(b.path) }

// localImage is the pulled image with its layers served from verified local copies; only
// Layers is consulted by mutate.Extract.
type localImage struct {
	v1.Image
	layers []v1.Layer
}

func (i *localImage) Layers() ([]v1.Layer, error) { return i.layers, nil }

// ctxReader makes a long copy stop when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
