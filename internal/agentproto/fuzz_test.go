package agentproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func frame(kind byte, payload []byte) []byte {
	b := make([]byte, 5+len(payload))
	b[0] = kind
	binary.BigEndian.PutUint32(b[1:5], uint32(len(payload)))
	copy(b[5:], payload)
	return b
}

// FuzzFrames feeds arbitrary bytes to what the host decodes from a guest: the reply line,
// frames and the data stream of an archive. Decoding must never panic nor return a payload
// over the cap, and a decoded frame must re-encode to exactly the bytes it came from.
func FuzzFrames(f *testing.F) {
	seeds := [][]byte{
		append([]byte(`{"ok":true}`+"\n"), frame(FrameStdout, []byte("hi"))...),
		append([]byte(`{"ok":false,"error":"x","code":"not_found"}`+"\n"), frame(FrameExit, []byte{0, 0, 0, 1})...),
		append([]byte("{\"ok\":true}\n"), append(frame(FrameData, []byte("abc")), frame(FrameDataEOF, nil)...)...),
		append([]byte("{}\n"), frame(FrameError, []byte("boom"))...),
		append([]byte("{}\n"), 8, 0xff, 0xff, 0xff, 0xff),          // claims 4 GiB
		append([]byte("{}\n"), 8, 0x00, 0x10, 0x00, 0x01, 1, 2, 3), // one byte over the cap
		append([]byte("{}\n"), frame(FrameData, make([]byte, 10))[:9]...),
		append([]byte("{}\n"), frame(77, []byte("?"))...),
		[]byte(strings.Repeat("{", 5000)),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		var r Reply
		if err := ReadJSONLine(br, &r); err != nil {
			return
		}
		_ = r.Err()
		rest, _ := io.ReadAll(br)
		// Frame by frame.
		rd := bytes.NewReader(rest)
		for {
			before := len(rest) - rd.Len()
			kind, payload, err := ReadFrame(rd)
			if err != nil {
				if errors.Is(err, io.EOF) && before != len(rest) {
					t.Fatalf("clean EOF in the middle of the input at %d/%d", before, len(rest))
				}
				break
			}
			if len(payload) > MaxFramePayload {
				t.Fatalf("payload of %d bytes", len(payload))
			}
			consumed := rest[before : len(rest)-rd.Len()]
			if !bytes.Equal(frame(kind, payload), consumed) {
				t.Fatalf("frame %d does not re-encode to its bytes", kind)
			}
			if kind == FrameExit {
				_, _ = PayloadInt32(kind, payload)
			}
		}
		// As an archive stream: it ends in EOF only after data_eof, with exactly the
		// data frames' bytes.
		dr := &DataReader{R: bytes.NewReader(rest)}
		got, err := io.ReadAll(dr)
		if err == nil && !dr.done {
			t.Fatal("data stream ended without data_eof")
		}
		if len(got) > len(rest) {
			t.Fatalf("read %d bytes out of %d", len(got), len(rest))
		}
	})
}
