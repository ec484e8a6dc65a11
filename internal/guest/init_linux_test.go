package guest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplaceFileReplacesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "stub-resolv.conf")
	if err := os.WriteFile(target, []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "etc", "resolv.conf")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := replaceFile(link, []byte("nameserver 172.30.0.1\n")); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(link)
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("%s is %v (%v), want a regular file", link, fi.Mode(), err)
	}
	if b, _ := os.ReadFile(target); string(b) != "nameserver 127.0.0.53\n" {
		t.Errorf("the symlink's target was written through: %q", b)
	}
	if b, _ := os.ReadFile(link); string(b) != "nameserver 172.30.0.1\n" {
		t.Errorf("content %q", b)
	}
}

func TestConsoleLoggerPrefixesLines(t *testing.T) {
	var buf bytes.Buffer
	log := ConsoleLogger(&buf)
	log.Info("root ready", "op_id", "op-abcdefgh")
	log.Warn("second")
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines: %q", len(lines), buf.String())
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "banger-agent: ") {
			t.Errorf("line %q lacks the prefix", l)
		}
	}
	if !strings.Contains(lines[0], `msg="root ready" op_id=op-abcdefgh`) {
		t.Errorf("line %q", lines[0])
	}
}
