package ctl

import (
	"fmt"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"banger/internal/api"
)

// progressPrinter shows stages as lines and download stages (those with a byte total) as a
// progress bar with bytes, rate and ETA on a terminal, or as plain lines every 10%
// otherwise, so logs of non-interactive runs stay readable.
func progressPrinter(g *Globals, isTTY bool) func(api.Stage, bool) {
	lines := stagePrinter(g, g.JSON)
	var (
		bar      *progressbar.ProgressBar
		barStage string
		lastPct  = -1
		counting countPrinter
	)
	return func(s api.Stage, update bool) {
		if g.JSON {
			return
		}
		if s.Total <= 0 {
			if !update {
				counting = countPrinter{}
				lines(s, false)
				return
			}
			counting.update(g, s)
			return
		}
		if isTTY {
			if bar == nil || barStage != s.Name {
				bar = progressbar.NewOptions64(s.Total,
					progressbar.OptionSetWriter(g.Stderr),
					progressbar.OptionShowBytes(true),
					progressbar.OptionSetDescription(s.Name),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionShowCount(),
					progressbar.OptionOnCompletion(func() { fmt.Fprintln(g.Stderr) }),
				)
				barStage = s.Name
			}
			bar.Set64(s.Done)
			return
		}
		pct := int(s.Done * 100 / s.Total)
		if pct/10 != lastPct/10 || s.Done == s.Total {
			lastPct = pct
			fmt.Fprintf(g.Stderr, "%s: %d%% (%s of %s)\n", s.Name, pct, humanBytes(s.Done), humanBytes(s.Total))
		}
	}
}

// countPrinter shows the updates of a stage without a total (a kernel compile's steps and
// line count, "build tiny-microvm: kernel compile: 5200 lines"): a line when the step
// changes and at most every countEvery within a step, so a long compile shows it is alive
// without printing thousands of lines.
type countPrinter struct {
	step    string
	printed time.Time
}

const countEvery = 15 * time.Second

func (c *countPrinter) update(g *Globals, s api.Stage) {
	if s.Message == "" {
		return
	}
	step := s.Message
	if i := strings.LastIndex(step, ": "); i > 0 && s.Done > 0 {
		step = step[:i]
	}
	if step == c.step && time.Since(c.printed) < countEvery {
		return
	}
	c.step, c.printed = step, time.Now()
	fmt.Fprintf(g.Stderr, "  … %s\n", s.Message)
}
