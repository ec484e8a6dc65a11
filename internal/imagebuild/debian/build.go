// Package debian builds a Debian image: a debootstrap minbase root filesystem (plus the
// few packages a shell in a VM needs) as ext4, with the Debian cloud kernel and the banger
// initrd. minbase installs no init system, so the agent from the initrd stays PID 1.
//
// debootstrap needs root and a reachable Debian mirror; the kernel comes from the same
// cache the tiny builder uses.
package debian

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"banger/internal/errdefs"
	"banger/internal/imagebuild"
	"banger/internal/imagestore"
)

// DefaultMirror is used when Options.Mirror is empty.
const DefaultMirror = "http://deb.debian.org/debian"

// DefaultSuite is used when Options.Suite is empty.
const DefaultSuite = "bookworm"

// extraPackages make the minbase system usable for interactive and scripted work in a VM:
// TLS roots, ip and ping for the network the agent configures, ps/top, /etc/services.
var extraPackages = []string{"ca-certificates", "iproute2", "iputils-ping", "procps", "netbase"}

// Options configures Build.
type Options struct {
	Suite     string // Debian suite or codename: bookworm, trixie, bullseye, stable…
	Mirror    string // http(s) Debian mirror; empty: DefaultMirror
	CacheDir  string // kernel packages and debootstrap's .deb cache
	AgentPath string // static guest agent, /init of the initrd
	WorkDir   string // staging tree and the bundle directory
	// Packages are installed on top of the minbase system (debootstrap's --include), e.g.
	// build-essential, git, python3 for a development image.
	Packages []string
	Log      *slog.Logger
}

// MaxPackages bounds --packages: each name is a debootstrap argument.
const MaxPackages = 128

var packageRe = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{0,99}$`)

// ValidatePackages checks Debian package names (policy §5.6.1: lowercase letters, digits,
// '+', '-', '.', starting with a letter or digit), naming field in the error.
func ValidatePackages(field string, pkgs []string) error {
	if len(pkgs) > MaxPackages {
		return errdefs.InvalidArgument(field, strings.Join(pkgs, ","), fmt.Sprintf("at most %d packages", MaxPackages))
	}
	seen := map[string]bool{}
	for _, p := range pkgs {
		if !packageRe.MatchString(p) {
			return errdefs.InvalidArgument(field, p, "must be a Debian package name (lowercase letters, digits, '+', '-', '.')")
		}
		if seen[p] {
			return errdefs.InvalidArgument(field, p, "is listed twice")
		}
		seen[p] = true
	}
	return nil
}

var suiteRe = regexp.MustCompile(`^[a-z]{1,32}$`)

// ValidateSuite checks a suite name; it becomes part of paths and of the image name.
func ValidateSuite(suite string) error {
	if !suiteRe.MatchString(suite) {
		return errdefs.InvalidArgument("suite", suite, "must be a Debian codename or suite of 1-32 lowercase letters (bookworm, trixie, stable)")
	}
	return nil
}

// Validate checks the options and fills in defaults, naming the offending field.
func (o *Options) Validate() error {
	if o.Suite == "" {
		o.Suite = DefaultSuite
	}
	if err := ValidateSuite(o.Suite); err != nil {
		return err
	}
	if err := ValidatePackages("packages", o.Packages); err != nil {
		return err
	}
	if o.Mirror == "" {
		o.Mirror = DefaultMirror
	}
	u, err := url.Parse(o.Mirror)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return errdefs.InvalidArgument("debian_mirror", o.Mirror, "must be an http(s) URL such as "+DefaultMirror)
	}
	if o.CacheDir == "" {
		return errdefs.InvalidArgument("cache_dir", "", "is required")
	}
	if o.WorkDir == "" {
		return errdefs.InvalidArgument("work_dir", "", "is required")
	}
	return imagebuild.CheckAgent(o.AgentPath)
}

func (o *Options) log() *slog.Logger {
	if o.Log != nil {
		return o.Log
	}
	return slog.Default()
}

// debootstrapArgs is the command line for a minbase tree of o.Suite in target; debs are
// kept in cacheDir so rebuilds do not download them again.
func debootstrapArgs(o Options, target, cacheDir string) []string {
	return []string{
		"--variant=minbase",
		"--arch=amd64",
		"--components=main",
		"--include=" + strings.Join(includeList(o.Packages), ","),
		"--cache-dir=" + cacheDir,
		o.Suite, target, o.Mirror,
	}
}

// includeList is the base extras plus pkgs, without duplicates.
func includeList(pkgs []string) []string {
	out := slices.Clone(extraPackages)
	for _, p := range pkgs {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// Build runs debootstrap and assembles a bundle directory inside opts.WorkDir for
// imagestore.ImportBundle; the caller removes it afterwards.
func Build(ctx context.Context, opts Options) (bundleDir string, err error) {
	if err := opts.Validate(); err != nil {
		return "", err
	}
	if os.Geteuid() != 0 {
		return "", errdefs.WithHint(errdefs.New(errdefs.ErrPermissionDenied, "the debian builder runs debootstrap, which needs root"),
			"run the build as root, or use the tiny or oci builders")
	}
	debootstrap, err := exec.LookPath("debootstrap")
	if err != nil {
		return "", errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "debootstrap is not installed"), "apt-get install debootstrap")
	}
	log := opts.log().With("suite", opts.Suite, "mirror", opts.Mirror)
	start := time.Now()

	cacheDir, err := filepath.Abs(filepath.Join(opts.CacheDir, "debootstrap", opts.Suite))
	if err != nil {
		return "", fmt.Errorf("resolving cache dir: %w", err)
	}
	for _, d := range []string{cacheDir, opts.WorkDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", fmt.Errorf("creating %s: %w", d, err)
		}
	}
	dir, err := os.MkdirTemp(opts.WorkDir, "debian-bundle-")
	if err != nil {
		return "", fmt.Errorf("creating bundle dir: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	root, err := os.MkdirTemp(opts.WorkDir, "debian-rootfs-")
	if err != nil {
		return "", fmt.Errorf("creating staging dir: %w", err)
	}
	defer os.RemoveAll(root)
	if err := os.Chmod(root, 0o755); err != nil {
		return "", err
	}

	log.Info("running debootstrap", "target", root)
	cmd := exec.CommandContext(ctx, debootstrap, debootstrapArgs(opts, root, cacheDir)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("debootstrap %s from %s: %w: %s", opts.Suite, opts.Mirror, err, lastLines(out.String(), 8))
	}
	if err := finishTree(root, opts.Suite); err != nil {
		return "", err
	}
	if err := imagebuild.Ext4FromDir(ctx, root, filepath.Join(dir, imagestore.RootfsName), 0); err != nil {
		return "", err
	}
	kernel, err := imagebuild.KernelAndInitrd(ctx, imagebuild.BootFiles{
		CacheDir: opts.CacheDir, AgentPath: opts.AgentPath, OutDir: dir, Log: opts.log(),
	})
	if err != nil {
		return "", err
	}
	m := imagestore.Manifest{
		Schema:  imagestore.SchemaVersion,
		Name:    "debian-" + opts.Suite,
		Version: opts.Suite + "-" + time.Now().UTC().Format("20060102"),
		Arch:    imagestore.ArchX86_64,
	}
	if err := imagebuild.WriteBundleManifest(dir, m); err != nil {
		return "", err
	}
	log.Info("debian bundle built", "dir", dir, "kernel", kernel, "duration_ms", time.Since(start).Milliseconds())
	return dir, nil
}

// finishTree trims what only matters to the build host and names the system.
func finishTree(root, suite string) error {
	for _, glob := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*", "var/log/*.log"} {
		matches, err := filepath.Glob(filepath.Join(root, glob))
		if err != nil {
			return err
		}
		for _, m := range matches {
			if err := os.Remove(m); err != nil {
				return fmt.Errorf("trimming rootfs: %w", err)
			}
		}
	}
	// The agent sets the real hostname at boot; this is what an unconfigured guest says.
	if err := os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte("debian-"+suite+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing hostname: %w", err)
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
