package agentclient

import (
	"banger/internal/agentproto"
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
)

// fakeLister answers one list request with the given lines as the listing.
func fakeLister(t *testing.T, lines ...string) net.Conn {
	t.Helper()
	host, g := net.Pipe()
	go func() {
		defer g.Close()
		br := bufio.NewReader(g)
		if _, err := br.ReadString('\n'); err != nil {
			return
		}
		g.Write([]byte("{\"ok\":true}\n"))
		fw := &agentproto.FrameWriter{W: g}
		for _, l := range lines {
			fw.Write(agentproto.FrameData, []byte(l+"\n"))
		}
		fw.Write(agentproto.FrameDataEOF, nil)
	}()
	return host
}

// The host refuses listings whose paths escape or repeat, and overlong lines.
func TestListRefusesHostileEntries(t *testing.T) {
	for name, line := range map[string]string{
		"dotdot":    `{"p":"../etc/passwd","m":33188,"s":1,"mt":1,"ct":1,"i":1}`,
		"absolute":  `{"p":"/etc/passwd","m":33188,"s":1,"mt":1,"ct":1,"i":1}`,
		"unclean":   `{"p":"a//b","m":33188,"s":1,"mt":1,"ct":1,"i":1}`,
		"inner ..":  `{"p":"a/../../b","m":33188,"s":1,"mt":1,"ct":1,"i":1}`,
		"long line": `{"p":"` + strings.Repeat("a", maxListLine) + `"}`,
		"garbage":   `not json`,
	} {
		if _, _, err := List(context.Background(), fakeLister(t, line), "", "/work", 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	dup := `{"p":"a","m":33188,"s":1,"mt":1,"ct":1,"i":1}`
	if _, _, err := List(context.Background(), fakeLister(t, dup, dup), "", "/work", 0); err == nil {
		t.Error("duplicate paths accepted")
	}
	got, _, err := List(context.Background(), fakeLister(t, `{"p":".","m":16877,"s":0,"mt":1,"ct":1,"i":1}`, dup), "", "/work", 0)
	if err != nil || len(got) != 2 || got[1].Path != "a" {
		t.Fatalf("a good listing: %v %v", got, err)
	}
}
