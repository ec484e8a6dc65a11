package agentclient

import (
	"banger/internal/agentproto"
	"banger/internal/model"
	"fmt"
)

// peerBootStages keeps what a host may store of the stages a guest reported: at most
// model.MaxBootStages valid ones (model.ValidBootStage). It returns how many it dropped
// and why the first was. The agent is not trusted, so nothing it sends reaches the store
// unchecked; the reply line it came in is already bounded (maxHeaderLine).
func peerBootStages(in []model.BootStage) (out []model.BootStage, dropped int, first string) {
	for _, s := range in {
		err := model.ValidBootStage(s)
		if err == nil && len(out) == model.MaxBootStages {
			err = fmt.Errorf("more than %d stages", model.MaxBootStages)
		}
		if err != nil {
			if dropped == 0 {
				first = agentproto.PeerText(err.Error(), 120)
			}
			dropped++
			continue
		}
		out = append(out, s)
	}
	return out, dropped, first
}
