package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/internal/errdefs"
)

// compressed returns a layer's gzip bytes and digest.
func compressed(t *testing.T, l v1.Layer) ([]byte, string) {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return b, d.String()
}

// buildMustFail runs BuildRootfs against ref and checks that it fails as a corrupt
// registry blob naming digest, leaving nothing next to the output.
func buildMustFail(t *testing.T, ref, digest string, mentions ...string) {
	t.Helper()
	dir := t.TempDir()
	err := BuildRootfs(context.Background(), ref, Options{Out: filepath.Join(dir, "rootfs.ext4")})
	if err == nil {
		t.Fatal("BuildRootfs accepted a corrupt layer")
	}
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), digest) {
		t.Fatalf("want an unavailable error naming layer %s, got %v", digest, err)
	}
	for _, m := range mentions {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not say %q", err, m)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		t.Errorf("left behind after a failed build: %s", e.Name())
	}
}

func TestBuildRootfsRefusesTamperedLayer(t *testing.T) {
	requireTool(t, "mkfs.ext4")
	requireTool(t, "debugfs")
	noise := make([]byte, 128<<10)
	rand.Read(noise) // incompressible, so the blobs are as large as this
	good := layer(t, entry{name: "etc/", typ: tar.TypeDir}, entry{name: "etc/blob", body: string(noise[:64<<10]), mode: 0o644})
	_, digest := compressed(t, good)
	// Bytes after the end marker (GNU tar pads to 10 KiB records; here noise, so the blob is
	// at least as long as the real one) keep the library's reader short of the end, where its
	// own digest check would have fired.
	var evil bytes.Buffer
	zw := gzip.NewWriter(&evil)
	zw.Write(layerTar(t,
		entry{name: "root/.ssh/", typ: tar.TypeDir, mode: 0o700},
		entry{name: "root/.ssh/authorized_keys", body: "ssh-ed25519 AAAA attacker\n", mode: 0o600}))
	zw.Write(noise)
	zw.Close()
	ref := pushImage(t, []v1.Layer{good}, nil, func(d string, body []byte) []byte {
		if d == digest {
			return evil.Bytes()
		}
		return body
	})
	buildMustFail(t, ref, digest)
}

func TestBuildRootfsRefusesTruncatedLayer(t *testing.T) {
	requireTool(t, "mkfs.ext4")
	requireTool(t, "debugfs")
	l := layer(t, entry{name: "etc/", typ: tar.TypeDir}, entry{name: "etc/hostname", body: strings.Repeat("x", 9000), mode: 0o644})
	_, digest := compressed(t, l)
	ref := pushImage(t, []v1.Layer{l}, nil, func(d string, body []byte) []byte {
		if d == digest {
			return body[:len(body)/2]
		}
		return body
	})
	buildMustFail(t, ref, digest)
}

// A blob matching its manifest digest whose content does not match the config's diff id is
// refused too: the two are checked independently.
func TestBuildRootfsRefusesWrongDiffID(t *testing.T) {
	requireTool(t, "mkfs.ext4")
	requireTool(t, "debugfs")
	l := layer(t, entry{name: "etc/hostname", body: "x\n", mode: 0o644})
	_, digest := compressed(t, l)
	ref := pushImage(t, []v1.Layer{l}, func(c *v1.ConfigFile) {
		c.RootFS.DiffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	}, nil)
	buildMustFail(t, ref, digest)
}

type failingReader struct{ err error }

func (f failingReader) Read([]byte) (int, error) { return 0, f.err }

// mutate.Extract ends its stream with a clean end marker even when a layer failed and
// reports the failure after it; unpack must read that far.
func TestUnpackReadsErrorAfterEndMarker(t *testing.T) {
	boom := errors.New("layer went away")
	stream := io.MultiReader(bytes.NewReader(layerTar(t, entry{name: "a", body: "x", mode: 0o644})), failingReader{boom})
	if _, err := unpack(context.Background(), stream, t.TempDir()); !errors.Is(err, boom) {
		t.Fatalf("want the stream's error, got %v", err)
	}
}

// A manifest claiming layers larger than any rootfs the store accepts is refused before a
// byte of them is downloaded (the tag's manifest is not covered by any digest).
func TestBuildRootfsRefusesOversizedLayerClaim(t *testing.T) {
	requireTool(t, "mkfs.ext4")
	requireTool(t, "debugfs")
	l := layer(t, entry{name: "etc/hostname", body: "x\n", mode: 0o644})
	_, digest := compressed(t, l)
	ref := pushImage(t, []v1.Layer{l}, nil, func(what string, body []byte) []byte {
		if what != "v1" {
			return body
		}
		var m v1.Manifest
		if err := json.Unmarshal(body, &m); err != nil {
			t.Errorf("decoding the test manifest: %v", err)
			return body
		}
		m.Layers[0].Size = 200 << 30
		b, _ := json.Marshal(m)
		return b
	})
	buildMustFail(t, ref, digest, "add up to more than")
}

// The config (which lists the diff ids the layers are checked against) must match the
// digest the manifest gives it.
func TestBuildRootfsRefusesTamperedConfig(t *testing.T) {
	requireTool(t, "mkfs.ext4")
	requireTool(t, "debugfs")
	l := layer(t, entry{name: "etc/hostname", body: "x\n", mode: 0o644})
	var cfgDigest string
	ref := pushImage(t, []v1.Layer{l}, nil, func(what string, body []byte) []byte {
		if what == "v1" {
			var m v1.Manifest
			if err := json.Unmarshal(body, &m); err == nil {
				cfgDigest = m.Config.Digest.String()
			}
		}
		if what == cfgDigest {
			return bytes.Replace(body, []byte(`"amd64"`), []byte(`"AMD64"`), 1)
		}
		return body
	})
	dir := t.TempDir()
	err := BuildRootfs(context.Background(), ref, Options{Out: filepath.Join(dir, "rootfs.ext4")})
	if !errors.Is(err, errdefs.ErrUnavailable) || cfgDigest == "" || !strings.Contains(err.Error(), cfgDigest) {
		t.Fatalf("want an unavailable error naming config %s, got %v", cfgDigest, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}
