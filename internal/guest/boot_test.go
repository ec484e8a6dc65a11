package guest

import (
	"io"
	"reflect"
	"strings"
	"testing"

	"banger/internal/model"
)

// TestPingReportsBootStages: the agent's recorded stages reach the host in order.
func TestPingReportsBootStages(t *testing.T) {
	a := NewAgent(testLogger(), nil)
	a.boot = &bootStages{}
	a.boot.add(model.BootStage{Name: model.GuestStageInit, MS: 860})
	a.boot.mark(model.GuestStageAgentServing)
	s := startAgent(t, a)
	info, err := Ping(testCtx(t), openStream(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Boot) != 2 || info.Boot[0] != (model.BootStage{Name: "init", MS: 860}) ||
		info.Boot[1].Name != model.GuestStageAgentServing || info.Boot[1].MS <= 0 || info.BootDropped != 0 {
		t.Errorf("ping boot = %+v (dropped %d)", info.Boot, info.BootDropped)
	}
}

// TestHostileBootStagesAreChecked: names that are not stage names, times out of range and
// stages beyond the cap never reach the caller.
func TestHostileBootStagesAreChecked(t *testing.T) {
	var sent []model.BootStage
	sent = append(sent,
		model.BootStage{Name: "init", MS: 800},
		model.BootStage{Name: "\x1b[2Jowned", MS: 1},
		model.BootStage{Name: strings.Repeat("a", 33), MS: 1},
		model.BootStage{Name: "../etc", MS: 1},
		model.BootStage{Name: "negative", MS: -5},
		model.BootStage{Name: "forever", MS: model.MaxBootStageMS + 1},
	)
	for i := 0; i < 1000; i++ {
		sent = append(sent, model.BootStage{Name: "flood", MS: int64(i)})
	}
	s := hostileGuestReplying(t, Reply{OK: true, Hostname: "web", Protocol: ProtocolVersion, Boot: sent}, func(io.ReadWriteCloser) {})
	info, err := Ping(testCtx(t), openStream(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Boot) != model.MaxBootStages {
		t.Fatalf("kept %d stages, want the cap %d", len(info.Boot), model.MaxBootStages)
	}
	if info.Boot[0] != (model.BootStage{Name: "init", MS: 800}) || info.Boot[1].Name != "flood" {
		t.Errorf("kept %+v", info.Boot[:2])
	}
	for _, st := range info.Boot {
		if err := model.ValidBootStage(st); err != nil {
			t.Errorf("invalid stage kept: %v", err)
		}
	}
	if want := len(sent) - model.MaxBootStages; info.BootDropped != want {
		t.Errorf("dropped %d, want %d", info.BootDropped, want)
	}
	if strings.ContainsAny(info.BootDroppedWhy, "\x1b") || len(info.BootDroppedWhy) > 130 {
		t.Errorf("drop reason not made safe: %q", info.BootDroppedWhy)
	}
}

// TestBootStagesEnvRoundTrip: what init hands the agent it starts beside another init.
func TestBootStagesEnvRoundTrip(t *testing.T) {
	b := &bootStages{}
	b.add(model.BootStage{Name: "init", MS: 860})
	b.add(model.BootStage{Name: "root_mounted", MS: 1090})
	t.Setenv(BootStagesEnv, b.env()+",bad entry,x=notanumber,Evil=1")
	got := bootStagesFromEnv().list()
	if !reflect.DeepEqual(got, b.list()) {
		t.Errorf("decoded %+v, want %+v", got, b.list())
	}
}
