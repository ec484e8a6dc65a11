package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"banger/internal/model"
)

// TestBootTimelineRecordedAtEachBoot: a boot stores the host's and the guest's stages,
// `vm show` prints them and `--json` carries them; the next boot replaces them.
func TestBootTimelineRecordedAtEachBoot(t *testing.T) {
	x := need(t)
	x.mustCLI(t, "vm", "create", "-q", "--name", "e2e-timeline")
	defer x.cli(nil, "vm", "rm", "-f", "e2e-timeline")

	show := func() model.BootTimeline {
		t.Helper()
		var vm model.VM
		if err := json.Unmarshal([]byte(x.mustCLI(t, "vm", "show", "--json", "e2e-timeline")), &vm); err != nil {
			t.Fatal(err)
		}
		if vm.Boot == nil {
			t.Fatal("vm show --json has no boot timeline")
		}
		return *vm.Boot
	}
	names := func(st []model.BootStage) []string {
		var n []string
		for i, s := range st {
			n = append(n, s.Name)
			if i > 0 && s.MS < st[i-1].MS {
				t.Errorf("stage %s (%d ms) before its predecessor %s (%d ms)", s.Name, s.MS, st[i-1].Name, st[i-1].MS)
			}
		}
		return n
	}
	first := show()
	wantGuest := []string{model.GuestStageInit, model.GuestStageModules, model.GuestStageRoot, model.GuestStageNetwork, model.GuestStageAgentServing}
	// Modules, disks and network overlap, so only the first and last stage have a fixed
	// place; each stage appears once.
	got := names(first.Guest)
	sorted := slices.Clone(got)
	slices.Sort(sorted)
	want := slices.Clone(wantGuest)
	slices.Sort(want)
	if !slices.Equal(sorted, want) || got[0] != model.GuestStageInit || got[len(got)-1] != model.GuestStageAgentServing {
		t.Errorf("guest stages %v, want %v with init first and agent_serving last", got, wantGuest)
	}
	if got := names(first.Host); !slices.Equal(got, []string{"network_ready", "vmm_launched", "vmm_running", "agent_ready"}) {
		t.Errorf("host stages %v", got)
	}
	if first.Guest[0].MS <= 0 {
		t.Errorf("the kernel handed over at uptime %d ms", first.Guest[0].MS)
	}
	human := x.mustCLI(t, "vm", "show", "e2e-timeline")
	for _, want := range []string{"Last boot:", "to agent_ready", "guest (uptime):", "init ", "agent_serving "} {
		if !strings.Contains(human, want) {
			t.Errorf("vm show lacks %q:\n%s", want, human)
		}
	}

	x.mustCLI(t, "vm", "stop", "e2e-timeline")
	if again := show(); !again.At.Equal(first.At) {
		t.Errorf("a stop changed the timeline: %v -> %v", first.At, again.At)
	}
	x.mustCLI(t, "vm", "start", "e2e-timeline")
	if second := show(); !second.At.After(first.At) || len(second.Guest) != len(wantGuest) {
		t.Errorf("the second boot did not replace the timeline: %+v then %+v", first, second)
	}
}
