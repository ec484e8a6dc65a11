package guest

import (
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"banger/internal/model"
)

// bootStages records the guest's boot stages as guest uptime in milliseconds; ping
// reports them so the host can store the boot's timeline (model.BootTimeline). When init
// hands PID 1 to the rootfs's init, the stages so far travel to the agent process in
// BootStagesEnv.
type bootStages struct {
	mu     sync.Mutex
	stages []model.BootStage
}

// BootStagesEnv carries the stages init recorded to the agent it starts beside another
// init: "name=ms,name=ms".
const BootStagesEnv = "BANGER_BOOT_STAGES"

// mark records name at the current uptime. It reads CLOCK_BOOTTIME (what /proc/uptime
// shows) directly: while init assembles the root, /proc is moved away.
func (b *bootStages) mark(name string) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return
	}
	b.add(model.BootStage{Name: name, MS: ts.Nano() / 1e6})
}

func (b *bootStages) add(s model.BootStage) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.stages) < model.MaxBootStages {
		b.stages = append(b.stages, s)
	}
}

func (b *bootStages) list() []model.BootStage {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]model.BootStage(nil), b.stages...)
}

// env encodes the stages for BootStagesEnv.
func (b *bootStages) env() string {
	var parts []string
	for _, s := range b.list() {
		parts = append(parts, s.Name+"="+strconv.FormatInt(s.MS, 10))
	}
	return strings.Join(parts, ",")
}

// bootStagesFromEnv decodes BootStagesEnv, skipping what does not parse.
func bootStagesFromEnv() *bootStages {
	b := &bootStages{}
	for _, part := range strings.Split(os.Getenv(BootStagesEnv), ",") {
		name, v, ok := strings.Cut(part, "=")
		ms, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			continue
		}
		if s := (model.BootStage{Name: name, MS: ms}); model.ValidBootStage(s) == nil {
			b.add(s)
		}
	}
	return b
}
