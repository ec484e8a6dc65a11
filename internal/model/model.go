// Package model holds banger's records (VMs, images) and the pure rules about them: name
// syntax, size parsing, and the identifiers derived from a VM's guest IP. It has no I/O.
package model

import (
	"time"
	"unicode/utf8"
)

// VMState is the lifecycle state recorded for a VM.
type VMState string

const (
	VMCreated  VMState = "created"  // reserved, disks being prepared
	VMStarting VMState = "starting" // VMM launched, agent not yet answering
	VMRunning  VMState = "running"
	VMPaused   VMState = "paused" // VMM alive, vCPUs stopped (vm pause, or a snapshot in progress)
	VMStopping VMState = "stopping"
	VMStopped  VMState = "stopped"
	VMError    VMState = "error" // a failure left it needing attention; last_error says why
)

// VM is the stored record of one microVM. JSON names are the wire's (snake_case).
type VM struct {
	ID                 string  `json:"id"`
	Name               string  `json:"name"`
	ImageID            string  `json:"image_id"`
	ImageName          string  `json:"image_name"`
	State              VMState `json:"state"`
	VCPU               int     `json:"vcpu"`
	MemoryMiB          int     `json:"memory_mib"`
	SystemOverlayBytes int64   `json:"system_overlay_bytes"`
	WorkDiskBytes      int64   `json:"work_disk_bytes"`
	NAT                bool    `json:"nat"`
	GuestIP            string  `json:"guest_ip"`
	MAC                string  `json:"mac"`
	CID                uint32  `json:"cid"`
	Tap                string  `json:"tap"`
	Dir                string  `json:"dir"`
	VMM                string  `json:"vmm"`   // driver the VM runs on: qemu, firecracker
	Accel              string  `json:"accel"` // kvm or tcg
	PID                int     `json:"pid"`
	// PIDStart is the VMM process's start time (clock ticks since boot, /proc/PID/stat),
	// recorded with PID the moment the process exists: with it a recycled pid is never
	// mistaken for the VM's VMM.
	PIDStart uint64 `json:"pid_start,omitempty"`
	// Creating marks a create in progress; a create interrupted by a daemon crash is undone.
	Creating bool `json:"creating,omitempty"`
	// AutoRemove is vm run --rm: the daemon deletes the VM when the run's command ends, its
	// connection drops, or it never attaches.
	AutoRemove bool `json:"auto_remove,omitempty"`
	// Workspace is the guest path the VM's workspace disk (a copy of a host tree, made by
	// `vm create/run --workspace`) is mounted at; empty: the VM has none.
	Workspace string `json:"workspace,omitempty"`
	// Mounts are the VM's live shared folders (`vm create/run --mount`), attached on every
	// start; QEMU only.
	Mounts []Mount `json:"mounts,omitempty"`
	// SnapshotID is the snapshot the VM was restored from (vm create --from-snapshot, vm
	// fork); empty for a VM that booted cold.
	SnapshotID string `json:"snapshot_id,omitempty"`
	// Pool names the warm pool that owns the VM while it waits, paused, to be handed out
	// (config pools); empty for every VM a user asked for, including one a pool served.
	Pool      string    `json:"pool,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// Boot is the latest boot's timeline; nil before the first boot.
	Boot *BootTimeline `json:"boot,omitempty"`
}

// Snapshot is a stored snapshot of a VM: its memory and device state and copies of its
// writable disks at one moment, in Dir. The image's read-only rootfs is shared, not copied.
type Snapshot struct {
	ID                 string `json:"id"`
	Name               string `json:"name"`
	VMID               string `json:"vm_id"`   // the VM it was taken of (which may be gone since)
	VMName             string `json:"vm_name"` // that VM's name then
	ImageID            string `json:"image_id"`
	ImageName          string `json:"image_name"`
	VCPU               int    `json:"vcpu"`
	MemoryMiB          int    `json:"memory_mib"`
	SystemOverlayBytes int64  `json:"system_overlay_bytes"`
	WorkDiskBytes      int64  `json:"work_disk_bytes"`
	NAT                bool   `json:"nat"`
	// GuestIP and MAC are the identity the snapshotted guest believes it has; a restore
	// gives the new VM its own and tells the guest.
	GuestIP string `json:"guest_ip"`
	MAC     string `json:"mac"`
	// VMM, Accel, Machine and BootArgs must match for a restore (vmm.RestoreInfo).
	VMM       string `json:"vmm"`
	Accel     string `json:"accel"`
	Machine   string `json:"machine,omitempty"`
	BootArgs  string `json:"boot_args"`
	Dir       string `json:"dir"`
	SizeBytes int64  `json:"size_bytes"` // disk space its files take (allocated blocks)
	// Pool names the warm pool the snapshot was made for (its VMs restore from it); empty
	// for a user's snapshot.
	Pool      string    `json:"pool,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Image is a stored, verified image bundle.
type Image struct {
	ID         string    `json:"id"` // sha256 of the manifest
	Name       string    `json:"name"`
	Version    string    `json:"version"`
	Arch       string    `json:"arch"`
	Dir        string    `json:"dir"`
	KernelArgs string    `json:"kernel_args"`
	Files      []File    `json:"files"`
	Source     string    `json:"source"` // import path, URL or builder
	CreatedAt  time.Time `json:"created_at"`
}

// File is one file of an image bundle with its digest.
type File struct {
	Role   string `json:"role"` // kernel, initrd, rootfs
	Name   string `json:"name"` // file name inside the image dir
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// File roles.
const (
	RoleKernel = "kernel"
	RoleInitrd = "initrd"
	RoleRootfs = "rootfs"
)

// FileByRole returns the image's file with the given role.
func (im *Image) FileByRole(role string) (File, bool) {
	for _, f := range im.Files {
		if f.Role == role {
			return f, true
		}
	}
	return File{}, false
}

// MaxLastError is the most of an error message a VM record keeps: the message may quote
// what the guest printed, and the record goes out with every `vm ls`.
const MaxLastError = 4 << 10

// CapLastError cuts msg to MaxLastError bytes on a rune boundary, saying that it did.
func CapLastError(msg string) string {
	if len(msg) <= MaxLastError {
		return msg
	}
	const mark = " … (truncated)"
	cut := MaxLastError - len(mark)
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + mark
}
