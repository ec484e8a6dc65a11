package e2e

import (
	"strings"
	"testing"
)

// A guest restored from a snapshot answers its first identity request: the snapshot was
// taken with the guest's agent session ended (the host hung up and waited for the guest to
// close its port), so the restored agent waits for a fresh session instead of holding the
// snapshot's, which the host's new one collided with ("yamux: duplicate stream declared")
// until a 5 s attempt ran out. Before the fix most restores here needed that retry.
func TestRestoreNeedsNoIdentityRetry(t *testing.T) {
	x := need(t)
	// Snapshotted right after its boot, as a pool's builder is: the host's ready ping is
	// the last thing its agent session saw.
	x.createVM(t, "rs-src")
	offset := fileSize(x.daemonLog.Name())
	x.mustCLI(t, "snapshot", "create", "-q", "rs-src", "--name", "rs-snap")
	t.Cleanup(func() { x.cli(nil, "snapshot", "rm", "--force", "rs-snap") })
	for _, name := range []string{"rs-r1", "rs-r2", "rs-r3"} {
		x.createVM(t, name, "--from-snapshot", "rs-snap")
		if got := x.mustCLI(t, "vm", "exec", name, "--", "hostname"); got != name+"\n" {
			t.Fatalf("restored %s says it is %q", name, got)
		}
	}
	for _, name := range []string{"rs-r1", "rs-r2", "rs-r3"} {
		// The agent logs to the console what its yamux session refused.
		if logs := x.mustCLI(t, "vm", "logs", name); strings.Contains(logs, "duplicate stream") {
			t.Errorf("restored %s's agent met its old session:\n%s", name, grepLines(logs, "yamux"))
		}
	}
	if n := x.identityRetries(offset); n != 0 {
		t.Fatalf("%d identity retries for 3 restores:\n%s", n, grepLines(readFileFrom(x.daemonLog.Name(), offset), "identity attempt failed"))
	}
	if !strings.Contains(readFileFrom(x.daemonLog.Name(), offset), `"stage":"agent_detached"`) {
		t.Fatal("the snapshot did not detach the source's agent")
	}
	// The source's own session comes back after the snapshot.
	x.mustCLI(t, "vm", "exec", "rs-src", "--", "true")
}

func grepLines(s, needle string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, needle) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
