package agentclient

import (
	"banger/internal/agentarchive"
	"banger/internal/errdefs"
	"bufio"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
)

// hostPolicy is the policy for an archive coming from a guest that was asked for src.
func hostPolicy(src string, maxBytes int64) (agentarchive.Policy, error) {
	if src == "" || !path.IsAbs(src) {
		return agentarchive.Policy{}, errdefs.InvalidArgument("source", src, "must be an absolute guest path")
	}
	want := path.Base(path.Clean(src))
	if want == "/" {
		return agentarchive.Policy{}, errdefs.InvalidArgument("source", src, "the root directory cannot be copied; name a directory inside it")
	}
	return agentarchive.Policy{Want: want, MaxBytes: maxBytes, Mask: true, Umask: processUmask()}, nil
}

// processUmask reads the umask from /proc/self/status: umask(2) can only be read by
// setting it, which would race with every other goroutine creating files. Where it cannot
// be read, 077 errs on the side of files only their owner can use.
func processUmask() fs.FileMode {
	const fallback = 0o077
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return fallback
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "Umask:")
		if !ok {
			continue
		}
		m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
		if err != nil {
			return fallback
		}
		return fs.FileMode(m) & fs.ModePerm
	}
	return fallback
}
