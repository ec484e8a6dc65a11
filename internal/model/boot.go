package model

import (
	"fmt"
	"time"
)

// BootTimeline is when each stage of a VM's latest boot was reached: the host's stages in
// milliseconds since the start began, the guest's in milliseconds of guest uptime (so
// "init" is how long the kernel took to hand over to PID 1). `banger vm show` prints it so
// a user can see why a boot was slow. The guest's half comes from the agent, which is not
// trusted: it passes ValidBootStage and MaxBootStages before it is stored.
type BootTimeline struct {
	At    time.Time   `json:"at"` // when the start began
	Host  []BootStage `json:"host"`
	Guest []BootStage `json:"guest,omitempty"`
}

// BootStage is one named moment of a boot.
type BootStage struct {
	Name string `json:"name"`
	MS   int64  `json:"ms"`
}

// Guest boot stages the agent reports, in order.
const (
	GuestStageInit         = "init"           // the kernel handed over to PID 1
	GuestStageModules      = "modules_loaded" // the initramfs's kernel modules are loaded
	GuestStageNoModules    = "modules_none"   // instead of modules_loaded: the kernel has no module support, nothing was loaded
	GuestStageRoot         = "root_mounted"   // overlay root and work disk are mounted
	GuestStageNetwork      = "network_up"     // lo and eth0 are configured
	GuestStageAgentServing = "agent_serving"  // the agent serves its channel
)

// MaxBootStages bounds each half of a timeline; MaxBootStageMS bounds a stage's time.
const (
	MaxBootStages  = 16
	MaxBootStageMS = int64(24 * time.Hour / time.Millisecond)
)

// ValidBootStage checks a stage's name (lower-case letters, digits and underscores, at most
// 32, starting with a letter) and time (0 to MaxBootStageMS).
func ValidBootStage(s BootStage) error {
	if !isBootStageName(s.Name) {
		return fmt.Errorf("boot stage name %q: must be 1-32 of a-z, 0-9 and _, starting with a letter", s.Name)
	}
	if s.MS < 0 || s.MS > MaxBootStageMS {
		return fmt.Errorf("boot stage %s: %d ms is out of range", s.Name, s.MS)
	}
	return nil
}
