package guest

import (
	"reflect"
	"testing"

	"banger/internal/agentclient"
	"banger/internal/model"
)

// TestPingReportsBootStages: the agent's recorded stages reach the host in order.
func TestPingReportsBootStages(t *testing.T) {
	a := NewAgent(testLogger(), nil)
	a.boot = &bootStages{}
	a.boot.add(model.BootStage{Name: model.GuestStageInit, MS: 860})
	a.boot.mark(model.GuestStageAgentServing)
	s := startAgent(t, a)
	info, err := agentclient.Ping(testCtx(t), openStream(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Boot) != 2 || info.Boot[0] != (model.BootStage{Name: "init", MS: 860}) ||
		info.Boot[1].Name != model.GuestStageAgentServing || info.Boot[1].MS <= 0 || info.BootDropped != 0 {
		t.Errorf("ping boot = %+v (dropped %d)", info.Boot, info.BootDropped)
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
