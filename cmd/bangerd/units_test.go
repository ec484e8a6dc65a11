package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"banger/internal/config"
)

// The systemd units and config shipped in contrib/systemd are the ones docs/networking.md
// shows, and the config loads: documentation and files cannot drift apart.
func TestShippedUnitsMatchDocs(t *testing.T) {
	doc, err := os.ReadFile("../../docs/networking.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)`/etc/systemd/system/([\\w.-]+)` — [^\\n]*\\n\\n```ini\\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(blocks) != 2 {
		t.Fatalf("found %d unit blocks in docs/networking.md, want 2", len(blocks))
	}
	for _, b := range blocks {
		file, err := os.ReadFile("../../contrib/systemd/" + b[1])
		if err != nil {
			t.Fatal(err)
		}
		_, body, _ := strings.Cut(string(file), "\n") // the header comment line
		if body != b[2] {
			t.Errorf("contrib/systemd/%s differs from docs/networking.md", b[1])
		}
		if !strings.Contains(body, "ExecStart=/usr/local/bin/bangerd") {
			t.Errorf("%s does not run bangerd", b[1])
		}
	}
	cfg, err := config.Load("../../contrib/systemd/config.yaml")
	if err != nil {
		t.Fatalf("contrib/systemd/config.yaml: %v", err)
	}
	if err := cfg.Finish(); err != nil || !cfg.Network.Enabled {
		t.Fatalf("contrib/systemd/config.yaml: %v (networking enabled: %v)", err, cfg.Network.Enabled)
	}
}
