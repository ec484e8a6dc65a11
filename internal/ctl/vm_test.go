package ctl

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"banger/internal/model"
)

func TestPrintVMShowsBootTimeline(t *testing.T) {
	vm := model.VM{ID: "0123456789abcdef", Name: "web", State: model.VMRunning, CreatedAt: time.Now(),
		Boot: &model.BootTimeline{
			At:    time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC),
			Host:  []model.BootStage{{Name: "vmm_launched", MS: 15}, {Name: "agent_ready", MS: 2780}},
			Guest: []model.BootStage{{Name: "init", MS: 860}, {Name: "modules_loaded", MS: 1030}},
		}}
	var out bytes.Buffer
	printVM(&out, vm)
	for _, want := range []string{
		"Last boot:", "2780ms to agent_ready",
		"host (since start):", "vmm_launched 15ms, agent_ready 2780ms (+2765ms)",
		"guest (uptime):", "init 860ms, modules_loaded 1030ms (+170ms)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("vm show lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	vm.Boot = nil
	printVM(&out, vm)
	if strings.Contains(out.String(), "boot") {
		t.Errorf("a VM never booted shows a timeline:\n%s", out.String())
	}
}
