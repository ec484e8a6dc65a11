package agentclient

import (
	"banger/internal/agentproto"
	"banger/internal/model"
	"io"
	"strings"
	"testing"
)

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
	s := hostileGuestReplying(t, agentproto.Reply{OK: true, Hostname: "web", Protocol: agentproto.ProtocolVersion, Boot: sent}, func(io.ReadWriteCloser) {})
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
