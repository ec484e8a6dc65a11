// Package daemon is bangerd: it owns the store, images, VMs and their VMM processes, the DNS
// server for VM names, and the async operations the CLI follows. It serves the protocol in
// internal/rpc; privileged network work goes through the root helper (internal/helper).
package daemon

import (
	"banger/internal/disktmpl"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"banger/internal/config"
	"banger/internal/helper"
	"banger/internal/imagecat"
	"banger/internal/imagestore"
	"banger/internal/opid"
	"banger/internal/oplog"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/vmdns"
	"banger/internal/vmm"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
)

// Version is the daemon's build version, set by main.
var Version = "dev"

// Daemon is one running bangerd.
type Daemon struct {
	cfg     config.Config
	log     *slog.Logger
	store   *store.Store
	prefix  netip.Prefix
	drivers map[string]vmm.Driver
	helper  NetHelper // nil when networking is off
	dns     *vmdns.Server
	// dnsOnBridge serves DNS on the bridge address too (networking on); tests without a
	// bridge turn it off.
	dnsOnBridge bool
	catalog     *imagecat.Catalog
	fetch       *imagecat.Group
	metrics     *metrics
	started     time.Time

	// reserveMu is the one narrow lock of vm create: name, IP and row are reserved under it.
	reserveMu sync.Mutex
	// imageMu serialises only the publication of images (store row + directory); downloads
	// and builds run outside it.
	imageMu sync.Mutex

	vmsMu sync.Mutex
	vms   map[string]*vmRuntime // by VM id

	ops opRegistry

	// disks makes VMs' empty system and work disks by copying a template per (label,
	// size) instead of running mkfs per VM.
	disks *disktmpl.Cache

	// uploads are staged workspace images awaiting their create (workspace.go).
	uploads uploads

	// netPending is set when a teardown or reconcile step could not finish (helper down, VM
	// busy): the periodic reconcile then runs every reconcileInterval until all settles.
	netPending        atomic.Bool
	reconcileInterval time.Duration
	// rmGrace is how long a vm run --rm VM may wait for its run to attach after the create.
	rmGrace time.Duration

	// pools are the configured warm pools (pool.go); userCreates counts the creates users
	// have in flight, which pool fills wait for.
	pools       []*warmPool
	userCreates atomic.Int32

	// bg tracks async operations so shutdown can wait for them; bgCtx ends them at shutdown.
	bg       sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc
}

// newOp returns a context under parent for work the daemon begins itself (startup, a
// reconcile pass, an exit watcher): a fresh op id, and the daemon's logger for oplog.G.
func (d *Daemon) newOp(parent context.Context) context.Context {
	return oplog.With(opid.With(parent, opid.New()), d.log)
}

// detach returns a context for work that outlives the request that began it: it keeps the
// request's values (op id, operation logger) but ends only when the daemon shuts down.
func (d *Daemon) detach(ctx context.Context) (context.Context, context.CancelFunc) {
	out, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(d.bgCtx, cancel)
	return out, func() { stop(); cancel() }
}

// NetHelper is what the daemon needs from the root helper (helper.Client).
type NetHelper interface {
	Ping(ctx context.Context) error
	EnsureBridge(ctx context.Context) error
	CreateTap(ctx context.Context, tap string) error
	DeleteTap(ctx context.Context, tap string) error
	EnableNAT(ctx context.Context, ip netip.Addr) error
	DisableNAT(ctx context.Context, ip netip.Addr) error
	Cleanup(ctx context.Context) error
	State(ctx context.Context) (helper.StateResult, error)
}

// Options are what New takes besides the configuration: the logger, and replacements for
// the parts that reach the host, so tests (and embedders) inject them rather than patch a
// built daemon.
type Options struct {
	Logger *slog.Logger // nil: slog's default
	// Drivers add or replace VMM drivers by name; a test's fake registered as "qemu"
	// stands in for the configured VMM.
	Drivers map[string]vmm.Driver
	// Helper replaces the root helper client used when networking is on. An injected
	// helper makes no real bridge, so DNS is then not served on the bridge address.
	Helper NetHelper
	// ReconcileInterval and AutoRemoveGrace override the periodic reconcile's pace and how
	// long a `vm run --rm` VM waits for its run to attach (0: the defaults).
	ReconcileInterval time.Duration
	AutoRemoveGrace   time.Duration
}

// RunOptions are Run's options.
type RunOptions struct {
	// Cleanup makes Run stop every VM and remove all network objects on exit.
	Cleanup bool
}

// New opens the store and prepares drivers; it does not listen yet.
func New(ctx context.Context, cfg config.Config, opts Options) (*Daemon, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Finish(); err != nil {
		return nil, err
	}
	prefix, _ := cfg.BridgePrefix()
	for _, dir := range []string{cfg.StateDir, cfg.RuntimeDir, cfg.ImagesDir(), cfg.VMsDir(), cfg.CacheDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	// An interrupted publish leaves a temp dir; it never looks like an image, but takes space.
	if err := imagestore.Sweep(cfg.ImagesDir()); err != nil {
		log.Warn("sweeping unfinished image publications failed", "error", err.Error())
	}
	if err := sweepTemplateDirs(cfg.RuntimeDir); err != nil {
		log.Warn("sweeping fork-template directories failed", "error", err.Error())
	}
	st, err := store.Open(ctx, cfg.DBPath())
	if err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	cat, err := imagecat.Load(ctx, cfg.Catalogs)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("loading image catalogs: %w", err)
	}
	d := &Daemon{
		cfg:               cfg,
		log:               log,
		store:             st,
		prefix:            prefix,
		catalog:           cat,
		fetch:             &imagecat.Group{},
		started:           time.Now(),
		vms:               map[string]*vmRuntime{},
		reconcileInterval: reconcileEvery,
		rmGrace:           autoRemoveGrace,
		disks:             disktmpl.New(filepath.Join(cfg.CacheDir(), "disk-templates")),
		drivers: map[string]vmm.Driver{
			"qemu": qemu.New(qemu.Config{Binary: cfg.Qemu.Binary, Accel: cfg.Qemu.Accel,
				Machine: cfg.Qemu.Machine, Logger: log}),
			"firecracker": firecracker.New(firecracker.Config{Binary: cfg.Firecracker.Binary, Logger: log}),
		},
	}
	for name, drv := range opts.Drivers {
		d.drivers[name] = drv
	}
	if opts.ReconcileInterval > 0 {
		d.reconcileInterval = opts.ReconcileInterval
	}
	if opts.AutoRemoveGrace > 0 {
		d.rmGrace = opts.AutoRemoveGrace
	}
	d.bgCtx, d.bgCancel = context.WithCancel(context.Background())
	d.metrics = newMetrics(d)
	switch {
	case cfg.Network.Enabled && opts.Helper != nil:
		d.helper = opts.Helper
	case cfg.Network.Enabled:
		d.helper = &helper.Client{Socket: cfg.Network.HelperSocket}
		d.dnsOnBridge = true
	}
	upstreams := cfg.DNS.Upstreams
	if len(upstreams) == 0 {
		upstreams = vmdns.UpstreamsFromResolvConf("/etc/resolv.conf")
	}
	d.dns = vmdns.New(cfg.DNS.Domain, upstreams, log)
	d.sweepWorkspaces()
	for _, pc := range cfg.Pools {
		d.pools = append(d.pools, newWarmPool(pc))
	}
	return d, nil
}

// Run serves until ctx ends. VMs keep running after Run returns unless opts.Cleanup.
func (d *Daemon) Run(ctx context.Context, opts RunOptions) error {
	defer d.store.Close()
	startCtx := d.newOp(ctx)
	if d.helper != nil {
		if err := d.helper.EnsureBridge(startCtx); err != nil {
			return fmt.Errorf("ensuring bridge %s through the root helper: %w", d.cfg.Network.Bridge, err)
		}
		// Not fatal (the host may fix the mode later), but every networked VM would fail.
		if err := vmm.CheckTunAccess(); err != nil {
			d.log.Warn("networked VMs cannot start", "error", err.Error(), "hint", vmm.TunHint)
		}
	}
	d.killTemplateVMMs(startCtx)
	if err := d.reconcile(startCtx); err != nil {
		return fmt.Errorf("reconciling VMs with the store: %w", err)
	}
	if err := d.startDNS(ctx); err != nil {
		return err
	}
	defer d.dns.Close()

	l, err := listenUnix(d.cfg.Socket)
	if err != nil {
		return err
	}
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		d.reconcileLoop(d.bgCtx)
	}()
	d.sweepPools(startCtx)
	d.startPools()
	srv := rpc.NewServer(d.log)
	srv.Observe = d.metrics.observeRPC
	d.register(srv)
	if d.cfg.MetricsListen != "" {
		if err := d.serveMetrics(ctx, d.cfg.MetricsListen); err != nil {
			return err
		}
	}
	d.log.Info("bangerd serving", "socket", d.cfg.Socket, "state_dir", d.cfg.StateDir, "version", Version, "pid", os.Getpid())
	serveErr := srv.Serve(ctx, l)
	// In-flight async operations are cancelled; each undoes its own partial work.
	d.bgCancel()
	d.bg.Wait()
	os.Remove(d.cfg.Socket)
	if opts.Cleanup {
		d.cleanup(d.newOp(context.Background()))
	}
	d.closeSessions()
	return serveErr
}

func (d *Daemon) startDNS(ctx context.Context) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for i := range vms {
		d.publishDNS(&vms[i])
	}
	// Guests are told the bridge's :53, so that address never moves.
	if d.dnsOnBridge {
		addr := net.JoinHostPort(d.prefix.Addr().String(), "53")
		if err := d.dns.ListenAndServe(ctx, []string{addr}); err != nil {
			return fmt.Errorf("starting DNS on %s: %w", addr, err)
		}
	}
	host := d.cfg.DNS.Listen
	if len(host) == 0 {
		return nil
	}
	listen := d.dns.ListenAndServeMovable
	if d.cfg.DNS.FixedPorts {
		listen = d.dns.ListenAndServe
	}
	if err := listen(ctx, host); err != nil {
		return fmt.Errorf("starting DNS on %v (dns.listen): %w", host, err)
	}
	return nil
}

func listenUnix(path string) (net.Listener, error) {
	// A stale socket from a crashed daemon is replaced; a live one means another daemon runs.
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("another bangerd is already serving %s", path)
	}
	l, err := rpc.ListenUnix(path, 0o660, -1)
	if err != nil {
		return nil, fmt.Errorf("serving the daemon socket: %w", err)
	}
	return l, nil
}

// cleanup stops every running VM and removes every network object banger created.
func (d *Daemon) cleanup(ctx context.Context) {
	log := oplog.G(ctx)
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		log.Error("cleanup: listing vms failed", "error", err.Error())
	}
	for _, vm := range vms {
		if !vm.State.Live() {
			continue
		}
		if _, err := d.stopVM(ctx, vm.ID, 10*time.Second); err != nil {
			log.Warn("cleanup: stopping vm failed", "vm", vm.Name, "error", err.Error())
		} else {
			log.Info("cleanup: vm stopped", "vm", vm.Name)
		}
	}
	if d.helper != nil {
		if err := d.helper.Cleanup(ctx); err != nil {
			log.Warn("cleanup: root helper cleanup failed", "error", err.Error())
		} else {
			log.Info("cleanup: network objects removed")
		}
	}
}

func (d *Daemon) driver(name string) (vmm.Driver, error) {
	drv, ok := d.drivers[name]
	if !ok {
		return nil, fmt.Errorf("unknown vmm driver %q", name)
	}
	return drv, nil
}

var errNoDriver = errors.New("no usable VMM")
