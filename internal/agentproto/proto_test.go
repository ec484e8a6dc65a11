package agentproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"banger/internal/errdefs"
)

func TestFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	fw := &FrameWriter{W: &buf}
	if err := fw.Write(FrameStdout, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := fw.WriteInt32(FrameExit, 143); err != nil {
		t.Fatal(err)
	}
	want := []byte{FrameStdout, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', FrameExit, 0, 0, 0, 4, 0, 0, 0, 143}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("wire bytes %v, want %v", buf.Bytes(), want)
	}
	kind, p, err := ReadFrame(&buf)
	if err != nil || kind != FrameStdout || string(p) != "hello" {
		t.Fatalf("first frame %d %q %v", kind, p, err)
	}
	kind, p, err = ReadFrame(&buf)
	if v, perr := PayloadInt32(kind, p); err != nil || perr != nil || kind != FrameExit || v != 143 {
		t.Fatalf("second frame %d %v %v", kind, p, err)
	}
	if _, _, err := ReadFrame(&buf); !errors.Is(err, io.EOF) {
		t.Errorf("after the last frame: %v, want io.EOF", err)
	}
}

func TestReadFrameRejectsHugeAndTruncated(t *testing.T) {
	hdr := make([]byte, 5)
	hdr[0] = FrameData
	binary.BigEndian.PutUint32(hdr[1:], MaxFramePayload+1)
	if _, _, err := ReadFrame(bytes.NewReader(hdr)); err == nil || !strings.Contains(err.Error(), "claims") {
		t.Errorf("oversized frame: %v", err)
	}
	binary.BigEndian.PutUint32(hdr[1:], 10)
	if _, _, err := ReadFrame(bytes.NewReader(append(hdr, 1, 2))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated payload: %v, want ErrUnexpectedEOF", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader(hdr[:3])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated header: %v, want ErrUnexpectedEOF", err)
	}
}

func TestJSONLineLimit(t *testing.T) {
	long := append(bytes.Repeat([]byte{'a'}, MaxHeaderLine+10), '\n')
	var r Request
	if err := ReadJSONLine(bufio.NewReader(bytes.NewReader(long)), &r); err == nil {
		t.Error("accepted a header line over the limit")
	}
}

func TestRemoteErrorKinds(t *testing.T) {
	for _, kind := range []error{errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrPermissionDenied, errdefs.ErrUnavailable, errdefs.ErrConflict} {
		sent := errdefs.New(kind, "something")
		back := ErrorReply(sent).Err()
		if !errors.Is(back, kind) || back.Error() != "something" {
			t.Errorf("%v: came back as %v (%q)", kind, back, back.Error())
		}
	}
}
