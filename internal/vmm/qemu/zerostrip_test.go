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
func (b *streamBuilder) str(s string)  { b.WriteByte(byte(len(s))); b.WriteString(s) }

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
	b.be32(vmFileMagic)
	b.be32(vmVersion)
	b.WriteByte(secConfiguration)
	b.be32(7)
	b.WriteString("microvm")
	b.WriteByte(secSubsection)
	b.str("configuration/target-page-bits")
	b.be32(1)
	b.be32(12)
	// START: the block list.
	b.WriteByte(secStart)
	b.be32(2)
	b.str("ram")
	b.be32(0)
	b.be32(4)
	b.be64(6*targetPage | ramFlagMemSize)
	b.str("pc.ram")
	b.be64(4 * targetPage)
	b.str("rom")
	b.be64(2 * targetPage)
	b.eos(2)
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
			b.be32(vmFileMagic)
			b.be32(vmVersion)
			b.WriteByte(secConfiguration)
			b.be32(2)
			b.WriteString("pc")
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
