package qemu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// QEMU's migration stream (migration/savevm.c and ram.c of QEMU 7.2, stream version 3):
// a header, the configuration, then sections; the guest's RAM is one iterative section
// ("ram") whose records are a be64 of page address | flags, the block's name unless the
// record continues the previous record's block, and a byte (a page filled with it) or a
// page. Device state follows in full sections.
const (
	vmFileMagic = 0x5145564d
	vmVersion   = 3

	secEOF           = 0x00
	secStart         = 0x01
	secPart          = 0x02
	secEnd           = 0x03
	secFull          = 0x04
	secSubsection    = 0x05
	secConfiguration = 0x07
	secFooter        = 0x7e

	ramFlagZero     = 0x02
	ramFlagMemSize  = 0x04
	ramFlagPage     = 0x08
	ramFlagEOS      = 0x10
	ramFlagContinue = 0x20
	ramFlagMask     = 0xfff // below the 4 KiB target page

	targetPage = 4096
)

// errNotFilterable says the stream has something stripZeroPages does not parse; from
// there it is copied unchanged.
var errNotFilterable = errors.New("not filterable")

// stripZeroPages copies the migration stream src to dst leaving out the records of RAM
// pages that are all zero. The receiving QEMU's RAM starts zero (anonymous memory, or a
// sparse file), so the guest sees the same memory, but QEMU no longer touches every page
// of it: loading a zero record reads the page to see whether it must be cleared, a page
// fault on each of the guest's pages (131072 for 512 MiB, nearly all of them zero in a
// small guest), and for a RAM file a page of page cache each. Whatever it does not
// recognise (another QEMU's format, an iterative section besides RAM) it copies as is.
// It returns how many records it left out (0 with a stream it could not filter).
func stripZeroPages(dst io.Writer, src io.Reader) (int, error) {
	r := bufio.NewReaderSize(src, 1<<20)
	w := bufio.NewWriterSize(dst, 1<<20)
	s := &zeroStripper{r: r, w: w}
	err := s.run()
	if err == nil || errors.Is(err, errNotFilterable) {
		_, err = io.Copy(w, r)
	}
	if err != nil {
		return s.dropped, fmt.Errorf("filtering the migration stream: %w", err)
	}
	return s.dropped, w.Flush()
}

type zeroStripper struct {
	r *bufio.Reader
	w *bufio.Writer
	// ramID is the RAM section's id; curBlock the block of the last record read and
	// sentBlock that of the last record written (a continue record written must name the
	// same block as the record written before it).
	ramID               uint32
	curBlock, sentBlock string
	sentAny             bool
	dropped             int

	// split, when set, takes the pages of one RAM block out of the stream (see
	// splitShared).
	split *splitTarget
}

// splitTarget is where splitShared puts the shared RAM block's pages.
type splitTarget struct {
	block string
	ram   io.WriterAt
	size  uint64
	pages int
}

// run filters up to the first section that is not RAM (nil: device state follows),
// copying what it read.
func (s *zeroStripper) run() error {
	var hdr [8]byte
	if err := s.copyN(hdr[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(hdr[:4]) != vmFileMagic || binary.BigEndian.Uint32(hdr[4:]) != vmVersion {
		return errNotFilterable
	}
	if b, err := s.r.Peek(1); err == nil && b[0] == secConfiguration {
		if err := s.configuration(); err != nil {
			return err
		}
	}
	for {
		b, err := s.r.Peek(1)
		if err != nil {
			return err
		}
		switch b[0] {
		case secStart:
			if err := s.ramStart(); err != nil {
				return err
			}
		case secPart, secEnd:
			head, err := s.r.Peek(5)
			if err != nil {
				return err
			}
			if binary.BigEndian.Uint32(head[1:]) != s.ramID || s.ramID == 0 {
				return errNotFilterable
			}
			if err := s.copyN(make([]byte, 5)); err != nil {
				return err
			}
			if err := s.ramRecords(); err != nil {
				return err
			}
		case secFull, secEOF:
			// Device state or the end: nothing more to filter.
			return nil
		default:
			return errNotFilterable
		}
	}
}

// configuration copies the configuration section: the machine's name and the
// subsections QEMU 7.2 may send (target page bits, validated capabilities).
func (s *zeroStripper) configuration() error {
	if err := s.copyN(make([]byte, 1)); err != nil {
		return err
	}
	n, err := s.copyBE32()
	if err != nil {
		return err
	}
	if n > 256 {
		return errNotFilterable
	}
	if err := s.copyN(make([]byte, n)); err != nil {
		return err
	}
	for {
		b, err := s.r.Peek(1)
		if err != nil {
			return err
		}
		if b[0] != secSubsection {
			if s.split != nil {
				s.writeIgnoreSharedCapability()
			}
			return nil
		}
		name, err := s.peekSubsectionName()
		if err != nil {
			return err
		}
		switch name {
		case "configuration/target-page-bits":
			// kind, name, version, then a be32
			if err := s.copyN(make([]byte, 2+len(name)+4+4)); err != nil {
				return err
			}
		case "configuration/capabilities":
			if s.split != nil {
				return errNotFilterable // the source had validated capabilities of its own
			}
			if err := s.copyN(make([]byte, 2+len(name)+4)); err != nil {
				return err
			}
			count, err := s.copyBE32()
			if err != nil {
				return err
			}
			if count > 64 {
				return errNotFilterable
			}
			for range count {
				l, err := s.copyByte()
				if err != nil {
					return err
				}
				if err := s.copyN(make([]byte, l)); err != nil {
					return err
				}
			}
		default:
			return errNotFilterable
		}
	}
}

func (s *zeroStripper) peekSubsectionName() (string, error) {
	b, err := s.r.Peek(2)
	if err != nil {
		return "", err
	}
	b, err = s.r.Peek(2 + int(b[1]))
	if err != nil {
		return "", err
	}
	return string(b[2:]), nil
}

// writeIgnoreSharedCapability adds the configuration subsection listing x-ignore-shared,
// which a QEMU loading with that capability checks the stream was saved with.
func (s *zeroStripper) writeIgnoreSharedCapability() {
	const name = "configuration/capabilities"
	s.w.WriteByte(secSubsection)
	s.w.WriteByte(byte(len(name)))
	s.w.WriteString(name)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], 1) // version
	s.w.Write(b[:])
	binary.BigEndian.PutUint32(b[:], 1) // one capability
	s.w.Write(b[:])
	s.w.WriteByte(byte(len("x-ignore-shared")))
	s.w.WriteString("x-ignore-shared")
}

// ramStart copies the RAM section's start: its header and the list of RAM blocks.
func (s *zeroStripper) ramStart() error {
	head, err := s.r.Peek(6)
	if err != nil {
		return err
	}
	idLen := int(head[5])
	head, err = s.r.Peek(6 + idLen + 8)
	if err != nil {
		return err
	}
	if string(head[6:6+idLen]) != "ram" || s.ramID != 0 {
		return errNotFilterable
	}
	s.ramID = binary.BigEndian.Uint32(head[1:5])
	if err := s.copyN(make([]byte, len(head))); err != nil {
		return err
	}
	return s.ramRecords()
}

// ramRecords filters a RAM section's records up to its end (EOS) and footer.
func (s *zeroStripper) ramRecords() error {
	for {
		var a [8]byte
		if _, err := io.ReadFull(s.r, a[:]); err != nil {
			return err
		}
		v := binary.BigEndian.Uint64(a[:])
		flags, addr := v&ramFlagMask, v&^ramFlagMask
		switch flags &^ ramFlagContinue {
		case ramFlagMemSize:
			if _, err := s.w.Write(a[:]); err != nil {
				return err
			}
			if err := s.blockList(addr); err != nil {
				return err
			}
		case ramFlagZero, ramFlagPage:
			if flags&ramFlagContinue == 0 {
				name, err := s.readName()
				if err != nil {
					return err
				}
				s.curBlock = name
			} else if s.curBlock == "" {
				return fmt.Errorf("a RAM record continues no block")
			}
			var fill byte
			var page []byte
			if flags&^ramFlagContinue == ramFlagZero {
				b, err := s.r.ReadByte()
				if err != nil {
					return err
				}
				if fill = b; fill == 0 {
					s.dropped++
					continue // the receiver's page is zero already
				}
			} else {
				page = make([]byte, targetPage)
				if _, err := io.ReadFull(s.r, page); err != nil {
					return err
				}
			}
			if s.split != nil && s.curBlock == s.split.block {
				if err := s.split.put(addr, fill, page); err != nil {
					return err
				}
				continue
			}
			if err := s.writeRecord(addr, flags&^ramFlagContinue, fill, page); err != nil {
				return err
			}
		case ramFlagEOS:
			if _, err := s.w.Write(a[:]); err != nil {
				return err
			}
			if b, err := s.r.Peek(1); err == nil && b[0] == secFooter {
				return s.copyN(make([]byte, 5))
			}
			return nil
		default:
			// Compressed or XBZRLE pages, RDMA hooks: not from a plain migration to a
			// file. The record is consumed, so nothing after it can be copied as is.
			return fmt.Errorf("unexpected RAM record flags %#x", flags)
		}
	}
}

// put writes one page of the shared block into its file.
func (t *splitTarget) put(addr uint64, fill byte, page []byte) error {
	if addr+targetPage > t.size {
		return fmt.Errorf("a page at %#x beyond RAM block %s of %d bytes", addr, t.block, t.size)
	}
	if page == nil {
		page = bytes.Repeat([]byte{fill}, targetPage)
	}
	t.pages++
	_, err := t.ram.WriteAt(page, int64(addr))
	return err
}

// writeRecord writes one page record, naming its block unless it continues the block of
// the record written before it.
func (s *zeroStripper) writeRecord(addr, kind uint64, fill byte, page []byte) error {
	var a [8]byte
	cont := s.sentAny && s.sentBlock == s.curBlock
	v := addr | kind
	if cont {
		v |= ramFlagContinue
	}
	binary.BigEndian.PutUint64(a[:], v)
	s.w.Write(a[:])
	if !cont {
		s.w.WriteByte(byte(len(s.curBlock)))
		s.w.WriteString(s.curBlock)
		s.sentBlock, s.sentAny = s.curBlock, true
	}
	if page != nil {
		_, err := s.w.Write(page)
		return err
	}
	return s.w.WriteByte(fill)
}

// blockList copies the RAM blocks' list: name and length of each, total bytes in all.
func (s *zeroStripper) blockList(total uint64) error {
	for total > 0 {
		l, err := s.copyByte()
		if err != nil {
			return err
		}
		if err := s.copyN(make([]byte, l)); err != nil {
			return err
		}
		var b [8]byte
		if err := s.copyN(b[:]); err != nil {
			return err
		}
		n := binary.BigEndian.Uint64(b[:])
		if n == 0 || n > total {
			return fmt.Errorf("a RAM block of %d bytes in a list of %d", n, total)
		}
		total -= n
		if s.split != nil {
			// Saved with x-ignore-shared, each block carries the guest-physical address
			// of its memory region, checked for the shared block: a machine's RAM
			// backend region sits at 0 (its placement is by aliases).
			var addr [8]byte
			s.w.Write(addr[:])
		}
	}
	return nil
}

func (s *zeroStripper) readName() (string, error) {
	l, err := s.r.ReadByte()
	if err != nil {
		return "", err
	}
	b := make([]byte, l)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// copyN reads len(b) bytes into b and writes them.
func (s *zeroStripper) copyN(b []byte) error {
	if _, err := io.ReadFull(s.r, b); err != nil {
		return err
	}
	_, err := s.w.Write(b)
	return err
}

func (s *zeroStripper) copyByte() (byte, error) {
	var b [1]byte
	err := s.copyN(b[:])
	return b[0], err
}

func (s *zeroStripper) copyBE32() (uint32, error) {
	var b [4]byte
	err := s.copyN(b[:])
	return binary.BigEndian.Uint32(b[:]), err
}

// splitShared turns a full migration stream into a snapshot's shared form without a QEMU:
// the pages of RAM block block (size bytes, the guest's RAM) go into ram at their
// offsets, where restores map them (a sparse file: zero pages are left out), and dst gets
// the rest as QEMU saves it with x-ignore-shared (the capability listed in the
// configuration, each block's address in the block list, no page of the shared block).
// Anything it does not parse is an error: the caller then has a QEMU make the form.
func splitShared(dst io.Writer, ram io.WriterAt, src io.Reader, block string, size uint64) (int, error) {
	r := bufio.NewReaderSize(src, 1<<20)
	w := bufio.NewWriterSize(dst, 1<<20)
	t := &splitTarget{block: block, ram: ram, size: size}
	s := &zeroStripper{r: r, w: w, split: t}
	if err := s.run(); err != nil {
		return 0, fmt.Errorf("splitting the migration stream: %w", err)
	}
	if t.pages == 0 {
		return 0, fmt.Errorf("splitting the migration stream: no page of RAM block %s", block)
	}
	if _, err := io.Copy(w, r); err != nil {
		return 0, fmt.Errorf("splitting the migration stream: %w", err)
	}
	return t.pages, w.Flush()
}
