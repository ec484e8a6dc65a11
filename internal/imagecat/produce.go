package imagecat

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"banger/internal/errdefs"
	"banger/internal/imagebuild"
	"banger/internal/imagebuild/debian"
	"banger/internal/imagebuild/oci"
)

// Env is what producing a bundle needs from the daemon.
type Env struct {
	ImagesDir    string // the image store; producing a bundle never writes there
	CacheDir     string // partial downloads, kernel packages, debootstrap debs
	WorkDir      string // bundle directories are created here; the caller removes it
	AgentPath    string // static guest agent for initrds
	DebianMirror string // empty: debian.DefaultMirror
	Client       *http.Client
	Log          *slog.Logger
}

// Produce turns an entry into a verified bundle directory inside env.WorkDir: URL sources
// are downloaded and checked (see Puller), builder sources are built locally. The caller
// publishes it with imagestore.ImportBundle and then removes env.WorkDir. progress may be
// nil.
func Produce(ctx context.Context, e Entry, env Env, progress func(Progress)) (string, error) {
	if env.WorkDir == "" || env.CacheDir == "" {
		return "", errdefs.New(errdefs.ErrInvalidArgument, "producing image %s: work and cache dirs are required", e.Name)
	}
	log := env.Log
	if log == nil {
		log = slog.Default()
	}
	if !e.IsBuilder() {
		p := &Puller{CacheDir: env.CacheDir, OutDir: env.WorkDir, Client: env.Client, Log: log}
		return p.Pull(ctx, e, progress)
	}
	if progress != nil {
		progress(Progress{Stage: StageBuild, File: e.Name})
	}
	var (
		dir string
		err error
	)
	switch e.Source.Builder {
	case BuilderTiny:
		dir, err = imagebuild.BuildTiny(ctx, imagebuild.TinyOptions{CacheDir: env.CacheDir,
			AgentPath: env.AgentPath, WorkDir: env.WorkDir, Kernel: e.Source.Kernel,
			Progress: kernelProgress(e.Name, progress), Log: log})
	case BuilderDebian:
		dir, err = debian.Build(ctx, debian.Options{Suite: e.Source.Ref, Mirror: env.DebianMirror, Packages: e.Source.Packages,
			CacheDir: env.CacheDir, AgentPath: env.AgentPath, WorkDir: env.WorkDir, Log: log})
	case BuilderOCI:
		dir, err = oci.Build(ctx, e.Source.Ref, oci.Options{CacheDir: env.CacheDir,
			AgentPath: env.AgentPath, WorkDir: env.WorkDir, Log: log})
	default:
		return "", errdefs.InvalidArgument("builder", e.Source.Builder, "must be tiny, debian or oci")
	}
	if err != nil {
		return "", fmt.Errorf("building image %s with the %s builder: %w", e.Name, e.Source.Builder, err)
	}
	return dir, nil
}

// kernelProgress turns the microvm kernel's build steps into build progress reports:
// "build tiny-microvm: kernel compile: 5200 lines".
func kernelProgress(name string, progress func(Progress)) func(step string, lines int64) {
	if progress == nil {
		return nil
	}
	report := throttle(progress)
	return func(step string, lines int64) {
		report(Progress{Stage: StageBuild, File: name + ": kernel " + step, Done: lines, Unit: "lines"})
	}
}

// URLEntry is the entry for `banger image pull URL`: BASE/manifest.json describes the
// bundle and names the image (Name stays empty until then).
func URLEntry(rawURL string) Entry {
	return Entry{Arch: hostArch(), Source: Source{URL: strings.TrimSuffix(rawURL, "/")}, Origin: rawURL}
}

// Key identifies the entry for single-flight: its name, or its URL for a bare URL pull
// whose name is only known from the downloaded manifest.
func (e Entry) Key() string {
	if e.Name != "" {
		return e.Name
	}
	return e.Source.URL
}

// BuilderEntryWithKernel is BuilderEntryWithPackages for the tiny builder with a kernel
// choice (`image build tiny --kernel microvm`). With the microvm kernel an unnamed image
// is called tiny-microvm, so it sits beside the Debian-kernel tiny.
func BuilderEntryWithKernel(builder, ref, name string, pkgs []string, kernel string) (Entry, error) {
	if err := imagebuild.ValidKernel("kernel", kernel); err != nil {
		return Entry{}, err
	}
	e, err := BuilderEntryWithPackages(builder, ref, name, pkgs)
	if err != nil || kernel == "" || kernel == imagebuild.KernelDebian {
		return e, err
	}
	if builder != BuilderTiny {
		return Entry{}, errdefs.InvalidArgument("kernel", kernel, "only the tiny builder takes a kernel choice")
	}
	e.Source.Kernel = kernel
	if name == "" {
		e.Name = imagebuild.TinyName + "-" + kernel
	}
	return e, nil
}

// BuilderEntryWithPackages is BuilderEntry for the debian builder with extra packages
// (`image build --debian SUITE --packages a,b`).
func BuilderEntryWithPackages(builder, ref, name string, pkgs []string) (Entry, error) {
	e, err := BuilderEntry(builder, ref, name)
	if err != nil || len(pkgs) == 0 {
		return e, err
	}
	if builder != BuilderDebian {
		return Entry{}, errdefs.InvalidArgument("packages", strings.Join(pkgs, ","), "only the debian builder takes packages")
	}
	if err := debian.ValidatePackages("packages", pkgs); err != nil {
		return Entry{}, err
	}
	e.Source.Packages = pkgs
	return e, nil
}

// BuilderEntry is the entry for `banger image build BUILDER [REF] [--name NAME]`. An empty
// name is derived: tiny, debian-<suite>, or from the OCI repository and tag.
func BuilderEntry(builder, ref, name string) (Entry, error) {
	e := Entry{Name: name, Arch: hostArch(), Source: Source{Builder: builder, Ref: ref}, Origin: "build"}
	switch builder {
	case BuilderTiny:
		if ref != "" {
			return Entry{}, errdefs.InvalidArgument("ref", ref, "the tiny builder takes no ref")
		}
		if e.Name == "" {
			e.Name = imagebuild.TinyName
		}
		e.Version = "local"
	case BuilderDebian:
		if ref == "" {
			e.Source.Ref = debian.DefaultSuite
		}
		if err := debian.ValidateSuite(e.Source.Ref); err != nil {
			return Entry{}, err
		}
		if e.Name == "" {
			e.Name = "debian-" + e.Source.Ref
		}
		e.Version = e.Source.Ref
	case BuilderOCI:
		if ref == "" {
			return Entry{}, errdefs.InvalidArgument("ref", ref, "the oci builder needs an image reference, e.g. docker.io/library/alpine:3.20")
		}
		r, err := oci.ParseRef(ref, false)
		if err != nil {
			return Entry{}, err
		}
		if e.Name == "" {
			e.Name = oci.ImageName(r)
		}
		e.Version = r.Identifier()
	default:
		return Entry{}, errdefs.InvalidArgument("builder", builder, "must be tiny, debian or oci")
	}
	return e, nil
}

// IsURL reports whether ref is an http(s) URL rather than an image name.
func IsURL(ref string) bool {
	u, err := url.Parse(ref)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}
