package imagecat

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"banger/internal/errdefs"
	"banger/internal/imagestore"
	"banger/internal/model"
)

// Puller downloads URL-sourced bundles into verified bundle directories.
//
// Files stream into CacheDir/partial/<sha256>.part, hashed on the way. An interrupted
// transfer resumes with an HTTP Range request (the kept prefix is re-hashed first); a
// server that answers 200 instead of 206 makes it restart from zero. Network failures
// mid-stream are retried a bounded number of times with backoff, each time resuming.
type Puller struct {
	CacheDir string // holds partial/ (resumable downloads) and, by default, bundles/
	// OutDir is where bundle directories are created; empty: CacheDir/bundles.
	OutDir string
	Client *http.Client // nil: http.DefaultClient
	Log    *slog.Logger // nil: slog.Default()

	// Retries is how many times a failed transfer of one file is resumed (0: 5).
	Retries int
	// Backoff is the first retry delay, doubled each retry up to 5s (0: 500ms).
	Backoff time.Duration
}

// digestLocks serialise work on one partial file across all pullers of the process: two
// images may share a file (the same kernel), and two writers must never share a .part.
var (
	locksMu sync.Mutex
	locks   = map[string]chan struct{}{}
)

// DigestMismatchError reports a downloaded file that does not match its catalog entry.
type DigestMismatchError struct {
	File     string
	Expected string
	Actual   string
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("digest mismatch for %s: expected sha256 %s, got %s", e.File, e.Expected, e.Actual)
}

// SizeMismatchError reports a download longer or shorter than its catalog entry.
type SizeMismatchError struct {
	File     string
	Expected int64
	Actual   int64
}

func (e *SizeMismatchError) Error() string {
	if e.Actual > e.Expected {
		// The transfer stops one byte past the expected size, so the real size is unknown.
		return fmt.Sprintf("size mismatch for %s: expected %d bytes, the server sent more", e.File, e.Expected)
	}
	return fmt.Sprintf("size mismatch for %s: expected %d bytes, got %d", e.File, e.Expected, e.Actual)
}

// permanentError marks failures that a retry cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return &permanentError{err} }

func (p *Puller) client() *http.Client {
	if p.Client != nil {
		return p.Client
	}
	return http.DefaultClient
}

func (p *Puller) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}

// Pull downloads and verifies a URL-sourced entry into a fresh directory under
// CacheDir/bundles and returns it: manifest.json plus the entry's files, every file checked
// against its size and sha256. The caller imports it (imagestore.ImportBundle) and then
// removes it. progress may be nil; it is called at most about ten times a second.
func (p *Puller) Pull(ctx context.Context, e Entry, progress func(Progress)) (string, error) {
	if e.IsBuilder() {
		return "", errdefs.InvalidArgument("source", e.SourceString(), "builder entries are built, not pulled")
	}
	if e.Source.URL == "" {
		return "", errdefs.InvalidArgument("source.url", "", "entry "+e.Name+" has no bundle URL")
	}
	if len(e.Source.Files) == 0 {
		return p.PullURL(ctx, e.Source.URL, e.Name, progress)
	}
	if err := validateFiles("source.files", e.Source.Files); err != nil {
		return "", err
	}
	if e.Arch != hostArch() {
		return "", errdefs.InvalidArgument("arch", e.Arch, "image is for another architecture than this host ("+hostArch()+")")
	}
	report := throttle(progress)
	log := p.log().With("image", e.Name, "url", e.Source.URL)

	partialDir := filepath.Join(p.CacheDir, "partial")
	bundlesDir := p.OutDir
	if bundlesDir == "" {
		bundlesDir = filepath.Join(p.CacheDir, "bundles")
	}
	for _, d := range []string{partialDir, bundlesDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", fmt.Errorf("creating cache dir: %w", err)
		}
	}

	var total, done int64
	for _, f := range e.Source.Files {
		total += f.Size
	}
	dir, err := os.MkdirTemp(bundlesDir, e.Name+"-")
	if err != nil {
		return "", fmt.Errorf("creating bundle dir: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()

	start := time.Now()
	for _, f := range e.Source.Files {
		fileURL := e.Source.URL + "/" + url.PathEscape(f.Name)
		base := done
		fileReport := func(n int64) {
			report(Progress{Stage: StageDownload, File: f.Name, Done: base + n, Total: total})
		}
		part, err := p.fetchFile(ctx, log, fileURL, f, filepath.Join(partialDir, f.SHA256+".part"), fileReport)
		if err != nil {
			return "", fmt.Errorf("pulling %s of image %s: %w", f.Name, e.Name, err)
		}
		err = os.Rename(part, filepath.Join(dir, f.Name))
		p.unlock(f.SHA256)
		if err != nil {
			return "", fmt.Errorf("moving verified %s into bundle: %w", f.Name, err)
		}
		done += f.Size
	}

	m := imagestore.Manifest{Schema: imagestore.SchemaVersion, Name: e.Name, Version: e.Version,
		Arch: e.Arch, KernelArgs: e.KernelArgs, Files: e.Source.Files}
	if err := m.Validate(true); err != nil {
		return "", fmt.Errorf("catalog entry %s does not make a valid bundle: %w", e.Name, err)
	}
	data, err := m.Encode()
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, imagestore.ManifestName), data, 0o644); err != nil {
		return "", fmt.Errorf("writing manifest: %w", err)
	}
	log.Info("bundle pulled", "dir", dir, "bytes", total, "duration_ms", time.Since(start).Milliseconds())
	ok = true
	return dir, nil
}

// PullURL pulls a bundle from a bare base URL: BASE/manifest.json names the files and
// their digests, then the files are pulled and verified as for a catalog entry. name, if
// not empty, overrides the manifest's image name.
func (p *Puller) PullURL(ctx context.Context, rawURL, name string, progress func(Progress)) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", errdefs.InvalidArgument("ref", rawURL, "must be an http(s) URL of a bundle directory")
	}
	base := strings.TrimSuffix(u.String(), "/")
	if progress != nil {
		progress(Progress{Stage: StageResolve, File: "manifest.json"})
	}
	ctx2, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx2, http.MethodGet, base+"/"+imagestore.ManifestName, nil)
	if err != nil {
		return "", errdefs.InvalidArgument("ref", rawURL, err.Error())
	}
	resp, err := p.client().Do(req)
	if err != nil {
		return "", fmt.Errorf("fetching bundle manifest: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", httpStatusError(base+"/"+imagestore.ManifestName, resp)
	}
	data, err := readLimited(resp.Body, 1<<20)
	if err != nil {
		return "", fmt.Errorf("reading bundle manifest: %w", err)
	}
	m, err := imagestore.ParseManifest(data)
	if err != nil {
		return "", fmt.Errorf("bundle manifest from %s: %w", base, err)
	}
	if name != "" {
		m.Name = name
	}
	e := Entry{Name: m.Name, Version: m.Version, Arch: m.Arch, KernelArgs: m.KernelArgs,
		Source: Source{URL: base, Files: m.Files}, Origin: base}
	if err := validateEntry(&e, nil); err != nil {
		return "", fmt.Errorf("bundle manifest at %s: %w", base, err)
	}
	return p.Pull(ctx, e, progress)
}

// lock takes the per-digest lock, waiting for another pull of the same file to finish.
func (p *Puller) lock(ctx context.Context, digest string) error {
	for {
		locksMu.Lock()
		ch, held := locks[digest]
		if !held {
			locks[digest] = make(chan struct{})
			locksMu.Unlock()
			return nil
		}
		locksMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *Puller) unlock(digest string) {
	locksMu.Lock()
	defer locksMu.Unlock()
	if ch, ok := locks[digest]; ok {
		close(ch)
		delete(locks, digest)
	}
}

// fetchFile downloads one file into part with resumption and retries and returns the path
// of the verified file. On success the digest lock stays held until the caller has moved
// the file away (unlock), so a concurrent pull cannot start rewriting it.
func (p *Puller) fetchFile(ctx context.Context, log *slog.Logger, fileURL string, f model.File, part string, report func(int64)) (string, error) {
	if err := p.lock(ctx, f.SHA256); err != nil {
		return "", err
	}
	retries := p.Retries
	if retries <= 0 {
		retries = 5
	}
	delay := p.Backoff
	if delay <= 0 {
		delay = 500 * time.Millisecond
	}
	for attempt := 0; ; attempt++ {
		err := p.fetchOnce(ctx, fileURL, f, part, report)
		if err == nil {
			return part, nil
		}
		var perm *permanentError
		if errors.As(err, &perm) || ctx.Err() != nil || attempt >= retries {
			p.unlock(f.SHA256)
			if ctx.Err() != nil {
				return "", fmt.Errorf("download of %s interrupted (kept for resumption): %w", f.Name, ctx.Err())
			}
			return "", err
		}
		log.Warn("download interrupted, resuming", "file", f.Name, "attempt", attempt+1, "error", err.Error(), "retry_in_ms", delay.Milliseconds())
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			p.unlock(f.SHA256)
			return "", fmt.Errorf("download of %s interrupted (kept for resumption): %w", f.Name, ctx.Err())
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// fetchOnce makes one HTTP request for the rest of the file. It leaves a partial file in
// place on transient errors and removes it when its content is proven wrong.
func (p *Puller) fetchOnce(ctx context.Context, fileURL string, f model.File, part string, report func(int64)) error {
	fh, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return permanent(fmt.Errorf("opening partial file: %w", err))
	}
	defer fh.Close()

	h := sha256.New()
	have, err := rehashPrefix(fh, h, f.Size)
	if err != nil {
		return permanent(fmt.Errorf("reading partial file: %w", err))
	}
	if have == f.Size {
		// A previous run got every byte but did not finish verification.
		if hex.EncodeToString(h.Sum(nil)) == f.SHA256 {
			return p.verify(fh, part, f, h)
		}
		if err := restart(fh, h); err != nil {
			return permanent(err)
		}
		have = 0
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fileURL, nil)
	if err != nil {
		return permanent(err)
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := p.client().Do(req)
	if err != nil {
		return fmt.Errorf("requesting %s: %w", fileURL, err)
	}
	defer resp.Body.Close()

	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, err := contentRangeStart(resp.Header.Get("Content-Range"))
		if err != nil || start != have {
			// The server sent a range we did not ask for: start over rather than guess.
			if terr := restart(fh, h); terr != nil {
				return permanent(terr)
			}
			return fmt.Errorf("server answered range %q to a request from byte %d", resp.Header.Get("Content-Range"), have)
		}
	case resp.StatusCode == http.StatusOK:
		if have > 0 {
			// No range support (or the server chose a full response): begin again.
			if err := restart(fh, h); err != nil {
				return permanent(err)
			}
			have = 0
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		// The prefix we kept does not fit the server's file any more; retry from zero.
		if err := restart(fh, h); err != nil {
			return permanent(err)
		}
		return fmt.Errorf("server refused resumption of %s at byte %d", f.Name, have)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return httpStatusError(fileURL, resp)
	default:
		return permanent(httpStatusError(fileURL, resp))
	}

	report(have)
	w := &countingWriter{w: io.MultiWriter(fh, h), n: have, report: report}
	// Read one byte more than needed so an oversized file is detected, not truncated.
	_, copyErr := io.Copy(w, io.LimitReader(resp.Body, f.Size-have+1))
	if w.n > f.Size {
		os.Remove(part)
		return permanent(&SizeMismatchError{File: f.Name, Expected: f.Size, Actual: w.n})
	}
	if copyErr != nil {
		return fmt.Errorf("downloading %s: %w", f.Name, copyErr)
	}
	if w.n < f.Size {
		if resp.ContentLength >= 0 && have+resp.ContentLength == w.n {
			// The server delivered what it promised: the file really is this short.
			os.Remove(part)
			return permanent(&SizeMismatchError{File: f.Name, Expected: f.Size, Actual: w.n})
		}
		return fmt.Errorf("downloading %s: connection ended at byte %d of %d: %w", f.Name, w.n, f.Size, io.ErrUnexpectedEOF)
	}
	return p.verify(fh, part, f, h)
}

func (p *Puller) verify(fh *os.File, part string, f model.File, h hash.Hash) error {
	got := hex.EncodeToString(h.Sum(nil))
	if got != f.SHA256 {
		os.Remove(part)
		return permanent(&DigestMismatchError{File: f.Name, Expected: f.SHA256, Actual: got})
	}
	if err := fh.Sync(); err != nil {
		return permanent(fmt.Errorf("syncing %s: %w", f.Name, err))
	}
	return nil
}

// rehashPrefix feeds the existing bytes of a partial file into h and positions the file
// at its end; a partial file longer than the expected size is discarded.
func rehashPrefix(fh *os.File, h hash.Hash, size int64) (int64, error) {
	st, err := fh.Stat()
	if err != nil {
		return 0, err
	}
	if st.Size() > size {
		return 0, restart(fh, h)
	}
	n, err := io.Copy(h, io.LimitReader(fh, st.Size()))
	if err != nil {
		return 0, err
	}
	if _, err := fh.Seek(n, io.SeekStart); err != nil {
		return 0, err
	}
	return n, nil
}

func restart(fh *os.File, h hash.Hash) error {
	h.Reset()
	if err := fh.Truncate(0); err != nil {
		return fmt.Errorf("truncating partial file: %w", err)
	}
	if _, err := fh.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewinding partial file: %w", err)
	}
	return nil
}

// contentRangeStart parses the first byte position of "bytes START-END/SIZE".
func contentRangeStart(v string) (int64, error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, fmt.Errorf("bad Content-Range %q", v)
	}
	startStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, fmt.Errorf("bad Content-Range %q", v)
	}
	return strconv.ParseInt(startStr, 10, 64)
}

func httpStatusError(u string, resp *http.Response) error {
	switch resp.StatusCode {
	case http.StatusNotFound:
		return errdefs.New(errdefs.ErrNotFound, "fetching %s: HTTP %s", u, resp.Status)
	case http.StatusUnauthorized, http.StatusForbidden:
		return errdefs.New(errdefs.ErrPermissionDenied, "fetching %s: HTTP %s", u, resp.Status)
	default:
		return errdefs.New(errdefs.ErrUnavailable, "fetching %s: HTTP %s", u, resp.Status)
	}
}

type countingWriter struct {
	w      io.Writer
	n      int64
	report func(int64)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.report(c.n)
	return n, err
}
