package daemon

import (
	"sync"
	"time"

	"banger/internal/model"
)

// bootClock collects the host's stages of one boot, in milliseconds since the start began.
// OnLaunch runs on the driver's goroutine, hence the lock.
type bootClock struct {
	mu     sync.Mutex
	start  time.Time
	stages []model.BootStage
}

func newBootClock() *bootClock { return &bootClock{start: time.Now()} }

func (c *bootClock) mark(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.stages) < model.MaxBootStages {
		c.stages = append(c.stages, model.BootStage{Name: name, MS: time.Since(c.start).Milliseconds()})
	}
}

// timeline is the boot's record with the guest's stages (already checked by guest.Ping).
func (c *bootClock) timeline(guest []model.BootStage) *model.BootTimeline {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &model.BootTimeline{
		At:    c.start.UTC().Truncate(time.Millisecond),
		Host:  append([]model.BootStage(nil), c.stages...),
		Guest: append([]model.BootStage(nil), guest...),
	}
}
