package guest

// rwDiskMountData are the ext4 options of the VM's writable disks (system and work).
// The host makes them from templates built with lazy_itable_init (internal/disktmpl), as
// it packs workspaces: without noinit_itable the guest kernel's ext4lazyinit thread would
// zero their inode tables in the background, on the vCPU the boot and the user's
// commands run on. A sparse copy reads as zeros, and inodes past a group's high-water
// mark are initialised when allocated either way.
const rwDiskMountData = "noinit_itable"
