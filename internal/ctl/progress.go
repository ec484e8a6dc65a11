package ctl

import (
	"fmt"
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
	)
	return func(s api.Stage, update bool) {
		if g.JSON {
			return
		}
		if s.Total <= 0 {
			if !update {
				lines(s, false)
			}
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
