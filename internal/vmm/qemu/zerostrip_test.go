package qemu

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
)

// streamBuilder writes a QEMU 7.2 migration stream of the shape a paused guest's
// migration to a file has.
type streamBuilder struct{ bytes.Buffer }

func (b *streamBuilder) be32(v uint32) { binary.Write(&b.Buffer, binary.BigEndian, v) }
func (b *streamBuilder) be64(v uint64) { binary.Write(&b.Buffer, binary.BigEndian, v) }

// header starts a stream as QEMU does: magic, version, and the configuration section
// naming machine.
func (b *streamBuilder) header(machine string) {
	b.be32(vmFileMagic)
	b.be32(vmVersion)
	b.WriteByte(secConfiguration)
	b.be32(uint32(len(machine)))
	b.WriteString(machine)
}

func (b *streamBuilder) str(s string) { b.WriteByte(byte(len(s))); b.WriteString(s) }

func (b *streamBuilder) record(addr, kind uint64, block string, cont bool, fill byte, page []byte) {
	v := addr | kind
	if cont {
		v |= ramFlagContinue
	}
	b.be64(v)
	if !cont {
		b.str(block)
	}
	if kind == ramFlagPage {
		b.Write(page)
	} else {
		b.WriteByte(fill)
	}
}

// ramBlock is one entry of the block list: a RAM block's name and its size in pages.
type ramBlock struct {
	name  string
	pages uint64
}

// blockList writes the RAM section's START (section 2): the total size, then each block.
func (b *streamBuilder) blockList(blocks ...ramBlock) {
	var total uint64
	for _, bl := range blocks {
		total += bl.pages
	}
	b.WriteByte(secStart)
	b.be32(2)
	b.str("ram")
	b.be32(0)
	b.be32(4)
	b.be64(total*targetPage | ramFlagMemSize)
	for _, bl := range blocks {
		b.str(bl.name)
		b.be64(bl.pages * targetPage)
	}
	b.eos(2)
}

func (b *streamBuilder) eos(section uint32) {
	b.be64(ramFlagEOS)
	b.WriteByte(secFooter)
	b.be32(section)
}

// loadRAM reads the RAM records of a stream as QEMU's loader does, into memory that
// starts zero, and returns it with the bytes after the RAM sections.
func loadRAM(t *testing.T, stream []byte) (map[string][]byte, []byte) {
	t.Helper()
	mem := map[string][]byte{"pc.ram": make([]byte, 4*targetPage), "rom": make([]byte, 2*targetPage)}
	r := bytes.NewReader(stream)
	next := func(n int) []byte {
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		return b
	}
	next(8)
	if next(1)[0] != secConfiguration {
		t.Fatal("no configuration")
	}
	next(int(binary.BigEndian.Uint32(next(4))))
	sub := next(2)
	next(int(sub[1]) - 0 + 4 + 4)
	block := ""
	for {
		kind := next(1)[0]
		if kind == secFull {
			rest, _ := io.ReadAll(r)
			return mem, append([]byte{kind}, rest...)
		}
		next(4)
		if kind == secStart {
			next(int(next(1)[0]) + 8)
		}
		for {
			v := binary.BigEndian.Uint64(next(8))
			flags, addr := v&ramFlagMask, v&^ramFlagMask
			switch flags &^ ramFlagContinue {
			case ramFlagMemSize:
				for total := addr; total > 0; {
					next(int(next(1)[0]))
					total -= binary.BigEndian.Uint64(next(8))
				}
				continue
			case ramFlagEOS:
				next(5)
			default:
				if flags&ramFlagContinue == 0 {
					block = string(next(int(next(1)[0])))
				}
				dst := mem[block][addr : addr+targetPage]
				if flags&^ramFlagContinue == ramFlagZero {
					fill := next(1)[0]
					for i := range dst {
						dst[i] = fill
					}
				} else {
					copy(dst, next(targetPage))
				}
				continue
			}
			break
		}
	}
}

func TestStripZeroPagesKeepsTheGuestsMemory(t *testing.T) {
	page := bytes.Repeat([]byte{7}, targetPage)
	var b streamBuilder
	b.header("microvm")
	b.WriteByte(secSubsection)
	b.str("configuration/target-page-bits")
	b.be32(1)
	b.be32(12)
	// START: the block list.
	b.blockList(ramBlock{"pc.ram", 4}, ramBlock{"rom", 2})
	// PART: pages of both blocks, zero ones among them.
	b.WriteByte(secPart)
	b.be32(2)
	b.record(0, ramFlagZero, "pc.ram", false, 0, nil)        // dropped, and it named the block
	b.record(targetPage, ramFlagPage, "", true, 0, page)     // continues pc.ram
	b.record(2*targetPage, ramFlagZero, "", true, 0xaa, nil) // a filled page stays
	b.record(3*targetPage, ramFlagZero, "", true, 0, nil)    // dropped
	b.record(0, ramFlagZero, "rom", false, 0, nil)           // dropped, and it named rom
	b.record(targetPage, ramFlagPage, "", true, 0, page)     // continues rom
	b.eos(2)
	b.WriteByte(secEnd)
	b.be32(2)
	b.record(3*targetPage, ramFlagPage, "pc.ram", false, 0, page)
	b.eos(2)
	tail := []byte{secFull, 0, 0, 0, 3, 3, 'c', 'p', 'u', 1, 2, 3, secEOF}
	b.Write(tail)
	in := b.Bytes()

	var out bytes.Buffer
	n, err := stripZeroPages(&out, bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d zero pages left out, want 3", n)
	}
	if out.Len() >= len(in) {
		t.Errorf("filtered stream %d bytes, not smaller than %d", out.Len(), len(in))
	}
	wantMem, wantTail := loadRAM(t, in)
	gotMem, gotTail := loadRAM(t, out.Bytes())
	for block := range wantMem {
		if !bytes.Equal(gotMem[block], wantMem[block]) {
			t.Errorf("block %s differs after filtering", block)
		}
	}
	if !bytes.Equal(gotTail, wantTail) || !bytes.Equal(gotTail, tail) {
		t.Errorf("device state changed: %x, want %x", gotTail, tail)
	}
}

func TestStripZeroPagesCopiesWhatItDoesNotKnow(t *testing.T) {
	for name, in := range map[string][]byte{
		"another format": []byte("not a qemu stream at all, just bytes"),
		"an unknown subsection": func() []byte {
			var b streamBuilder
			b.header("pc")
			b.WriteByte(secSubsection)
			b.str("configuration/something-new")
			b.be32(1)
			b.Write(bytes.Repeat([]byte{0}, 64))
			return b.Bytes()
		}(),
	} {
		var out bytes.Buffer
		n, err := stripZeroPages(&out, bytes.NewReader(in))
		if err != nil || n != 0 || !bytes.Equal(out.Bytes(), in) {
			t.Errorf("%s: %d left out, err %v, copied %v; want it unchanged", name, n, err, bytes.Equal(out.Bytes(), in))
		}
	}
}

// memWriterAt is a RAM file in memory.
type memWriterAt []byte

func (m memWriterAt) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }

// TestSplitSharedMakesTheIgnoreSharedForm: the shared block's pages land in the RAM file
// at their offsets (zero ones left out), and the device stream is what QEMU saves with
// x-ignore-shared: the capability in the configuration, an address after each block of
// the list, the other blocks' pages, the device state unchanged.
func TestSplitSharedMakesTheIgnoreSharedForm(t *testing.T) {
	page := bytes.Repeat([]byte{7}, targetPage)
	var b streamBuilder
	b.header("microvm")
	b.blockList(ramBlock{"microvm.ram", 2}, ramBlock{"rom", 1})
	b.WriteByte(secEnd)
	b.be32(2)
	b.record(0, ramFlagZero, "microvm.ram", false, 0, nil)
	b.record(targetPage, ramFlagPage, "", true, 0, page)
	b.record(0, ramFlagPage, "rom", false, 0, page)
	b.eos(2)
	tail := []byte{secFull, 0, 0, 0, 3, 3, 'c', 'p', 'u', 9, secEOF}
	b.Write(tail)

	ram := make(memWriterAt, 2*targetPage)
	var dev bytes.Buffer
	n, err := splitShared(&dev, ram, bytes.NewReader(b.Bytes()), "microvm.ram", 2*targetPage)
	if err != nil || n != 1 {
		t.Fatalf("splitShared = %d, %v; want the one data page", n, err)
	}
	if !bytes.Equal(ram[targetPage:], page) || !bytes.Equal(ram[:targetPage], make([]byte, targetPage)) {
		t.Error("the RAM file does not hold the shared block's pages at their offsets")
	}

	var want streamBuilder
	want.be32(vmFileMagic)
	want.be32(vmVersion)
	want.WriteByte(secConfiguration)
	want.be32(7)
	want.WriteString("microvm")
	want.WriteByte(secSubsection)
	want.str("configuration/capabilities")
	want.be32(1)
	want.be32(1)
	want.str("x-ignore-shared")
	want.WriteByte(secStart)
	want.be32(2)
	want.str("ram")
	want.be32(0)
	want.be32(4)
	want.be64(3*targetPage | ramFlagMemSize)
	want.str("microvm.ram")
	want.be64(2 * targetPage)
	want.be64(0)
	want.str("rom")
	want.be64(targetPage)
	want.be64(0)
	want.eos(2)
	want.WriteByte(secEnd)
	want.be32(2)
	want.record(0, ramFlagPage, "rom", false, 0, page)
	want.eos(2)
	want.Write(tail)
	if !bytes.Equal(dev.Bytes(), want.Bytes()) {
		t.Errorf("device stream\n%x\nwant\n%x", dev.Bytes(), want.Bytes())
	}

	// A page beyond the RAM block is refused, not written past the file.
	if _, err := splitShared(io.Discard, make(memWriterAt, targetPage), bytes.NewReader(b.Bytes()), "microvm.ram", targetPage); err == nil {
		t.Error("a page beyond the RAM block's size was accepted")
	}
	// A stream it cannot parse is an error (a QEMU template takes over).
	if _, err := splitShared(io.Discard, ram, bytes.NewReader([]byte("garbage, not a stream")), "microvm.ram", 2*targetPage); err == nil {
		t.Error("an unparsable stream was split")
	}
}
