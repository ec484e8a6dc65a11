// Package api defines the typed params and results of every bangerd method. The wire envelope
// lives in internal/rpc; docs/protocol.md documents both for clients in other languages.
package api

import (
	"time"

	"banger/internal/model"
	"banger/internal/rpc"
)

// Method names.
const (
	MethodPing                = "daemon.ping"
	MethodVMCreate            = "vm.create"
	MethodVMCreateBegin       = "vm.create.begin"
	MethodVMCreateStatus      = "vm.create.status"
	MethodVMList              = "vm.list"
	MethodVMShow              = "vm.show"
	MethodVMStart             = "vm.start"
	MethodVMStop              = "vm.stop"
	MethodVMRestart           = "vm.restart"
	MethodVMDelete            = "vm.delete"
	MethodVMPause             = "vm.pause"
	MethodVMResume            = "vm.resume"
	MethodVMFork              = "vm.fork"
	MethodVMForkBegin         = "vm.fork.begin"
	MethodSnapshotCreate      = "snapshot.create"
	MethodSnapshotCreateBegin = "snapshot.create.begin"
	MethodSnapshotList        = "snapshot.list"
	MethodSnapshotShow        = "snapshot.show"
	MethodSnapshotDelete      = "snapshot.delete"
	MethodVMRename            = "vm.rename"
	MethodVMWaitReady         = "vm.wait_ready"
	MethodVMAgent             = "vm.agent" // streaming: raw bytes to a new guest agent session
	MethodVMLogs              = "vm.logs"  // streaming: the console log, optionally followed
	// MethodWorkspaceUpload is streaming: a workspace disk image from the CLI, held for a
	// vm.create.begin naming its token while the stream stays open.
	MethodWorkspaceUpload = "workspace.upload"
	MethodImageImport     = "image.import"
	MethodImageList       = "image.list"
	MethodImageShow       = "image.show"
	MethodImageDelete     = "image.delete"
	MethodImagePull       = "image.pull"
	MethodImagePullBegin  = "image.pull.begin"
	MethodImageBuild      = "image.build"
	MethodImageCatalog    = "image.catalog"
	MethodOpStatus        = "op.status"
	MethodDoctor          = "daemon.doctor"
	MethodPoolList        = "pool.list"
)

// PingResult answers daemon.ping.
type PingResult struct {
	Version       string  `json:"version"`
	Protocol      int     `json:"protocol"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	PID           int     `json:"pid"`
}

// VMCreateParams are vm.create's and vm.create.begin's params. Sizes are strings as a user
// types them ("512M", "8G"); empty means the daemon's default.
type VMCreateParams struct {
	Name              string `json:"name,omitempty"`
	Image             string `json:"image,omitempty"`
	VCPU              int    `json:"vcpu,omitempty"`
	Memory            string `json:"memory,omitempty"`
	SystemOverlaySize string `json:"system_overlay_size,omitempty"`
	WorkDiskSize      string `json:"work_disk_size,omitempty"`
	NAT               bool   `json:"nat,omitempty"`
	NoStart           bool   `json:"no_start,omitempty"`
	// FromSnapshot restores the VM from a snapshot instead of booting it: image, vcpu,
	// memory and disk sizes are the snapshot's (giving others is invalid_argument).
	FromSnapshot string `json:"from_snapshot,omitempty"`
	// AutoRemove (vm run --rm) hands the VM's removal to the daemon: it deletes the VM when
	// the first vm.agent stream to it ends, when none attaches within a grace period after
	// the create, or at its next start if it crashed meanwhile.
	AutoRemove bool `json:"auto_remove,omitempty"`
	// Workspace attaches an uploaded workspace disk (workspace.upload) to the VM.
	Workspace *WorkspaceParams `json:"workspace,omitempty"`
	// Mounts are live shared folders (QEMU only): HostDir must be absolute (the CLI
	// resolves it against its working directory), an existing directory the calling
	// user is allowed to hand to the daemon (see docs/security.md); read_only defaults to
	// false on the wire, the CLI's --mount defaults to read-only.
	Mounts []model.Mount `json:"mounts,omitempty"`
}

// WorkspaceParams name an uploaded workspace image and where the guest mounts it.
type WorkspaceParams struct {
	Token string `json:"token"`          // from workspace.upload's accept result
	Path  string `json:"path,omitempty"` // guest mount point; default /work
}

// WorkspaceUploadResult is workspace.upload's accept result.
type WorkspaceUploadResult struct {
	Token string `json:"token"`
	// MaxBytes is the daemon's workspace.max_size: the largest tree (file bytes) accepted.
	MaxBytes int64 `json:"max_bytes"`
}

// VMResult carries one VM.
type VMResult struct {
	VM model.VM `json:"vm"`
}

// VMListResult answers vm.list.
type VMListResult struct {
	VMs []model.VM `json:"vms"`
}

// VMRef names a VM by id, unique id prefix, or exact name.
type VMRef struct {
	VM string `json:"vm"`
}

// VMStopParams are vm.stop's and vm.restart's params.
type VMStopParams struct {
	VM             string  `json:"vm"`
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"` // graceful deadline; default 20
}

// VMRenameParams are vm.rename's params.
type VMRenameParams struct {
	VM   string `json:"vm"`
	Name string `json:"name"`
}

// VMDeleteParams are vm.delete's params.
type VMDeleteParams struct {
	VM    string `json:"vm"`
	Force bool   `json:"force,omitempty"` // kill a running VM first
}

// VMWaitReadyParams are vm.wait_ready's params.
type VMWaitReadyParams struct {
	VM             string  `json:"vm"`
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
}

// VMLogsParams are vm.logs's params.
type VMLogsParams struct {
	VM     string `json:"vm"`
	Follow bool   `json:"follow,omitempty"`
}

// BeginResult answers an async *.begin method: the id to poll with op.status / vm.create.status.
// It is the dispatch op id of the begin call itself.
type BeginResult struct {
	OpID string `json:"op_id"`
}

// OpStatusParams polls an operation.
type OpStatusParams struct {
	OpID string `json:"op_id"`
	// WaitSeconds makes the call block until a new stage appears, the operation ends, or
	// the time passes, so clients need not spin.
	WaitSeconds float64 `json:"wait_seconds,omitempty"`
	// After is the number of stages the client has already seen.
	After int `json:"after,omitempty"`
}

// Stage is one step of an operation.
type Stage struct {
	Name    string    `json:"name"`
	Message string    `json:"message,omitempty"`
	At      time.Time `json:"at"`
	// Progress, for download stages: bytes done and total (0 if unknown).
	Done  int64 `json:"done,omitempty"`
	Total int64 `json:"total,omitempty"`
}

// OpStatusResult answers vm.create.status and op.status.
type OpStatusResult struct {
	OpID   string             `json:"op_id"`
	Kind   string             `json:"kind"`
	Stages []Stage            `json:"stages"`
	Done   bool               `json:"done"`
	VM     *model.VM          `json:"vm,omitempty"`
	Image  *model.Image       `json:"image,omitempty"`
	Error  *rpc.ErrorResponse `json:"error,omitempty"` // a failed operation's typed error, as any call's
	// Snapshot is snapshot.create.begin's result; VMs is vm.fork.begin's.
	Snapshot *model.Snapshot `json:"snapshot,omitempty"`
	VMs      []model.VM      `json:"vms,omitempty"`
}

// SnapshotCreateParams are snapshot.create's and snapshot.create.begin's params.
type SnapshotCreateParams struct {
	VM   string `json:"vm"`
	Name string `json:"name,omitempty"` // default: VM name + "-" + a random suffix
	// LeavePaused keeps the VM paused afterwards (it is paused while the snapshot is taken).
	LeavePaused bool `json:"leave_paused,omitempty"`
}

// SnapshotRef names a snapshot by id, unique id prefix, or exact name.
type SnapshotRef struct {
	Snapshot string `json:"snapshot"`
}

// SnapshotDeleteParams are snapshot.delete's params.
type SnapshotDeleteParams struct {
	Snapshot string `json:"snapshot"`
	Force    bool   `json:"force,omitempty"` // delete even though VMs were restored from it
}

// SnapshotResult carries one snapshot.
type SnapshotResult struct {
	Snapshot model.Snapshot `json:"snapshot"`
}

// SnapshotListResult answers snapshot.list.
type SnapshotListResult struct {
	Snapshots []model.Snapshot `json:"snapshots"`
}

// VMForkParams are vm.fork's and vm.fork.begin's params.
type VMForkParams struct {
	VM         string `json:"vm"`
	Count      int    `json:"count,omitempty"`       // default 1, at most MaxForkCount
	NamePrefix string `json:"name_prefix,omitempty"` // forks are PREFIX-1 … PREFIX-N; default the VM's name + "-fork"
}

// MaxForkCount bounds one vm.fork.
const MaxForkCount = 64

// VMForkResult answers vm.fork.
type VMForkResult struct {
	VMs []model.VM `json:"vms"`
}

// ImageImportParams imports an image from files on the daemon's host. Either Bundle (a
// bundle directory or tarball) or Kernel+Rootfs are given.
type ImageImportParams struct {
	Name   string `json:"name,omitempty"`
	Bundle string `json:"bundle,omitempty"`
	Kernel string `json:"kernel,omitempty"`
	Initrd string `json:"initrd,omitempty"`
	Rootfs string `json:"rootfs,omitempty"`
}

// ImageRef names an image by id, unique id prefix, or exact name.
type ImageRef struct {
	Image string `json:"image"`
}

// ImageResult carries one image.
type ImageResult struct {
	Image model.Image `json:"image"`
}

// ImageListResult answers image.list.
type ImageListResult struct {
	Images []model.Image `json:"images"`
}

// ImagePullParams pulls a catalog image by name or a bundle by URL.
type ImagePullParams struct {
	Ref string `json:"ref"`
}

// ImageBuildParams builds an image with a builder.
type ImageBuildParams struct {
	Name    string `json:"name,omitempty"`
	Builder string `json:"builder"`       // tiny, oci, debian
	Ref     string `json:"ref,omitempty"` // OCI reference or Debian suite
	// Packages are extra Debian packages (debian builder only; debootstrap --include).
	Packages []string `json:"packages,omitempty"`
	// Kernel is the tiny builder's kernel: "debian" (the default) or "microvm" (compiled
	// locally, no modules; the image is named tiny-microvm unless Name is set).
	Kernel string `json:"kernel,omitempty"`
}

// CatalogEntry is one image the catalog knows.
type CatalogEntry struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Arch        string `json:"arch"`
	Description string `json:"description"`
	Source      string `json:"source"`
	Installed   bool   `json:"installed"`
}

// CatalogResult answers image.catalog.
type CatalogResult struct {
	Entries []CatalogEntry `json:"entries"`
}

// DoctorCheck is one check of daemon.doctor.
type DoctorCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
	// Optional checks (a VMM that is not needed because another one works) do not make
	// the host unfit.
	Optional bool `json:"optional,omitempty"`
}

// DoctorResult answers daemon.doctor.
type DoctorResult struct {
	Checks []DoctorCheck `json:"checks"`
}

// PoolListResult is pool.list's result.
type PoolListResult struct {
	Pools []PoolInfo `json:"pools"`
}

// PoolInfo is one warm pool (config pools): its spec, how many VMs are ready, and how its
// filling goes.
type PoolInfo struct {
	Name      string `json:"name"`
	Image     string `json:"image"` // the configured image reference
	VCPU      int    `json:"vcpu"`
	MemoryMiB int    `json:"memory_mib"`
	Size      int    `json:"size"`
	// Mode is "vms" (Size paused VMs kept ready) or "snapshot" (creates restore from it).
	Mode string `json:"mode"`
	// Ready is how many VMs wait to be handed out.
	Ready int `json:"ready"`
	// State is starting, filling, ready (filled) or failing (see LastError, NextRetry).
	State string `json:"state"`
	// Snapshot is the name of the pool's snapshot; empty until it is made.
	Snapshot    string    `json:"snapshot,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	NextRetry   time.Time `json:"next_retry,omitzero"`
	// Served counts the creates the pool served since the daemon started.
	Served int64 `json:"served"`
}
