package imagecat

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"banger/internal/model"
)

// Progress stages.
const (
	StageResolve  = "resolve"  // fetching a bundle manifest
	StageDownload = "download" // bytes of the bundle's files (Total is the bundle size)
	StageBuild    = "build"    // a local builder is running (Total is 0: size unknown)
	StageImport   = "import"   // the verified bundle is being published
	StageDone     = "done"
)

// Progress is one progress report. During StageDownload, Done and Total count bytes over
// the whole bundle and File names the file being transferred.
type Progress struct {
	Stage string `json:"stage"`
	File  string `json:"file,omitempty"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
	// Unit names what Done counts when there is no Total ("lines" of a kernel compile).
	Unit string `json:"unit,omitempty"`
}

// String renders the report for logs and operation status: "download rootfs.ext4: 42%
// (21.0 MiB / 50.0 MiB)" or "build tiny".
func (p Progress) String() string {
	s := p.Stage
	if p.File != "" {
		s += " " + p.File
	}
	switch {
	case p.Total > 0:
		s += fmt.Sprintf(": %d%% (%s / %s)", p.Done*100/p.Total, model.FormatSize(p.Done), model.FormatSize(p.Total))
	case p.Unit != "" && p.Done > 0:
		s += fmt.Sprintf(": %d %s", p.Done, p.Unit)
	}
	return s
}

// progressInterval bounds callback frequency: progress travels over RPC to CLIs, and a
// fast local download would otherwise produce one event per read.
const progressInterval = 100 * time.Millisecond

// throttle wraps fn so it fires at most every progressInterval, except that stage or file
// changes and completion (Done == Total) are always delivered, so the last report a caller
// sees is accurate. It is safe for concurrent use.
func throttle(fn func(Progress)) func(Progress) {
	if fn == nil {
		return func(Progress) {}
	}
	var (
		mu   sync.Mutex
		last time.Time
		prev Progress
	)
	return func(p Progress) {
		mu.Lock()
		now := time.Now()
		changed := p.Stage != prev.Stage || p.File != prev.File
		final := p.Total > 0 && p.Done == p.Total && prev.Done != p.Done
		if !changed && !final && now.Sub(last) < progressInterval {
			mu.Unlock()
			return
		}
		last, prev = now, p
		mu.Unlock()
		fn(p)
	}
}

// NewProgressPrinter renders progress for the CLI: on a terminal a byte progress bar with
// rate and ETA per stage; otherwise one plain line at each 10% step and at completion, so
// logs of non-interactive runs stay short.
func NewProgressPrinter(w io.Writer, isTTY bool) func(Progress) {
	if isTTY {
		return (&barPrinter{w: w}).report
	}
	return (&linePrinter{w: w}).report
}

type barPrinter struct {
	mu    sync.Mutex
	w     io.Writer
	bar   *progressbar.ProgressBar
	stage string
	total int64
}

func (b *barPrinter) report(p Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bar == nil || p.Stage != b.stage || p.Total != b.total {
		b.finish()
		b.stage, b.total = p.Stage, p.Total
		if p.Stage == StageDone {
			return
		}
		max := p.Total
		if max <= 0 {
			max = -1 // spinner: the builders cannot tell how far along they are
		}
		opts := []progressbar.Option{
			progressbar.OptionSetWriter(b.w),
			progressbar.OptionSetDescription(p.Stage),
			progressbar.OptionShowBytes(p.Total > 0),
			progressbar.OptionShowTotalBytes(p.Total > 0),
			progressbar.OptionSetPredictTime(p.Total > 0),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(65 * time.Millisecond),
			progressbar.OptionSpinnerType(14),
			progressbar.OptionUseIECUnits(true),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(b.w) }),
		}
		if p.Total > 0 {
			opts = append(opts, progressbar.OptionShowCount())
		}
		b.bar = progressbar.NewOptions64(max, opts...)
	}
	if p.File != "" {
		b.bar.Describe(p.Stage + " " + p.File)
	}
	if p.Total > 0 {
		_ = b.bar.Set64(p.Done)
	} else {
		_ = b.bar.Add64(1) // advance the spinner
	}
}

func (b *barPrinter) finish() {
	if b.bar == nil {
		return
	}
	if b.total > 0 {
		_ = b.bar.Finish()
	} else {
		_ = b.bar.Exit()
		fmt.Fprintln(b.w)
	}
	b.bar = nil
}

type linePrinter struct {
	mu      sync.Mutex
	w       io.Writer
	stage   string
	lastPct int64
}

func (l *linePrinter) report(p Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.Stage != l.stage {
		l.stage, l.lastPct = p.Stage, -1
		if p.Total <= 0 {
			fmt.Fprintf(l.w, "%s\n", p.Stage)
			return
		}
	}
	if p.Total <= 0 {
		return
	}
	pct := p.Done * 100 / p.Total
	step := pct / 10 * 10
	if step <= l.lastPct && p.Done != p.Total {
		return
	}
	if p.Done == p.Total && l.lastPct == 100 {
		return
	}
	l.lastPct = step
	if p.Done == p.Total {
		l.lastPct = 100
	}
	fmt.Fprintf(l.w, "%s: %3d%% (%s / %s)\n", p.Stage, pct,
		model.FormatSize(p.Done), model.FormatSize(p.Total))
}
