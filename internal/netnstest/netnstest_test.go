package netnstest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	echo := func(raw json.RawMessage) int {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		ns, _ := currentNetns()
		fmt.Printf("%s %s", s, ns)
		return 0
	}
	Main(m, map[string]Mode{
		"isolated": {Run: echo},
		"host":     {HostNetns: true, Run: echo},
	})
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// The safety property everything else rests on: an isolated mode started in the parent's
// namespace does nothing and says why.
func TestIsolatedModeRefusesParentNamespace(t *testing.T) {
	out, err := Command(t, "", "", "isolated", "hello").CombinedOutput()
	if code := exitCode(err); code != 3 || !strings.Contains(string(out), "refusing to run isolated") || strings.Contains(string(out), "hello") {
		t.Fatalf("isolated mode in the parent's namespace: exit %d, output %q; want exit 3 and a refusal", code, out)
	}
}

func TestHostModeRunsInParentNamespace(t *testing.T) {
	host, err := currentNetns()
	if err != nil {
		t.Fatal(err)
	}
	out, err := Command(t, "", "", "host", "hello").Output()
	if err != nil || string(out) != "hello "+host {
		t.Fatalf("host mode: %v, output %q, want %q", err, out, "hello "+host)
	}
}

func TestUnknownMode(t *testing.T) {
	out, err := Command(t, "", "", "nope", nil).CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), `unknown child mode "nope"`) {
		t.Fatalf("unknown mode: exit %d, output %q", code, out)
	}
}

func TestIsolatedModeRunsInNewNamespace(t *testing.T) {
	Require(t)
	host, err := currentNetns()
	if err != nil {
		t.Fatal(err)
	}
	ns := New(t, "self")
	if !strings.HasPrefix(ns, NamePrefix+"self-") {
		t.Fatalf("namespace name %q lacks the %sself- prefix", ns, NamePrefix)
	}
	if lo := Run(t, "ip", "-n", ns, "-o", "link", "show", "lo"); !strings.Contains(lo, "UP") {
		t.Errorf("loopback in %s is not up: %s", ns, lo)
	}
	out, err := Command(t, "", ns, "isolated", "hi").Output()
	if err != nil {
		t.Fatalf("isolated mode in %s: %v", ns, err)
	}
	got, ok := strings.CutPrefix(string(out), "hi ")
	if !ok || got == host || !strings.HasPrefix(got, "net:[") {
		t.Fatalf("isolated mode output %q: want hi and a namespace other than the parent's %s", out, host)
	}
}
