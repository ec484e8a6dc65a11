package workspace

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Upload wire format (workspace.upload, after the stream is accepted): the CLI sends one
// size frame, data frames for the image's allocated extents only (the image is sparse, so
// holes are never sent) and an end frame; the daemon answers with one JSON line.
//
//	size  1, uint64 apparent image size
//	data  2, uint64 offset, uint32 length (at most maxChunk), length bytes
//	end   3
const (
	frameSize byte = 1
	frameData byte = 2
	frameEnd  byte = 3
	maxChunk       = 1 << 20
)

// SendImage streams the image at path to w in the upload format.
func SendImage(ctx context.Context, w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening workspace image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat workspace image: %w", err)
	}
	size := fi.Size()
	bw := bufio.NewWriterSize(w, 256<<10)
	var hdr [13]byte
	hdr[0] = frameSize
	binary.BigEndian.PutUint64(hdr[1:], uint64(size))
	if _, err := bw.Write(hdr[:9]); err != nil {
		return err
	}
	buf := make([]byte, maxChunk)
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("finding data in workspace image: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("finding holes in workspace image: %w", err)
		}
		for p := data; p < hole; {
			n := int(min(int64(maxChunk), hole-p))
			if _, err := f.ReadAt(buf[:n], p); err != nil {
				return fmt.Errorf("reading workspace image: %w", err)
			}
			hdr[0] = frameData
			binary.BigEndian.PutUint64(hdr[1:], uint64(p))
			binary.BigEndian.PutUint32(hdr[9:], uint32(n))
			if _, err := bw.Write(hdr[:]); err != nil {
				return err
			}
			if _, err := bw.Write(buf[:n]); err != nil {
				return err
			}
			p += int64(n)
		}
		off = hole
	}
	if err := bw.WriteByte(frameEnd); err != nil {
		return err
	}
	return bw.Flush()
}

// ReceiveLimits bound what ReceiveImage accepts.
type ReceiveLimits struct {
	MaxSize int64 // apparent image size
	MaxData int64 // bytes of data frames in total
}

// ReceiveImage reads an upload from r into f (truncated to the announced size; holes stay
// holes) and returns the bytes of data written. The sender is a local client, not
// trusted to stay within limits: sizes, offsets and totals are checked before writing.
func ReceiveImage(r io.Reader, f *os.File, lim ReceiveLimits) (int64, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	var hdr [12]byte
	kind, err := br.ReadByte()
	if err != nil {
		return 0, fmt.Errorf("reading the image size: %w", err)
	}
	if kind != frameSize {
		return 0, fmt.Errorf("expected a size frame, got kind %d", kind)
	}
	if _, err := io.ReadFull(br, hdr[:8]); err != nil {
		return 0, fmt.Errorf("reading the image size: %w", err)
	}
	size := int64(binary.BigEndian.Uint64(hdr[:8]))
	if size <= 0 || size > lim.MaxSize {
		return 0, fmt.Errorf("image size %d is outside 1..%d", size, lim.MaxSize)
	}
	if err := f.Truncate(size); err != nil {
		return 0, fmt.Errorf("sizing the workspace image: %w", err)
	}
	buf := make([]byte, maxChunk)
	var total int64
	for {
		kind, err := br.ReadByte()
		if err != nil {
			return total, fmt.Errorf("reading the workspace image: %w", err)
		}
		switch kind {
		case frameEnd:
			return total, nil
		case frameData:
		default:
			return total, fmt.Errorf("unknown frame kind %d", kind)
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return total, fmt.Errorf("reading the workspace image: %w", err)
		}
		off := int64(binary.BigEndian.Uint64(hdr[:8]))
		n := int64(binary.BigEndian.Uint32(hdr[8:]))
		if n == 0 || n > maxChunk || off < 0 || off > size-n {
			return total, fmt.Errorf("data frame at %d of %d bytes is outside the %d-byte image", off, n, size)
		}
		if total += n; total > lim.MaxData {
			return total, fmt.Errorf("image data exceeds %d bytes", lim.MaxData)
		}
		if _, err := io.ReadFull(br, buf[:n]); err != nil {
			return total, fmt.Errorf("reading the workspace image: %w", err)
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return total, fmt.Errorf("writing the workspace image: %w", err)
		}
	}
}
