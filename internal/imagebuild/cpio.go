package imagebuild

import (
	"bufio"
	"fmt"
	"io"
)

// newcWriter writes a cpio archive in the "newc" (070701) format, the one the kernel's
// initramfs unpacker reads. Every entry gets a fresh inode number and mtime 0, so the same
// inputs always give the same bytes (and the same image digest).
type newcWriter struct {
	w   *bufio.Writer
	ino uint32
	off int64
}

// Mode type bits as cpio stores them (the st_mode values of Linux).
const (
	cpioDir = 0o040000
	cpioReg = 0o100000
	cpioChr = 0o020000
)

func newNewcWriter(w io.Writer) *newcWriter {
	return &newcWriter{w: bufio.NewWriterSize(w, 256<<10), ino: 1}
}

type cpioEntry struct {
	name      string // relative, no leading slash
	mode      uint32 // type bits | permissions
	size      int64
	rdevMajor uint32
	rdevMinor uint32
	nlink     uint32
	uid, gid  uint32
}

func (c *newcWriter) header(e cpioEntry) error {
	if e.size > 0xffffffff {
		return fmt.Errorf("cpio: %s is too large for newc (%d bytes)", e.name, e.size)
	}
	nlink := e.nlink
	if nlink == 0 {
		nlink = 1
		if e.mode&0o170000 == cpioDir {
			nlink = 2
		}
	}
	ino := c.ino
	c.ino++
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, e.mode, e.uid, e.gid, nlink, 0, uint32(e.size), 0, 0, e.rdevMajor, e.rdevMinor, len(e.name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(e.name), 0)); err != nil {
		return err
	}
	return c.pad()
}

func (c *newcWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.off += int64(n)
	return err
}

// pad aligns the stream to 4 bytes, as newc requires after names and file data.
func (c *newcWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func (c *newcWriter) dir(name string, perm uint32) error {
	return c.header(cpioEntry{name: name, mode: cpioDir | perm})
}

func (c *newcWriter) file(name string, perm uint32, data []byte) error {
	if err := c.header(cpioEntry{name: name, mode: cpioReg | perm, size: int64(len(data))}); err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.pad()
}

// fileFrom copies size bytes from r as a regular file.
func (c *newcWriter) fileFrom(name string, perm uint32, size int64, r io.Reader) error {
	if err := c.header(cpioEntry{name: name, mode: cpioReg | perm, size: size}); err != nil {
		return err
	}
	n, err := io.CopyN(c.w, r, size)
	c.off += n
	if err != nil {
		return fmt.Errorf("cpio: copying %s: %w", name, err)
	}
	return c.pad()
}

func (c *newcWriter) charDev(name string, perm, major, minor uint32) error {
	return c.header(cpioEntry{name: name, mode: cpioChr | perm, rdevMajor: major, rdevMinor: minor})
}

// close writes the trailer entry and flushes.
func (c *newcWriter) close() error {
	if err := c.header(cpioEntry{name: "TRAILER!!!", nlink: 1}); err != nil {
		return err
	}
	return c.w.Flush()
}
