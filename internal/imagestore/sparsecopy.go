package imagestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

const (
	copyChunk  = 1 << 20
	sparseUnit = 4096
)

// WriteSparse copies r into w and returns the byte count and sha256 of everything read.
// Runs of all-zero 4 KiB blocks become holes (w seeks over them), so a 53 MB vmlinux or a
// mostly-empty ext4 image costs only its data on disk; the final Truncate gives the file
// its full length even when it ends in a hole. w must start empty at offset 0.
func WriteSparse(ctx context.Context, w *os.File, r io.Reader) (int64, string, error) {
	h := sha256.New()
	buf := make([]byte, copyChunk)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return off, "", err
		}
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			chunk := buf[:n]
			h.Write(chunk)
			if err := writeChunkSparse(w, chunk, off); err != nil {
				return off, "", err
			}
			off += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return off, "", rerr
		}
	}
	if err := w.Truncate(off); err != nil {
		return off, "", fmt.Errorf("setting length of %s: %w", w.Name(), err)
	}
	return off, hex.EncodeToString(h.Sum(nil)), nil
}

// writeChunkSparse writes the non-zero runs of chunk at base using positional writes.
func writeChunkSparse(w *os.File, chunk []byte, base int64) error {
	start := -1 // start of the current run of data blocks, -1 when in a hole
	for i := 0; i < len(chunk); i += sparseUnit {
		end := min(i+sparseUnit, len(chunk))
		if isZero(chunk[i:end]) {
			if start >= 0 {
				if _, err := w.WriteAt(chunk[start:i], base+int64(start)); err != nil {
					return err
				}
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		if _, err := w.WriteAt(chunk[start:], base+int64(start)); err != nil {
			return err
		}
	}
	return nil
}

var zeroBlock [sparseUnit]byte

// isZero compares against a zero block because bytes.Equal is vectorised; b is at most one
// block long.
func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

// HashFile returns the size and sha256 of a file.
func HashFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", fmt.Errorf("hashing %s: %w", path, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}
